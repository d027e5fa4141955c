"""
MERA (Merge then Realign), the paper's method: after each stage's fine-tuning, merge the LLM with the earlier
stages' (θLLM(i) = (i-1)/i·θLLM(i-1) + 1/i·θLLM(i,vanilla)), then realign every connector on r% replay of
D_1..D_i with the encoders and the LLM frozen. MERA = `MergePlugin` + `RealignPlugin`, defined once here
(`mera_plugins`); the two ablations take one each, and `realign_ratio` appends the realign step to other methods.
"""

import numpy as np
from datasets import Dataset, concatenate_datasets
from peft import PeftModel

from ..data import replay_count
from ..merge import average_llm_weights, llm_state_dict, merge_stage_adapter
from ..plugins import StageContext, StagePlugin
from ..sft import RealignTrainer, effective_settings, phase_config
from .registry import register_method


class MergePlugin(StagePlugin):
    """MERA's merge: θLLM(i) = (i-1)/i·θLLM(i-1) + 1/i·θLLM(i,vanilla); connectors stay as trained."""

    name = "merge"

    def configure_finetune(self, ctx: StageContext):
        # LLM weights trained directly (full fine-tuning, or beside LoRA) overwrite θLLM(i-1): keep a copy (on the
        # CPU, to spare accelerator memory) to average with.
        if "llm" in ctx.finetune_trainable:
            ctx.previous_llm_state = llm_state_dict(ctx.model, device="cpu")

    def after_finetune(self, ctx: StageContext):
        if isinstance(ctx.model, PeftModel):
            ctx.model = merge_stage_adapter(ctx.model, ctx.stage, previous_llm_state=ctx.previous_llm_state)
        else:
            average_llm_weights(ctx.previous_llm_state, ctx.model, ctx.stage)
        ctx.log["merge"] = {"coefficient": 1 / ctx.stage}


class RealignPlugin(StagePlugin):
    """
    MERA's realign: every connector trains on R_i = r% of D_1..D_i; encoders and LLM stay frozen.

    `realign_ratio` None uses the whole replay buffer (r = the stage settings' `replay_ratio`); a smaller ratio takes
    a seeded r% of each stage's data out of that buffer (`--realign_ratio R` after any method).
    """

    name = "realign"

    def __init__(self, realign_ratio: float | None = None):
        self.realign_ratio = realign_ratio

    def realign_set(self, ctx: StageContext) -> Dataset:
        if self.realign_ratio is None:
            return ctx.replay.union()
        parts = []
        for stage, samples in sorted(ctx.replay.stages.items()):
            count = replay_count(ctx.replay.info[stage]["of"], self.realign_ratio)
            if count > len(samples):
                raise ValueError(
                    f"realign_ratio {self.realign_ratio}% needs {count} samples of stage {stage} but the replay "
                    f"buffer keeps {len(samples)} (replay_ratio {ctx.replay.info[stage]['ratio_percent']}%); raise "
                    "replay_ratio to at least realign_ratio"
                )
            rng = np.random.default_rng(ctx.settings.seed + stage)
            parts.append(samples.select(np.sort(rng.choice(len(samples), size=count, replace=False)).tolist()))
        return concatenate_datasets([part for part in parts if len(part)])

    def after_stage(self, ctx: StageContext):
        replay = self.realign_set(ctx)
        args = phase_config(ctx.settings, "realign", ctx.work_dir)
        trainer = RealignTrainer(ctx.model, args, replay, ctx.processor)
        result = trainer.train()
        ctx.log["realign"] = {"samples": len(replay), "train_loss": result.training_loss, **effective_settings(args)}


def mera_plugins() -> list[StagePlugin]:
    """MERA = merge + realign (the replay ratio r comes from the stage settings)."""
    return [MergePlugin(), RealignPlugin()]


@register_method("mera")
def mera(config=None) -> list[StagePlugin]:
    """Merge then realign (the paper's method); the replay ratio r comes from the stage settings."""
    return mera_plugins()


@register_method("merge_only")
def merge_only(config=None) -> list[StagePlugin]:
    """Ablation: Fine-Tuning + merging."""
    return [MergePlugin()]


@register_method("realign_only")
def realign_only(config=None) -> list[StagePlugin]:
    """Ablation: Fine-Tuning + realigning."""
    return [RealignPlugin()]
