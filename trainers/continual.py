"""
The one stage loop of modality-incremental continual learning, and the plug-ins that make it MERA.

    load θ(i-1) ─► add_modality(Mi) ─► pre-train the new connector on Di's captions
                ─► fine-tune that connector + the LLM (LoRA) on Di   ─► [after_finetune: merge]
                ─► fold any remaining adapter into the LLM            ─► [after_stage: realign]
                ─► save θi atomically (model, processor, replay samples, stage.json)

A continual-learning method is a list of `StagePlugin`s: each hook may change the stage's data, its PEFT config,
its trainable parts, or the model after a phase. MERA is `MergePlugin` + `RealignPlugin`.
"""

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import Dataset
from peft import PeftModel

from modeling_mera import MeraForCausalLM, MeraProcessor

from .merge import average_llm_weights, llm_state_dict, merge_stage_adapter
from .replay import ReplayBuffer
from .sft import MeraSFTConfig, MeraSFTTrainer, RealignTrainer, llm_lora_config, paper_phase_config

STAGE_INFO = "stage.json"
REPLAY_DIR = "replay"


@dataclass
class ModalitySpec:
    """A modality to add at a stage: `MeraForCausalLM.add_modality` arguments plus its feature processor."""

    name: str
    kind: str | None = None
    encoder_config: Any = None
    encoder_weights: str | None = None
    connector: dict | None = None
    feature_processor: Any = None
    """A transformers image processor / feature extractor, or a Hub id or folder to load one from."""
    options: dict = field(default_factory=dict)
    """Further `MeraModalityConfig` fields (feature_layer, num_frames, max_audio_seconds, ...)."""


@dataclass
class StageSettings:
    """How one stage trains: one `MeraSFTConfig` per phase and the LoRA shape (paper defaults)."""

    pretrain: dict = field(default_factory=dict)
    finetune: dict = field(default_factory=dict)
    realign: dict = field(default_factory=dict)
    lora: dict = field(default_factory=lambda: {"r": 128, "lora_alpha": 128, "lora_dropout": 0.05})
    use_lora: bool = True
    replay_ratio: float = 10.0
    """Percent of this stage's data kept for replay (used by realign and replay methods)."""
    seed: int = 42

    def phase_config(self, phase: str, output_dir: Path) -> MeraSFTConfig:
        overrides = {"seed": self.seed, "data_seed": self.seed, **getattr(self, phase)}
        return paper_phase_config(phase, str(output_dir / phase), **overrides)


@dataclass
class StageContext:
    """The loop's state during one stage; plug-ins read and change it."""

    stage: int
    modality: str
    model: Any
    processor: MeraProcessor
    train_dataset: Dataset
    settings: StageSettings
    work_dir: Path
    replay: ReplayBuffer
    finetune_dataset: Dataset | None = None
    finetune_trainable: list[str] = field(default_factory=lambda: ["connector:new", "llm:lora"])
    peft_config: Any = None
    previous_llm_state: dict | None = None
    log: dict = field(default_factory=dict)


class StagePlugin:
    """A named piece of a continual-learning method; every hook is a no-op unless overridden."""

    name = "plugin"

    def before_stage(self, ctx: StageContext):
        """After the new modality is added, before any training."""

    def configure_finetune(self, ctx: StageContext):
        """Change the fine-tuning phase: `ctx.finetune_dataset`, `ctx.peft_config`, `ctx.finetune_trainable`."""

    def after_finetune(self, ctx: StageContext):
        """Right after fine-tuning (the model may still carry its LoRA adapter): e.g. merge."""

    def after_stage(self, ctx: StageContext):
        """After the adapter is folded into the LLM: e.g. realign."""


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
    """MERA's realign: every connector trains on R_i = r% of D_1..D_i; encoders and LLM stay frozen."""

    name = "realign"

    def after_stage(self, ctx: StageContext):
        replay = ctx.replay.union()
        args = ctx.settings.phase_config("realign", ctx.work_dir)
        trainer = RealignTrainer(ctx.model, args, replay, ctx.processor)
        result = trainer.train()
        ctx.log["realign"] = {"samples": len(replay), "train_loss": result.training_loss}


