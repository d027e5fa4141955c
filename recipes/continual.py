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

from trainers.runner import ContinualConfig, build_stage_plan, load_stage_data, run_continual


@dataclass
class ScriptArguments:
    dry_run: bool = field(default=False, metadata={"help": "List the stages' data and check media; train nothing."})


def dry_run(config: ContinualConfig) -> dict:
    """Per stage: its modality, data files and counts per data set and task (media checked while loading)."""
    report = []
    for step in build_stage_plan(config):
        splits = {}
        for split, files in (("train", step.train_files), ("test", step.test_files)):
            samples = load_stage_data(files)
            counts = {}
            for dataset, task in zip(samples["dataset"], samples["task"]):
                counts[f"{dataset} ({task})"] = counts.get(f"{dataset} ({task})", 0) + 1
            splits[split] = {"files": [str(path) for path in files], "samples": len(samples), "datasets": counts}
        report.append({"stage": step.stage, "modality": step.spec.name, **splits})
    return {"method": config.method, "order": config.order, "stages": report}


def main(config: ContinualConfig, script_args: ScriptArguments) -> int:
    if script_args.dry_run:
        for stage in dry_run(config)["stages"]:
            print(f"stage {stage['stage']}: {stage['modality']}")
            for split in ("train", "test"):
                datasets = ", ".join(f"{name}: {count}" for name, count in stage[split]["datasets"].items())
                print(f"  {split:<5} {stage[split]['samples']:>7} samples  ({datasets})")
        print("every referenced media file exists")
        return 0
    summary = run_continual(config)
    print(f"mean Backward Relative Gain {summary['backward_mean']:.2f}%; results in {config.output_dir}")
    return 0


if __name__ == "__main__":
    config, script_args = TrlParser((ContinualConfig, ScriptArguments)).parse_args_and_config()
    sys.exit(main(config, script_args))
