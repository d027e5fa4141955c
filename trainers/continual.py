"""
The one stage loop of modality-incremental continual learning, and the plug-ins that make it MERA.

    load θ(i-1) ─► add_modality(Mi) ─► pre-train the new connector on Di's captions
                ─► fine-tune that connector + the LLM (LoRA) on Di   ─► [after_finetune: merge]
                ─► fold any remaining adapter into the LLM            ─► [after_stage: realign]
                ─► save θi atomically (model, processor, replay samples, stage.json)

A continual-learning method is a list of `StagePlugin`s: each hook may change the stage's data, its PEFT config,
its trainable parts, its loss (`extra_loss`), or the model after a phase. MERA is `MergePlugin` + `RealignPlugin`;
`trainers.methods` holds the registry of every method. A plug-in with state (a Fisher matrix, a router's samples)
saves it with the stage (`plugins/NAME.json`, `plugins/NAME.safetensors`), where the next stage's plug-in finds it.
A method that keeps adapters beside the LLM instead of folding them in (PathWeave, MR-LoRA) names an
`AdapterFormat`: the stage folder then holds the plain base model plus `adapters/`, and `load_stage` rebuilds both.
"""

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import PartialState
from datasets import Dataset, concatenate_datasets
from peft import PeftModel
from safetensors.torch import load_file, save_file
from transformers import set_seed

from modeling_mera import MeraForCausalLM, MeraProcessor

from .merge import average_llm_weights, llm_state_dict, merge_stage_adapter, unwrapped_name
from .replay import ReplayBuffer, replay_count
from .sft import MeraSFTConfig, MeraSFTTrainer, RealignTrainer, llm_lora_config, paper_phase_config

STAGE_INFO = "stage.json"
REPLAY_DIR = "replay"
PLUGIN_DIR = "plugins"
ADAPTER_DIR = "adapters"


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
    adapter_format: str | None = None
    """Set by a plug-in whose adapters stay beside the LLM: the loop then neither folds nor unloads them, and the
    stage is saved and loaded through `ADAPTER_FORMATS[adapter_format]`."""


