"""
Replay (r%), the paper's rehearsal baseline: stage i fine-tunes the new connector and the LLM on D_i ∪ r% of
D_1..D_(i-1). The r% samples are the replay buffer's (`replay_ratio`, a stage setting), drawn once per stage and kept
with the stage checkpoints, so a later stage needs none of the earlier data sets.
"""

from datasets import Dataset, concatenate_datasets

from ..plugins import StageContext, StagePlugin
from .mera import REPLAY_DRAW
from .registry import register_method


def replay_mixture(current: Dataset, earlier: list[Dataset]) -> Dataset:
    """D_i followed by the earlier stages' replay samples (the trainer shuffles them together)."""
    parts = [current] + [samples.cast(current.features) for samples in earlier if len(samples)]
    return concatenate_datasets(parts) if len(parts) > 1 else current


class ReplayPlugin(StagePlugin):
    """
    Adds r% of every earlier stage's data to the fine-tuning set of the current stage, drawn from the replay buffer
    independently of a realign step's draw (`ratio_percent` None: all the buffer keeps, the stage settings'
    `replay_ratio`).
    """

    name = "replay"

    def __init__(self, ratio_percent: float | None = None):
        if ratio_percent is not None and not 0 < ratio_percent <= 100:
            raise ValueError(f"replay ratio must be a percentage in (0, 100], got {ratio_percent}")
        self.ratio_percent = ratio_percent

    def configure_finetune(self, ctx: StageContext):
        ratio = ctx.settings.replay_ratio if self.ratio_percent is None else self.ratio_percent
        earlier = [stage for stage in sorted(ctx.replay.stages) if stage < ctx.stage]
        samples = [ctx.replay.subset(ratio, ctx.settings.seed, [stage], purpose=REPLAY_DRAW) for stage in earlier]
        new_samples = len(ctx.finetune_dataset)
        ctx.finetune_dataset = replay_mixture(ctx.finetune_dataset, samples)
        ctx.log["replay"] = {
            "ratio_percent": ratio,
            "new_samples": new_samples,
            "old_samples": len(ctx.finetune_dataset) - new_samples,
        }

    def fingerprint(self, stage: int) -> dict | None:
        return None if stage == 1 else super().fingerprint(stage)  # nothing to replay at stage 1


@register_method("replay")
def replay(config=None) -> list[StagePlugin]:
    """Rehearsal: D_i ∪ r% of D_1..D_(i-1), r = `replay_ratio`."""
    return [ReplayPlugin(ratio_percent=getattr(config, "replay_ratio", None))]
