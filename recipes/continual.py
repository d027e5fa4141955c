"""
Every stage of one continual-learning method, in one modality order, evaluated after every stage.

    python recipes/continual.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera --method mera
    accelerate launch recipes/continual.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera

Resumable: a killed run continues at its last finished stage (a finished stage is never re-trained), and within a
stage after its merge. `--dry_run` lists each stage's data with counts and checks every media file, without
loading a model. Any field of the YAML can be overridden on the command line (`--replay_ratio 1`).
`--push_to_hub org/name` pushes each stage to the Hub branch `stage-i` as it finishes (see `trainers.hub`).
"""

import sys
from dataclasses import dataclass, field

from trl import TrlParser

from trainers.converters import dry_run_report, format_dry_run_report
from trainers.runner import ContinualConfig, build_stage_plan, run_continual


@dataclass
class ScriptArguments:
    dry_run: bool = field(default=False, metadata={"help": "List the stages' data and check media; train nothing."})


def dry_run(config: ContinualConfig) -> dict:
    """Per stage: its data sets with counts, and every missing data or media file (streamed; no model loaded)."""
    stages = [
        {"stage": step.stage, "modality": step.spec.name, "train": step.train_files, "test": step.test_files}
        for step in build_stage_plan(config)
    ]
    return dry_run_report(stages, config.data_root)


def main(config: ContinualConfig, script_args: ScriptArguments) -> int:
    if script_args.dry_run:
        report = dry_run(config)
        print(format_dry_run_report(report))
        return 0 if report["ok"] else 1
    summary = run_continual(config)
    print(f"mean Backward Relative Gain {summary['backward_mean']:.2f}%; results in {config.output_dir}")
    return 0


if __name__ == "__main__":
    config, script_args = TrlParser((ContinualConfig, ScriptArguments)).parse_args_and_config()
    sys.exit(main(config, script_args))
