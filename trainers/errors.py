"""
User errors: a mistake in what the user gave (a flag, a config field, a data file, a checkpoint), as opposed to a
defect of the library.

The library raises `UserError` (or a subclass) with a message that names the file, the field and what was expected.
The command-line entry points (`mera ...`, `recipes/*.py`) run through `run_entry_point`, which prints such an
error as one line, `mera: error: ...`, and exits with code 2; `--debug` (or `MERA_DEBUG=1`) shows the traceback
instead. Every other exception is a defect and keeps its traceback.

`UserError` derives from `ValueError`, as the style guide asks of bad-input errors, so `except ValueError` keeps
catching it; `UserFileNotFoundError` is also a `FileNotFoundError`.
"""

import os
import sys
from collections.abc import Callable, Sequence

__all__ = [
    "UserError",
    "UserFileNotFoundError",
    "USER_ERROR_EXIT_CODE",
    "pop_debug_flag",
    "run_entry_point",
    "parse_config",
]

USER_ERROR_EXIT_CODE = 2
DEBUG_FLAG = "--debug"


class UserError(ValueError):
    """Bad input from the user; the message alone tells them what to fix."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


def pop_debug_flag(argv: Sequence[str]) -> tuple[list[str], bool]:
    """`argv` without `--debug`, and whether it was there (or `MERA_DEBUG` is set)."""
    argv = list(argv)
    debug = DEBUG_FLAG in argv or os.environ.get("MERA_DEBUG", "") not in ("", "0")
    return [arg for arg in argv if arg != DEBUG_FLAG], debug


def run_entry_point(
    main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, prog: str = "mera"
) -> int:
    """
    Run `main(argv)` as a command: its return value is the exit code; a `UserError` prints one line on stderr and
    returns 2 (with `--debug`, it is raised with its traceback). Every other exception keeps its traceback.
    """
    argv, debug = pop_debug_flag(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(argv) or 0)
    except UserError as error:
        if debug:
            raise
        message = str(error).strip() or type(error).__name__
        print(f"{prog}: error: {message}", file=sys.stderr)
        return USER_ERROR_EXIT_CODE


def parse_config(parser, argv: Sequence[str] | None = None) -> tuple:
    """`parser.parse_args_and_config(argv)` (TRL's parser of config dataclasses), with what it refuses (an unknown
    YAML key, a value of the wrong type, a config field's own check) raised as a `UserError`."""
    try:
        return parser.parse_args_and_config(argv)
    except UserError:
        raise
    except (ValueError, TypeError) as error:
        raise UserError(str(error)) from error
