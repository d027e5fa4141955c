"""
Every stage of one continual-learning method, in one modality order, evaluated after every stage.

    python recipes/continual.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera --method mera
    accelerate launch recipes/continual.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera
    mera continual --config recipes/configs/paper_sequential.yaml --data_root /data/mera --method mera

Resumable: a killed run continues at its last finished stage (a finished stage is never re-trained), and within a
stage after its merge. `--dry_run` checks the method settings (exit code 2 names the bad field), lists each
stage's data with counts and checks every media file, then lists the
pretrained checkpoints the config names (language model, encoders, Q-Former init) and where each is expected, without
loading a model; it exits with 1 when a data, media or local checkpoint file is missing. Any field of the YAML can be
overridden on the command line (`--replay_ratio 1`, `--finetune_learning_rate 1e-4`, `--lora_r 64`).
`--push_to_hub true --hub_model_id org/name` pushes each stage to the Hub branch `stage-i` as it finishes (see
`trainers.hub`). Under several processes, evaluation splits the test set across them.
"""

import sys
from dataclasses import dataclass, field

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
    """
    Per stage: its data sets with counts, and every missing data or media file (streamed; no model loaded); under
    "checkpoints", the pretrained checkpoints the config names and where each is expected.
    """
    from trainers.continual import build_stage_plan, check_method_fits_plan
    from trainers.data.converters import dry_run_report
    from trainers.pretrained import required_checkpoints

    plan = build_stage_plan(config)
    check_method_fits_plan(config, plan)
    stages = [
        {"stage": step.stage, "modality": step.spec.name, "train": step.train_files, "test": step.test_files}
        for step in plan
    ]
    report = dry_run_report(stages, config.data_root)
    report["checkpoints"] = required_checkpoints(config.language_model, config.modalities or [])
    return report


def main(config: ContinualConfig, script_args: ScriptArguments) -> int:
    if script_args.dry_run:
        from trainers.data.converters import format_dry_run_report
        from trainers.methods import check_method_settings
        from trainers.pretrained import format_checkpoints, missing_checkpoints

        try:
            check_method_settings(config)
        except ValueError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        report = dry_run(config)
        print(format_dry_run_report(report))
        print(format_checkpoints(report["checkpoints"]))
        return 0 if report["ok"] and not missing_checkpoints(report["checkpoints"]) else 1
    from trainers import console
    from trainers.continual import run_continual

    console.configure(verbose=script_args.verbose)
    summary = run_continual(config)
    accuracy = summary["accuracy_matrix"]
    relative_gain = (
        f"mean Backward Relative Gain {summary['backward_mean']:.2f}%; " if summary["backward_mean"] else ""
    )
    print(f"{relative_gain}final average {accuracy['final_average']:.4f}; results in {config.output_dir}")
    return 0


def run(parser: TrlParser, argv: list[str] | None = None) -> int:
    config, script_args = parser.parse_args_and_config(argv)
    return main(config, script_args)


if __name__ == "__main__":
    sys.exit(run(make_parser(prog="recipes/continual.py")))
