"""
Replay sampling: r% of each stage's training data, drawn reproducibly and stored with the stage, so that a later
stage rebuilds R_i = sample of D_1..D_i from the stage checkpoints alone, without the full earlier data sets.
"""

import json
import math
import os
from pathlib import Path

import numpy as np
from datasets import Dataset, concatenate_datasets

from ..errors import UserError, UserFileNotFoundError

REPLAY_INDEX = "replay.json"


def replay_count(num_samples: int, ratio_percent: float) -> int:
    """r% of `num_samples`, rounded up, and at least one sample (zero only when r is zero)."""
    if not 0 <= ratio_percent <= 100:
        raise ValueError(f"replay ratio must be a percentage in [0, 100], got {ratio_percent}")
    if ratio_percent == 0 or num_samples == 0:
        return 0
    return min(num_samples, max(1, math.ceil(num_samples * ratio_percent / 100 - 1e-9)))


def sample_replay(dataset: Dataset, ratio_percent: float, seed: int) -> Dataset:
    """A seeded random r% of `dataset` (same seed, same sample), kept in the data set's order."""
    count = replay_count(len(dataset), ratio_percent)
    indices = np.sort(np.random.default_rng(seed).choice(len(dataset), size=count, replace=False))
    return dataset.select(indices.tolist())


class ReplayBuffer:
    """The replay samples of every stage so far, keyed by stage index (1-based)."""

    def __init__(self):
        self.stages: dict[int, Dataset] = {}
        self.info: dict[int, dict] = {}

    def add_stage(self, stage: int, dataset: Dataset, replay_ratio: float, seed: int) -> Dataset:
        """Draw stage `stage`'s replay sample from its full training data and keep it."""
        if stage in self.stages:
            raise ValueError(f"the replay buffer already holds stage {stage}")
        sample = sample_replay(dataset, replay_ratio, seed)
        self.stages[stage] = sample
        # "ratio_percent" is the replay ratio; the key is the one replay.json has always had.
        self.info[stage] = {"ratio_percent": replay_ratio, "seed": seed, "count": len(sample), "of": len(dataset)}
        return sample

    def union(self, stages: list[int] | None = None) -> Dataset:
        """The replay samples of `stages` (default: all), in stage order."""
        stages = sorted(self.stages) if stages is None else stages
        missing = [stage for stage in stages if stage not in self.stages]
        if missing:
            raise ValueError(f"the replay buffer has no samples of stage(s) {missing}; it has {sorted(self.stages)}")
        parts = [self.stages[stage] for stage in stages if len(self.stages[stage])]
        if not parts:
            raise ValueError(f"the replay buffer is empty for stage(s) {stages}")
        return concatenate_datasets(parts)

    def subset(self, ratio_percent: float, seed: int, stages: list[int] | None = None, purpose: int = 0) -> Dataset:
        """
        r% of each stage's training data, drawn from that stage's kept samples (default: all stages), seeded by
        (`seed`, stage, `purpose`) so that replay and realign draw independently of each other. Where r is the
        buffer's own ratio, the kept samples are returned whole.
        """
        stages = sorted(self.stages) if stages is None else stages
        parts = []
        for stage in stages:
            samples, info = self.stages[stage], self.info[stage]
            count = replay_count(info["of"], ratio_percent)
            if count > len(samples):
                raise ValueError(
                    f"{ratio_percent}% of stage {stage} needs {count} samples but the replay buffer keeps "
                    f"{len(samples)} ({info['ratio_percent']}% of {info['of']}); the buffer must keep the largest "
                    "ratio the method asks for"
                )
            if count < len(samples):
                rng = np.random.default_rng([seed, stage, purpose])
                samples = samples.select(np.sort(rng.choice(len(samples), size=count, replace=False)).tolist())
            if len(samples):
                parts.append(samples)
        if not parts:
            raise ValueError(f"{ratio_percent}% of stage(s) {stages} holds no sample")
        return concatenate_datasets(parts) if len(parts) > 1 else parts[0]

    def save(self, directory: str | os.PathLike):
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for stage, samples in self.stages.items():
            lines = (json.dumps(sample) + "\n" for sample in samples)
            (directory / f"stage-{stage}.jsonl").write_text("".join(lines))
        index = {str(stage): info for stage, info in sorted(self.info.items())}
        (directory / REPLAY_INDEX).write_text(json.dumps(index, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "ReplayBuffer":
        directory = Path(directory)
        index_file = directory / REPLAY_INDEX
        if not index_file.is_file():
            raise FileNotFoundError(f"no replay buffer in {directory} (expected {REPLAY_INDEX})")
        buffer = cls()
        try:
            index = json.loads(index_file.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise UserError(f"{index_file} is damaged ({error}); the stage must be trained again") from None
        for stage, info in index.items():
            buffer.info[int(stage)] = info
            path = directory / f"stage-{stage}.jsonl"
            if not path.is_file():
                raise UserFileNotFoundError(f"{path} is missing: {REPLAY_INDEX} records {info['count']} samples there")
            samples = []
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                if line.strip():
                    try:
                        samples.append(json.loads(line))
                    except json.JSONDecodeError as error:
                        raise UserError(f"{path}, line {number}: damaged ({error.msg}); cut short?") from None
            # A file with lines removed would silently shrink the realign set: its count was recorded at save time.
            if len(samples) != info["count"]:
                raise UserError(
                    f"{path} holds {len(samples)} replay samples but {REPLAY_INDEX} records {info['count']}; the file "
                    "was changed or cut short since the stage was saved"
                )
            buffer.stages[int(stage)] = Dataset.from_list(samples)
        return buffer
