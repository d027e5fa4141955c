"""
The `mera` command: one entry point, one sub-command per recipe.

Each sub-command is a module of `recipes/` exposing `make_parser(subparsers=None, prog=None)` (TRL's pattern: it adds
its parser to `subparsers`, or builds a stand-alone one for `python recipes/NAME.py`) and `run(parser, argv) -> int`
(parse, then call the module's `main`). The modules import torch and the trainers only when they run, so that
`mera --help` and `mera COMMAND --help` stay fast.
"""

import importlib
import sys

from trl import TrlParser

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
}


def build_parser() -> tuple[TrlParser, dict]:
    """The `mera` parser and, per sub-command, its module and parser."""
    # A TrlParser at the top makes every sub-command's parser a TrlParser, which `continual` and `stage` need to
    # parse their config dataclasses (and `--config FILE.yaml`).
    parser = TrlParser(
        prog="mera",
        description="mera-mcl: teach a multimodal LLM new modalities one after another without losing the old ones.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands = {}
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        commands[name] = (module, module.make_parser(subparsers))
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