def mera_plugins() -> list[StagePlugin]:
    return [MergePlugin(), RealignPlugin()]


def build_feature_processor(spec: ModalitySpec, kind: str):
    """The modality's feature processor: the given object, or one loaded from a Hub id / folder."""
    if spec.feature_processor is None or not isinstance(spec.feature_processor, (str, os.PathLike)):
        return spec.feature_processor
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    auto_class = AutoFeatureExtractor if kind == "audio" else AutoImageProcessor
    return auto_class.from_pretrained(spec.feature_processor)


def is_finished_stage(directory: str | os.PathLike) -> bool:
    return (Path(directory) / STAGE_INFO).is_file()


def load_stage(directory: str | os.PathLike) -> tuple[MeraForCausalLM, MeraProcessor, ReplayBuffer]:
    """A saved stage: its model, processor and replay buffer."""
    directory = Path(directory)
    if not is_finished_stage(directory):
        raise FileNotFoundError(f"{directory} is not a finished stage (no {STAGE_INFO})")
    model = MeraForCausalLM.from_pretrained(directory)
    processor = MeraProcessor.from_pretrained(directory)
    return model, processor, ReplayBuffer.load(directory / REPLAY_DIR)


def save_stage(model, processor: MeraProcessor, replay: ReplayBuffer, info: dict, output_dir: Path):
    """Write a stage checkpoint atomically: into a temporary sibling folder, renamed into place when complete."""
    output_dir = Path(output_dir)
    state = PartialState()
    if state.is_main_process:  # under `accelerate launch`, every process holds the same model: one writes it
        temporary = output_dir.with_name(f".{output_dir.name}.saving")
        shutil.rmtree(temporary, ignore_errors=True)
        model.save_pretrained(temporary)
        processor.config = model.config
        processor.save_pretrained(temporary)
        replay.save(temporary / REPLAY_DIR)
        (temporary / STAGE_INFO).write_text(json.dumps(info, indent=2, default=str) + "\n")
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(temporary, output_dir)
    state.wait_for_everyone()


def _check_stage_inputs(model: MeraForCausalLM, spec: ModalitySpec, stage: int, train_dataset: Dataset):
    expected = len(model.modalities) + 1
    if stage != expected:
        raise ValueError(
            f"stage {stage} cannot follow a checkpoint with {len(model.modalities)} modalities "
            f"({model.modalities}); the next stage is {expected}"
        )
    if spec.name in model.modalities:
        raise ValueError(f"modality {spec.name!r} was already learnt (modalities so far: {model.modalities})")
    others = sorted(set(train_dataset["modality"]) - {spec.name})
    if others:
        raise ValueError(f"stage {stage} learns {spec.name!r} but its training data also holds modalities {others}")
    if "caption" not in set(train_dataset["task"]):
        raise ValueError(f"stage {stage}: the training data has no caption samples for connector pre-training")


def _train_phase(ctx: StageContext, phase: str, dataset: Dataset, trainable: list[str], peft_config=None) -> float:
    args = ctx.settings.phase_config(phase, ctx.work_dir)
    args.trainable = trainable
    trainer = MeraSFTTrainer(ctx.model, args, dataset, ctx.processor, peft_config=peft_config)
    result = trainer.train()
    ctx.model = trainer.model
    return result.training_loss


