"""
One stage of a continual run: from the stage i-1 checkpoint (or the language model, for stage 1) to stage i.

    python recipes/stage.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera --stage 2
    accelerate launch recipes/stage.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera --stage 2
    accelerate launch --config_file recipes/accelerate/fsdp.yaml recipes/stage.py --config C.yaml --stage 2
    accelerate launch recipes/stage.py --config recipes/configs/tiny.yaml --stage 1 --output_dir runs/tiny  # offline
    mera stage --config recipes/configs/paper_sequential.yaml --data_root /data/mera --stage 2

The stage reads `output_dir/stage-{i-1}` unless `--previous` names another checkpoint, and writes
`output_dir/stage-{i}` atomically. GPU count, precision and sharding come from the accelerate config
(recipes/accelerate/: ZeRO-2, ZeRO-3, FSDP), not from here. Every setting is a flag (`--finetune_learning_rate 1e-4`,
`--lora_r 64`, `--load_in_4bit true`).
"""

import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import TrlParser

from trainers.settings import ContinualConfig

HELP = "run one stage of a continual run (the loop of trainers/stage.py); `accelerate launch recipes/stage.py` alike"


@dataclass
class StageArguments:
    stage: int = field(default=1, metadata={"help": "Index of the stage to run, 1-based, in training order."})
    previous: str | None = field(
        default=None, metadata={"help": "Checkpoint of stage i-1 (default: output_dir/stage-{i-1})."}
    )
    verbose: bool = field(
        default=False,
        metadata={"help": "Also the libraries' progress bars and the trainers' metrics at every logging step."},
    )


def make_parser(subparsers=None, prog: str | None = None) -> TrlParser:
    dataclass_types = (ContinualConfig, StageArguments)
    if subparsers is not None:
        return subparsers.add_parser("stage", help=HELP, description=HELP, dataclass_types=dataclass_types)
    return TrlParser(dataclass_types, prog=prog, description=HELP)


def main(config: ContinualConfig, args: StageArguments) -> int:
    from trainers import console
    from trainers.checkpoint import clean_finished_stage, is_finished_stage
    from trainers.continual import base_model_and_processor, build_stage_plan, load_stage_data, open_run
    from trainers.errors import UserError, UserFileNotFoundError
    from trainers.methods import check_method_settings
    from trainers.stage import run_stage

    console.configure(verbose=args.verbose)
    plan = build_stage_plan(config)
    if not 1 <= args.stage <= len(plan):
        raise UserError(f"--stage must be between 1 and {len(plan)} for this config, got {args.stage}")
    step = plan[args.stage - 1]
    # The same checks as the continual recipe: every setting and stage's data, the run folder's lock, and the run's
    # config (a stage of another method or with other settings is never written into this run).
    with open_run(config, plan) as run_dir:
        output_dir = run_dir / f"stage-{args.stage}"
        if is_finished_stage(output_dir):
            clean_finished_stage(output_dir)
            print(f"{output_dir} is already finished; a finished stage is never re-trained")
            return 0
        if args.stage == 1 and args.previous is None:
            previous, processor = base_model_and_processor(config)
        else:
            previous, processor = Path(args.previous or run_dir / f"stage-{args.stage - 1}"), None
            if not is_finished_stage(previous):
                raise UserFileNotFoundError(
                    f"stage {args.stage} needs the finished stage {args.stage - 1} in {previous}"
                )
        plugins = check_method_settings(config)  # checked by open_run already
        train = load_stage_data(step.train_files)
        with console.context(stage=args.stage, stages=len(plan), modality=step.spec.name, method=config.method):
            run_stage(previous, processor, step.spec, train, output_dir, args.stage, plugins, config.stage_settings())
    print(f"stage {args.stage} ({step.spec.name}) saved to {output_dir}")
    return 0


def run(parser: TrlParser, argv: list[str] | None = None) -> int:
    from recipes.cli import parse_config

    config, stage_args = parse_config(parser, argv)
    return main(config, stage_args)


if __name__ == "__main__":
    from recipes.cli import run_entry_point

    sys.exit(run_entry_point(lambda argv: run(make_parser(prog="recipes/stage.py"), argv), prog="recipes/stage.py"))
