"""
Every stage of one continual-learning method, in one modality order, evaluated after every stage.

    python recipes/continual.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera --method mera
    accelerate launch recipes/continual.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera
    mera continual --config recipes/configs/paper_sequential.yaml --data_root /data/mera --method mera

Resumable: a killed run continues at its last finished stage (a finished stage is never re-trained), and within a
stage after its merge. Before anything is written, every setting, every stage's data and media and every local
pretrained checkpoint are checked; `--dry_run` prints that check (each stage's data with counts, every bad row,
missing or unreadable media file and setting problem, then the pretrained checkpoints the config names - language
model, encoders, Q-Former init - and where each is expected) without loading a model, and exits with 1 when
anything is wrong. Any field of the YAML can be overridden on the command line (`--replay_ratio 1`,
`--finetune_learning_rate 1e-4`, `--lora_r 64`). A user error ends with one message and exit code 2 (`--debug`
shows the traceback). `--push_to_hub true --hub_model_id org/name` pushes each stage to the Hub branch `stage-i` as
it finishes (see `trainers.hub`). Under several processes, evaluation splits the test set across them.
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from trainers.settings import ContinualConfig

HELP = "run (or resume) every stage of one method, evaluated after every stage (trainers/continual.py)"


@dataclass
class ScriptArguments:
    dry_run: bool = field(
        default=False,
        metadata={"help": "List the stages' data and pretrained checkpoints, check their files exist; train nothing."},
    )
    verbose: bool = field(
        default=False,
        metadata={"help": "Also the libraries' progress bars and the trainers' metrics at every logging step."},
    )


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    dataclass_types = (ContinualConfig, ScriptArguments)
    if subparsers is not None:
        return subparsers.add_parser("continual", help=HELP, description=HELP, dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog, description=HELP)


def dry_run(config: ContinualConfig) -> dict:
    """The check every run makes before it starts (`trainers.validation.validate_run`): per stage its data sets
    with counts, every missing data file, bad row and missing or unreadable media file, and every setting's
    problem (streamed; no model loaded, nothing written); under "checkpoints", the pretrained checkpoints the config
    names and where each is expected."""
    from trainers.continual import build_stage_plan
    from trainers.pretrained import required_checkpoints
    from trainers.validation import validate_run

    report = validate_run(config, build_stage_plan(config))
    report["checkpoints"] = required_checkpoints(config.language_model, config.modalities or [])
    return report


def main(config: ContinualConfig, script_args: ScriptArguments) -> int:
    if script_args.dry_run:
        from trainers.data.converters import format_dry_run_report
        from trainers.errors import UserError
        from trainers.methods import check_method_settings
        from trainers.pretrained import format_checkpoints, missing_checkpoints

        try:  # a bad method setting ends the dry run as a user error (exit code 2), before the report
            check_method_settings(config)
        except ValueError as error:
            raise UserError(str(error)) from None
        report = dry_run(config)
        print(format_dry_run_report(report))
        print(format_checkpoints(report["checkpoints"]))
        return 0 if report["ok"] and not missing_checkpoints(report["checkpoints"]) else 1
    from trainers import console
    from trainers.continual import run_continual

    console.configure(verbose=script_args.verbose)
    summary = run_continual(config)
    print((Path(config.output_dir) / "report.txt").read_text().rstrip())
    accuracy = summary["accuracy_matrix"]
    relative_gain = (
        f"mean Backward Relative Gain {summary['backward_mean']:.2f}%; " if summary["backward_mean"] else ""
    )
    print(f"{relative_gain}final average {accuracy['final_average']:.4f}; results in {config.output_dir}")
    return 0


def run(parser: TrlParser, argv: list[str] | None = None) -> int:
    from recipes.cli import parse_config

    config, script_args = parse_config(parser, argv)
    return main(config, script_args)


if __name__ == "__main__":
    from recipes.cli import run_entry_point

    sys.exit(
        run_entry_point(lambda argv: run(make_parser(prog="recipes/continual.py"), argv), prog="recipes/continual.py")
    )