def run_stage(
    previous: MeraForCausalLM | str | os.PathLike,
    processor: MeraProcessor | None,
    spec: ModalitySpec,
    train_dataset: Dataset,
    output_dir: str | os.PathLike,
    stage: int | None = None,
    plugins: list[StagePlugin] | None = None,
    settings: StageSettings | None = None,
) -> Path:
    """
    Run one stage from θ(i-1) to θi and save it atomically to `output_dir`.

    Args:
        previous: the stage i-1 checkpoint folder, or a model (for stage 1: a `MeraForCausalLM` with no modality).
        processor: the processor of `previous` when it is a model; loaded from the folder otherwise.
        spec: the modality this stage adds.
        train_dataset: D_i in the sample format (captions and QA of modality `spec.name`).
        stage: the stage index, checked against the checkpoint (default: one more than its modalities).
        plugins: the method's plug-ins; MERA's merge and realign by default.
        settings: per-phase training settings; the paper's by default.

    A killed stage resumes from its last finished phase (kept in `output_dir`'s `.partial` sibling).
    """
    settings = settings or StageSettings()
    plugins = mera_plugins() if plugins is None else plugins
    output_dir = Path(output_dir)
    if is_finished_stage(output_dir):
        raise FileExistsError(f"{output_dir} already holds a finished stage; it is never re-trained")
    if isinstance(previous, (str, os.PathLike)):
        model, processor, replay = load_stage(previous)
    else:
        model, replay = previous, ReplayBuffer()
        if processor is None:
            raise ValueError("pass the processor of the given model")
    stage = len(model.modalities) + 1 if stage is None else stage
    _check_stage_inputs(model, spec, stage, train_dataset)
    work_dir = output_dir.with_name(f"{output_dir.name}.partial")
    started = time.time()

    kind = spec.kind or spec.name
    model.add_modality(
        spec.name,
        kind=kind,
        encoder_config=spec.encoder_config,
        connector=spec.connector,
        encoder_weights=spec.encoder_weights,
        **spec.options,
    )
    processor.config = model.config
    processor.add_modality(spec.name, build_feature_processor(spec, kind))
    replay.add_stage(stage, train_dataset, settings.replay_ratio, seed=settings.seed + stage)
    ctx = StageContext(stage, spec.name, model, processor, train_dataset, settings, work_dir, replay)
    for plugin in plugins:
        plugin.before_stage(ctx)

    finetuned_dir = work_dir / "finetuned"
    if is_finished_stage(finetuned_dir):  # resume: phases 1-2 and the merge are done
        ctx.model = MeraForCausalLM.from_pretrained(finetuned_dir)
        ctx.log = json.loads((finetuned_dir / STAGE_INFO).read_text())["log"]
    else:
        captions = train_dataset.filter(lambda task: task == "caption", input_columns="task")
        ctx.log["pretrain"] = {"train_loss": _train_phase(ctx, "pretrain", captions, ["connector:new"])}
        ctx.finetune_dataset = train_dataset
        if settings.use_lora:
            ctx.peft_config = llm_lora_config(ctx.model, **settings.lora)
        else:
            ctx.finetune_trainable = ["connector:new", "llm"]
        for plugin in plugins:
            plugin.configure_finetune(ctx)
        loss = _train_phase(ctx, "finetune", ctx.finetune_dataset, ctx.finetune_trainable, ctx.peft_config)
        ctx.log["finetune"] = {"train_loss": loss, "samples": len(ctx.finetune_dataset)}
        for plugin in plugins:
            plugin.after_finetune(ctx)
        if isinstance(ctx.model, PeftModel):  # methods without a merge keep the full fine-tuned LLM
            ctx.model = ctx.model.merge_and_unload()
        save_stage(ctx.model, processor, replay, {"log": ctx.log}, finetuned_dir)

    for plugin in plugins:
        plugin.after_stage(ctx)
    info = {
        "stage": stage,
        "modality": spec.name,
        "modalities": ctx.model.modalities,
        "plugins": [plugin.name for plugin in plugins],
        "settings": asdict(settings),
        "log": ctx.log,
        "train_samples": len(train_dataset),
        "seconds": round(time.time() - started, 1),
    }
    save_stage(ctx.model, processor, replay, info, output_dir)
    if PartialState().is_main_process:
        shutil.rmtree(work_dir, ignore_errors=True)
    return output_dir
