"""
MERA (Merge then Realign), the paper's method: after each stage's fine-tuning, merge the LLM with the earlier
stages' (θLLM(i) = (i-1)/i·θLLM(i-1) + 1/i·θLLM(i,vanilla)), then realign every connector on r% replay of
D_1..D_i with the encoders and the LLM frozen. MERA = `MergePlugin` + `RealignPlugin`, defined once here
(`mera_plugins`); the two ablations take one each, and `realign_ratio` appends the realign step to other methods.
"""

import numpy as np
from datasets import Dataset
from peft import PeftModel

from ..merge import average_llm_weights, llm_state_dict, merge_stage_adapter
from ..plugins import StageContext, StagePlugin
from ..sft import RealignTrainer, effective_settings, phase_config
from .registry import method_args, register_method


class MergePlugin(StagePlugin):
    """MERA's merge: θLLM(i) = (i-1)/i·θLLM(i-1) + 1/i·θLLM(i,vanilla); connectors stay as trained."""

    name = "merge"

    def configure_finetune(self, ctx: StageContext):
        if ctx.stage == 1:
            return
        # LLM weights trained directly (full fine-tuning, or beside LoRA) overwrite θLLM(i-1): keep a copy (on the
        # CPU, to spare accelerator memory) to average with.
        if "llm" in ctx.finetune_trainable:
            ctx.previous_llm_state = llm_state_dict(ctx.model, device="cpu")

    def after_finetune(self, ctx: StageContext):
        if ctx.stage == 1:
            # θ1,merged = θ1,vanilla: the loop folds the adapter as it does for Fine-Tuning, so the two stage-1
            # models are the same computation.
            return
        if isinstance(ctx.model, PeftModel):
            ctx.model = merge_stage_adapter(ctx.model, ctx.stage, previous_llm_state=ctx.previous_llm_state)
        else:
            average_llm_weights(ctx.previous_llm_state, ctx.model, ctx.stage)
        ctx.log["merge"] = {"coefficient": 1 / ctx.stage}

    def fingerprint(self, stage: int) -> dict | None:
        return None if stage == 1 else super().fingerprint(stage)


class RealignPlugin(StagePlugin):
    """
    MERA's realign: every connector trains on R_i = r% of D_1..D_i; encoders and LLM stay frozen. It runs from stage
    2 on: with one modality there is nothing to realign, and the paper's MERA stage-1 scores equal the expert's.

    `realign_ratio` is r, drawn from the replay buffer's kept samples independently of replay's draw (None: all the
    buffer keeps, the stage settings' `replay_ratio`). `mispaired_percent` gives that share of the realign pairs
    another sample's media of the same modality (the paper's noisy-replay robustness test, Table 7).
    """

    name = "realign"

    def __init__(self, realign_ratio: float | None = None, mispaired_percent: float = 0.0):
        if realign_ratio is not None and not 0 < realign_ratio <= 100:
            raise ValueError(f"realign_ratio must be a percentage in (0, 100], got {realign_ratio}")
        if not 0 <= mispaired_percent <= 100:
            raise ValueError(f"mispaired_percent must be a percentage in [0, 100], got {mispaired_percent}")
        self.realign_ratio = realign_ratio
        self.mispaired_percent = mispaired_percent

    def realign_set(self, ctx: StageContext) -> Dataset:
        ratio = ctx.settings.replay_ratio if self.realign_ratio is None else self.realign_ratio
        samples = ctx.replay.subset(ratio, ctx.settings.seed, purpose=REALIGN_DRAW)
        if self.mispaired_percent:
            samples = mispair_media(samples, self.mispaired_percent, seed=ctx.settings.seed + ctx.stage)
        return samples

    def after_stage(self, ctx: StageContext):
        if ctx.stage == 1:
            return
        replay = self.realign_set(ctx)
        args = phase_config(ctx.settings, "realign", ctx.work_dir)
        trainer = RealignTrainer(ctx.model, args, replay, ctx.processor)
        result = trainer.train()
        ctx.log["realign"] = {"samples": len(replay), "train_loss": result.training_loss, **effective_settings(args)}
        if self.mispaired_percent:
            ctx.log["realign"]["mispaired"] = sum(replay["mispaired"])

    def fingerprint(self, stage: int) -> dict | None:
        return None if stage == 1 else super().fingerprint(stage)


# Seed streams of the draws from the replay buffer, so that replay and realign sample independently.
REPLAY_DRAW, REALIGN_DRAW = 1, 2


def mispair_media(samples: Dataset, percent: float, seed: int) -> Dataset:
    """
    `samples` where a seeded `percent`% of each modality's samples carry another sample's media (a cyclic shift among
    the chosen ones; one chosen sample takes an unchosen one's media). A `mispaired` column marks them.
    """
    rng = np.random.default_rng(seed)
    media = list(samples["media"])
    mispaired = [False] * len(samples)
    modalities = samples["modality"]
    for modality in sorted(set(modalities)):
        indices = [i for i, name in enumerate(modalities) if name == modality]
        count = round(len(indices) * percent / 100)
        if count == 0 or len(indices) < 2:
            continue
        chosen = rng.choice(indices, size=count, replace=False).tolist()
        sources = chosen[1:] + chosen[:1] if count > 1 else [rng.choice([i for i in indices if i != chosen[0]])]
        originals = list(media)
        for target, source in zip(chosen, sources):
            media[target] = originals[source]
            mispaired[target] = originals[source] != originals[target]
    samples = samples.remove_columns("media").add_column("media", media)
    return samples.add_column("mispaired", mispaired)


def mera_plugins() -> list[StagePlugin]:
    """MERA = merge + realign (the replay ratio r comes from the stage settings)."""
    return [MergePlugin(), RealignPlugin()]


def _realign(config) -> RealignPlugin:
    """MERA's realign on r% replay (r = `replay_ratio`); `method_args` may set `mispaired_percent` (Table 7)."""
    return RealignPlugin(realign_ratio=getattr(config, "replay_ratio", None), **method_args(config))


@register_method("mera", arguments=("mispaired_percent",))
def mera(config=None) -> list[StagePlugin]:
    """Merge then realign (the paper's method) on r% replay, r = `replay_ratio`."""
    return [MergePlugin(), _realign(config)]


@register_method("merge_only")
def merge_only(config=None) -> list[StagePlugin]:
    """Ablation: Fine-Tuning + merging."""
    return [MergePlugin()]


@register_method("realign_only", arguments=("mispaired_percent",))
def realign_only(config=None) -> list[StagePlugin]:
    """Ablation: Fine-Tuning + realigning."""
    return [_realign(config)]
