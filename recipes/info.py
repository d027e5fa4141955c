"""`mera info CHECKPOINT`: what a saved MERA checkpoint holds, read from its config without loading weights."""

import argparse
import json
import sys
from pathlib import Path

HELP = "show a saved MERA checkpoint: its modalities, encoders, connectors and sizes"


def make_parser(subparsers=None, prog: str | None = None) -> argparse.ArgumentParser:
    """The `mera info` parser, added to `subparsers` (TRL's `make_parser` pattern) or stand-alone."""
    if subparsers is None:
        parser = argparse.ArgumentParser(prog=prog, description=HELP)
    else:
        parser = subparsers.add_parser("info", help=HELP, description=HELP, formatter_class=argparse.HelpFormatter)
    _add_arguments(parser)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    return main(parser.parse_args(argv))


def _add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("checkpoint", help="folder (or Hub repo id) of a saved MeraForCausalLM")
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit, e.g. stage-2")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def summarize(config) -> dict:
    text = config.text_config
    return {
        "language_model": {
            "model_type": text.model_type,
            "hidden_size": text.hidden_size,
            "vocab_size": text.vocab_size,
        },
        "modalities": [
            {
                "name": name,
                "kind": modality["kind"],
                "encoder": config.modality(name).encoder.model_type,
                "connector": modality["connector"]["type"],
                "tokens_per_item": modality["num_tokens"],
                "placeholder": modality["placeholder"],
            }
            for name, modality in config.modalities.items()
        ],
    }


def main(args: argparse.Namespace) -> int:
    from modeling_mera import MeraConfig
    from trainers.errors import UserError, UserFileNotFoundError
    from trainers.safety import is_hub_id

    path = Path(args.checkpoint)
    if path.exists() and not (path / "config.json").exists():
        raise UserFileNotFoundError(f"{args.checkpoint} has no config.json; is it a saved MeraForCausalLM?")
    if not path.exists() and not is_hub_id(args.checkpoint):
        raise UserFileNotFoundError(f"{args.checkpoint} does not exist (and is not a Hub repo id like org/name)")
    try:
        config = MeraConfig.from_pretrained(args.checkpoint, revision=args.revision)
    except (OSError, ValueError) as error:
        where = f"{args.checkpoint}" + (f"@{args.revision}" if args.revision else "")
        raise UserError(f"cannot read the MeraConfig of {where}: {str(error).splitlines()[0]}") from error
    summary = summarize(config)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    llm = summary["language_model"]
    print(f"language model: {llm['model_type']} (hidden {llm['hidden_size']}, vocabulary {llm['vocab_size']})")
    print(f"{'#':>2}  {'modality':<14}{'kind':<13}{'encoder':<26}{'connector':<11}{'tokens':>7}  placeholder")
    for index, modality in enumerate(summary["modalities"], start=1):
        print(
            f"{index:>2}  {modality['name']:<14}{modality['kind']:<13}{modality['encoder']:<26}"
            f"{modality['connector']:<11}{modality['tokens_per_item']:>7}  {modality['placeholder']}"
        )
    return 0


if __name__ == "__main__":
    from recipes.cli import run_entry_point

    sys.exit(run_entry_point(lambda argv: run(make_parser(prog="recipes/info.py"), argv), prog="recipes/info.py"))
