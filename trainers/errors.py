"""
User errors: a mistake in what the user gave (a flag, a config field, a data file, a checkpoint), as opposed to a
defect of the library.

The library raises `UserError` (or a subclass) with a message that names the file, the field and what was expected.
The command-line entry points (`mera ...`, `recipes/*.py`) run through `recipes.cli.run_entry_point`, which prints
such an error as one line, `mera: error: ...`, and exits with code 2; `--debug` (or `MERA_DEBUG=1`) shows the
traceback instead. Every other exception is a defect and keeps its traceback.

`UserError` derives from `ValueError`, as the style guide asks of bad-input errors, so `except ValueError` keeps
catching it; `UserFileNotFoundError` is also a `FileNotFoundError`.
"""

__all__ = ["UserError", "UserFileNotFoundError", "USER_ERROR_EXIT_CODE"]

USER_ERROR_EXIT_CODE = 2


class UserError(ValueError):
    """Bad input from the user; the message alone tells them what to fix."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""
