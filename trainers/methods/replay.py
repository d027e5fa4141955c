"""
Replay (r%), the paper's rehearsal baseline: stage i fine-tunes the new connector and the LLM on D_i ∪ r% of
D_1..D_(i-1). The r% samples are the replay buffer's (`replay_ratio`, a stage setting), drawn once per stage and kept
with the stage checkpoints, so a later stage needs none of the earlier data sets.
"""

from datasets import Dataset, concatenate_datasets

from ..plugins import StageContext, StagePlugin
from .registry import register_method


def replay_mixture(current: Dataset, earlier: list[Dataset]) -> Dataset:
    """D_i followed by the earlier stages' replay samples (the trainer shuffles them together)."""
    parts = [current] + [samples.cast(current.features) for samples in earlier if len(samples)]
    return concatenate_datasets(parts) if len(parts) > 1 else current


class ReplayPlugin(StagePlugin):
    """Adds r% of every earlier stage's data to the fine-tuning set of the current stage."""

    name = "replay"

    def configure_finetune(self, ctx: StageContext):
        earlier = [ctx.replay.stages[stage] for stage in sorted(ctx.replay.stages) if stage < ctx.stage]
        new_samples = len(ctx.finetune_dataset)
        ctx.finetune_dataset = replay_mixture(ctx.finetune_dataset, earlier)
        ctx.log["replay"] = {
            "ratio_percent": ctx.settings.replay_ratio,
            "new_samples": new_samples,
            "old_samples": len(ctx.finetune_dataset) - new_samples,
        }


@register_method("replay")
def replay(config=None) -> list[StagePlugin]:
    """Rehearsal: D_i ∪ r% of D_1..D_(i-1), r = `replay_ratio`."""
    return [ReplayPlugin()]
