"""
The `mera` command: one entry point, one sub-command per recipe.

Each sub-command is a module of `recipes/` exposing `make_parser(subparsers=None, prog=None)` (TRL's pattern: it adds
its parser to `subparsers`, or builds a stand-alone one for `python recipes/NAME.py`) and `run(parser, argv) -> int`
(parse, then call the module's `main`). The modules import torch and the trainers only when they run, so that
`mera --help` and `mera COMMAND --help` stay fast.
"""

import importlib
import os
import sys
from collections.abc import Callable, Sequence

from trl import TrlParser

from trainers.errors import USER_ERROR_EXIT_CODE, UserError

# Sub-command name -> its module; order is the order `mera --help` lists them in.
COMMANDS = {
    "demo": "recipes.demo",
    "study": "recipes.study",
    "continual": "recipes.continual",
    "stage": "recipes.stage",
    "data": "recipes.data",
    "metrics": "recipes.metrics",
    "info": "recipes.info",
    "push": "recipes.push",
    "bench": "recipes.bench",
}


DEBUG_FLAG = "--debug"


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
    finally:
        if "torch.distributed" in sys.modules:  # only a command that loaded torch can hold a process group
            from trainers.distributed import close_process_group

            close_process_group()


def parse_config(parser, argv: Sequence[str] | None = None) -> tuple:
    """`parser.parse_args_and_config(argv)` (TRL's parser of config dataclasses), with what it refuses (an unknown
    YAML key, a value of the wrong type, a config field's own check) raised as a `UserError`."""
    try:
        return parser.parse_args_and_config(argv)
    except UserError:
        raise
    except (ValueError, TypeError) as error:
        raise UserError(str(error)) from error


def build_parser() -> tuple[TrlParser, dict]:
    """The `mera` parser and, per sub-command, its module and parser."""
    # A TrlParser at the top makes every sub-command's parser a TrlParser, which `continual` and `stage` need to
    # parse their config dataclasses (and `--config FILE.yaml`).
    parser = TrlParser(
        prog="mera",
        description="mera-mcl: teach a multimodal LLM new modalities one after another without losing the old ones.",
        epilog="A mistake in a flag, config, data file or checkpoint ends with one 'mera: error: ...' line and exit "
        "code 2; add --debug (anywhere) to see the traceback.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        commands[name] = (module, module.make_parser(subparsers))
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    """Run `mera ARGV`; a user error (`trainers.errors.UserError`: a flag, config field, data file or checkpoint)
    prints one line and returns 2, and `--debug` (anywhere) shows its traceback."""
    return run_entry_point(_main, argv)


def _main(argv: list[str]) -> int:
    parser, commands = build_parser()
    # The sub-command's own `run` parses its arguments (a YAML `--config` among them); this pass finds which it is.
    args, _ = parser.parse_known_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module, subparser = commands[args.command]
    return int(module.run(subparser, argv[argv.index(args.command) + 1 :]) or 0)


if __name__ == "__main__":
    sys.exit(main())