class StagePlugin:
    """
    A named piece of a continual-learning method; every hook is a no-op unless overridden.

    `supports_realign = False` marks a method that a realign step cannot follow (the registry refuses `--realign`).
    """

    name = "plugin"
    supports_realign = True

    def before_stage(self, ctx: StageContext):
        """After the new modality is added, before any training."""

    def configure_finetune(self, ctx: StageContext):
        """Change the fine-tuning phase: `ctx.finetune_dataset`, `ctx.peft_config`, `ctx.finetune_trainable`."""

    def after_finetune(self, ctx: StageContext):
        """Right after fine-tuning (the model may still carry its LoRA adapter): e.g. merge."""

    def after_stage(self, ctx: StageContext):
        """After the adapter is folded into the LLM: e.g. realign."""

    def extra_loss(self, model, inputs: dict) -> torch.Tensor | None:
        """A term added to the fine-tuning loss at every step (`MeraSFTTrainer.compute_loss`), e.g. EWC's penalty."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """What the next stage's plug-in needs: tensors (saved as safetensors) and JSON-serialisable values."""
        return {}

    def load_state_dict(self, state: dict[str, Any]):
        """Restore `state_dict()` of the previous stage's plug-in."""
        if state:
            raise ValueError(f"plug-in {self.name!r} keeps no state but was given {sorted(state)}")


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

    `ratio_percent` None uses the whole replay buffer (r = the stage settings' `replay_ratio`); a smaller ratio takes a
    seeded r% of each stage's data out of that buffer (`--realign R` after any method).
    """

    name = "realign"

    def __init__(self, ratio_percent: float | None = None):
        self.ratio_percent = ratio_percent

    def realign_set(self, ctx: StageContext) -> Dataset:
        if self.ratio_percent is None:
            return ctx.replay.union()
        parts = []
        for stage, samples in sorted(ctx.replay.stages.items()):
            count = replay_count(ctx.replay.info[stage]["of"], self.ratio_percent)
            if count > len(samples):
                raise ValueError(
                    f"realign ratio {self.ratio_percent}% needs {count} samples of stage {stage} but the replay "
                    f"buffer keeps {len(samples)} (replay_ratio {ctx.replay.info[stage]['ratio_percent']}%); raise "
                    "replay_ratio to at least the realign ratio"
                )
            rng = np.random.default_rng(ctx.settings.seed + stage)
            parts.append(samples.select(np.sort(rng.choice(len(samples), size=count, replace=False)).tolist()))
        return concatenate_datasets([part for part in parts if len(part)])

    def after_stage(self, ctx: StageContext):
        replay = self.realign_set(ctx)
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


class AdapterFormat:
    """How a model that keeps adapters beside its LLM is written to a stage's `adapters/` folder and rebuilt."""

    name = "adapters"

    def base_model(self, model) -> MeraForCausalLM:
        """The `MeraForCausalLM` the adapters live in."""
        raise NotImplementedError

    def save(self, model, directory: Path):
        """Write the adapters (and whatever rebuilding them needs) into `directory`."""
        raise NotImplementedError

    def load(self, base: MeraForCausalLM, directory: Path, processor: MeraProcessor):
        """The model of `save`, rebuilt around the freshly loaded plain `base`."""
        raise NotImplementedError


ADAPTER_FORMATS: dict[str, AdapterFormat] = {}


def register_adapter_format(adapter_format: AdapterFormat) -> AdapterFormat:
    ADAPTER_FORMATS[adapter_format.name] = adapter_format
    return adapter_format


def get_adapter_format(name: str) -> AdapterFormat:
    if name not in ADAPTER_FORMATS:
        from . import methods  # noqa: F401  (the built-in methods register their formats on import)
    if name not in ADAPTER_FORMATS:
        raise ValueError(f"unknown adapter format {name!r}; known formats: {sorted(ADAPTER_FORMATS)}")
    return ADAPTER_FORMATS[name]


def base_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """
    The weights of `model` without its adapters, under the names of the plain model: parameters of adapter
    sub-modules (any module's `adapter_layer_names`, as PEFT tuner layers declare them) are dropped and the
    `base_layer` wrappers are looked through.
    """
    adapter_names = {name for module in model.modules() for name in getattr(module, "adapter_layer_names", ())}
    return {
        unwrapped_name(key): value
        for key, value in model.state_dict().items()
        if not adapter_names.intersection(key.split("."))
    }


def save_plugin_states(plugins: list[StagePlugin], directory: Path):
    """Each stateful plug-in's `state_dict()` as `NAME.safetensors` (tensors) and `NAME.json` (the rest)."""
    states = {plugin.name: plugin.state_dict() for plugin in plugins}
    names = [plugin.name for plugin in plugins if states[plugin.name]]
    if len(set(names)) != len(names):
        raise ValueError(f"plug-ins with state need distinct names to be saved, got {names}")
    for name in names:
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {key: value for key, value in states[name].items() if isinstance(value, torch.Tensor)}
        values = {key: value for key, value in states[name].items() if key not in tensors}
        if tensors:
            save_file({key: value.detach().contiguous().cpu() for key, value in tensors.items()},
                      str(directory / f"{name}.safetensors"))  # fmt: skip
        if values:
            (directory / f"{name}.json").write_text(json.dumps(values, indent=2, default=str) + "\n")


def load_plugin_states(plugins: list[StagePlugin], directory: Path):
    """Hand every plug-in the state its namesake saved in `directory` (if any)."""
    for plugin in plugins:
        state = {}
        if (directory / f"{plugin.name}.safetensors").is_file():
            state.update(load_file(str(directory / f"{plugin.name}.safetensors")))
        if (directory / f"{plugin.name}.json").is_file():
            state.update(json.loads((directory / f"{plugin.name}.json").read_text()))
        if state:
            plugin.load_state_dict(state)


def load_stage_model(directory: str | os.PathLike, processor: MeraProcessor):
    """The model of a saved stage (or phase): the plain model, or the one its adapter format rebuilds."""
    directory = Path(directory)
    model = MeraForCausalLM.from_pretrained(directory)
    adapter_format = json.loads((directory / STAGE_INFO).read_text()).get("adapter_format")
    if adapter_format is None:
        return model
    return get_adapter_format(adapter_format).load(model, directory / ADAPTER_DIR, processor)


def load_stage(directory: str | os.PathLike) -> tuple[MeraForCausalLM, MeraProcessor, ReplayBuffer]:
    """
    A saved stage: its model, processor and replay buffer. The model is a `MeraForCausalLM`, or for methods that
    keep adapters beside the LLM (PathWeave, MR-LoRA) the model their adapter format rebuilds.
    """
    directory = Path(directory)
    if not is_finished_stage(directory):
        raise FileNotFoundError(f"{directory} is not a finished stage (no {STAGE_INFO})")
    processor = MeraProcessor.from_pretrained(directory)
    model = load_stage_model(directory, processor)
    return model, processor, ReplayBuffer.load(directory / REPLAY_DIR)


def save_stage(
    model,
    processor: MeraProcessor,
    replay: ReplayBuffer,
    info: dict,
    output_dir: Path,
    adapter_format: str | None = None,
    plugins: list[StagePlugin] = (),
):
    """Write a stage checkpoint atomically: into a temporary sibling folder, renamed into place when complete."""
    output_dir = Path(output_dir)
    state = PartialState()
    if state.is_main_process:  # under `accelerate launch`, every process holds the same model: one writes it
        temporary = output_dir.with_name(f".{output_dir.name}.saving")
        shutil.rmtree(temporary, ignore_errors=True)
        if adapter_format is None:
            model.save_pretrained(temporary)
        else:
            saver = get_adapter_format(adapter_format)
            base = saver.base_model(model)
            base.save_pretrained(temporary, state_dict=base_state_dict(base))
            saver.save(model, temporary / ADAPTER_DIR)
            info = {**info, "adapter_format": adapter_format}
        processor.config = model.config
        processor.save_pretrained(temporary)
        replay.save(temporary / REPLAY_DIR)
        save_plugin_states(list(plugins), temporary / PLUGIN_DIR)
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


def _train_phase(
    ctx: StageContext, phase: str, dataset: Dataset, trainable: list[str], peft_config=None, plugins=()
) -> float:
    args = ctx.settings.phase_config(phase, ctx.work_dir)
    args.trainable = trainable
    trainer = MeraSFTTrainer(ctx.model, args, dataset, ctx.processor, peft_config=peft_config, plugins=plugins)
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
        load_plugin_states(plugins, Path(previous) / PLUGIN_DIR)
    else:
        model, replay = previous, ReplayBuffer()
        if processor is None:
            raise ValueError("pass the processor of the given model")
    stage = len(model.modalities) + 1 if stage is None else stage
    _check_stage_inputs(model, spec, stage, train_dataset)
    work_dir = output_dir.with_name(f"{output_dir.name}.partial")
    started = time.time()

    # Seed the new connector's initialisation, so that a stage and an expert trained alike are the same model.
    set_seed(settings.seed)
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
        ctx.model = load_stage_model(finetuned_dir, processor)
        finetuned_info = json.loads((finetuned_dir / STAGE_INFO).read_text())
        ctx.log, ctx.adapter_format = finetuned_info["log"], finetuned_info.get("adapter_format")
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
        loss = _train_phase(
            ctx, "finetune", ctx.finetune_dataset, ctx.finetune_trainable, ctx.peft_config, plugins=plugins
        )
        ctx.log["finetune"] = {"train_loss": loss, "samples": len(ctx.finetune_dataset)}
        for plugin in plugins:
            plugin.after_finetune(ctx)
        if isinstance(ctx.model, PeftModel) and ctx.adapter_format is None:
            ctx.model = ctx.model.merge_and_unload()  # methods without a merge keep the full fine-tuned LLM
        save_stage(ctx.model, processor, replay, {"log": ctx.log}, finetuned_dir, ctx.adapter_format)

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
    save_stage(ctx.model, processor, replay, info, output_dir, ctx.adapter_format, plugins)
    if PartialState().is_main_process:
        shutil.rmtree(work_dir, ignore_errors=True)
    return output_dir
