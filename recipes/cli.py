"""The `mera` command: one entry point, one sub-command per task.

Each sub-command lives in its own module of `recipes/` that exposes `add_arguments(parser)` and
`main(args) -> int`; the module is imported only when its sub-command runs, so `mera --help` stays fast.
"""

import argparse
import importlib
import sys

# name -> (module, one-line help). Order is the order `mera --help` lists them in.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("recipes.demo", "the offline four-modality benchmark: Fine-Tuning forgets, MERA keeps (CPU, minutes)"),
    "info": ("recipes.info", "show a saved MERA checkpoint: its modalities, encoders, connectors and sizes"),
    "metrics": ("recipes.metrics", "Relative-Gain tables and plots from score matrices"),
    "data": ("recipes.data", "convert the paper's data sets (and LLaVA/MLLM-CL JSON) to mera-mcl samples"),
    "push": ("recipes.push", "push a run's stages to the Hugging Face Hub, one branch per stage, with model cards"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mera",
        description="mera-mcl: teach a multimodal LLM new modalities one after another without losing the old ones.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        subparser = subparsers.add_parser(name, help=help_text, description=help_text)
        subparser.set_defaults(_module=module_name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in SUBCOMMANDS:
        # Let the sub-command's own module declare its arguments, then parse for real.
        module = importlib.import_module(SUBCOMMANDS[command][0])
        subparser = parser._subparsers._group_actions[0].choices[command]
        module.add_arguments(subparser)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(args._module)
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
