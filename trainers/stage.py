"""
The one stage loop of continual learning: `run_stage` takes θ(i-1) to θi.

    load θ(i-1) ─► add modality Mi ─► pre-train the new connector on Di's captions
                ─► fine-tune that connector + the LLM (LoRA) on Di
                ─► merge (plug-ins' `after_finetune`), fold any remaining adapter into the LLM
                ─► realign and other post-stage steps (plug-ins' `after_stage`)
                ─► save θi atomically (model, processor, replay samples, plug-in states, stage.json)

A continual-learning method is a list of `trainers.plugins.StagePlugin`s (registered in `trainers.methods`);
MERA (`trainers.methods.mera`) is the default. Evaluating every stage is the continual run's (`trainers.continual`).
The loop never imports a method to load a stage: adapter formats are recorded by import path (`trainers.checkpoint`).

A stage adds a modality (MERA's setting) or a task on a modality learnt before (MLLM-CL's domain and ability
continual learning, `ModalitySpec.task`): then no encoder or connector is added, connector pre-training is skipped
(`StageSettings.pretrain_connector`), and QA-only data is fine; the stage trains the modality's connector
(`connector:new` is always the connector of the stage's modality) and the LLM.
"""

import json
import logging
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

from datasets import Dataset
from peft import PeftModel, get_peft_model
from transformers import set_seed

from modeling_mera import MeraForCausalLM, MeraProcessor

from . import console
from .checkpoint import (
    PLUGIN_DIR,
    STAGE_INFO,
    CheckpointError,
    adapter_format_of,
    is_finished_stage,
    load_plugin_states,
    load_stage,
    load_stage_model,
    read_stage_info,
    save_stage,
    verify_stage,
)
from .data import ReplayBuffer
from .distributed import process_state, sharded_launch
from .evaluation.cost import PeakMemory
from .methods.mera import mera_plugins
from .plugins import HOOKS, StageContext, StagePlugin
from .quantization import check_quantization_available, quantization_config, quantize_llm, restore_full_precision
from .settings import PHASES, ModalitySpec, StageSettings
from .sft import (
    DEFAULT_TRAINABLE,
    MeraSFTConfig,
    MeraSFTTrainer,
    effective_settings,
    llm_lora_config,
    phase_config,
    unwrap_mera,
)

logger = logging.getLogger(__name__)


def build_feature_processor(spec: ModalitySpec, kind: str):
    """The modality's feature processor: the given object, or one loaded from a Hub id / folder."""
    if spec.feature_processor is None or not isinstance(spec.feature_processor, (str, os.PathLike)):
        return spec.feature_processor
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    auto_class = AutoFeatureExtractor if kind == "audio" else AutoImageProcessor
    return auto_class.from_pretrained(spec.feature_processor)


@contextmanager
def _timed(ctx: StageContext, phase: str):
    """Record a phase's wall-clock and process CPU seconds in the stage log (`stage.json`'s `log.phase_seconds`)."""
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        times = ctx.log.setdefault("phase_seconds", {})
        times[phase] = {
            "wall": round(time.perf_counter() - wall, 3),
            "cpu": round(time.process_time() - cpu, 3),
        }


def _call(plugins: list[StagePlugin], hook: str, ctx: StageContext, timed: bool = False):
    """Run hook `hook` of every plug-in, in order; `timed`: record each overriding plug-in's time under its name."""
    if hook not in HOOKS:
        raise ValueError(f"unknown plug-in hook {hook!r}; the stage loop calls {list(HOOKS)}")
    for plugin in plugins:
        with console.context(phase=plugin.name):  # what the plug-in trains is labelled with its name ("realign")
            if timed and getattr(type(plugin), hook) is not getattr(StagePlugin, hook):
                with _timed(ctx, plugin.name):
                    getattr(plugin, hook)(ctx)
            else:
                getattr(plugin, hook)(ctx)


def _check_stage_inputs(spec: ModalitySpec, stage: int, previous_tasks: list[str], train_dataset: Dataset):
    if stage != len(previous_tasks) + 1:
        raise ValueError(
            f"stage {stage} cannot follow a checkpoint of {len(previous_tasks)} stage(s) ({previous_tasks}); the next "
            f"stage is {len(previous_tasks) + 1}"
        )
    if spec.task_name in previous_tasks:
        raise ValueError(
            f"task {spec.task_name!r} was already learnt (tasks so far: {previous_tasks}); a stage on a modality "
            "learnt before names its new task (`task`)"
        )
    others = sorted(set(train_dataset["modality"]) - {spec.name, None})
    if others:
        raise ValueError(f"stage {stage} learns {spec.name!r} but its training data also holds modalities {others}")


def _check_plugins(plugins: list[StagePlugin], spec: ModalitySpec, stage: int):
    refusing = [plugin.name for plugin in plugins if not plugin.supports_task_stages]
    if refusing:
        raise ValueError(
            f"stage {stage} adds task {spec.task_name!r} on modality {spec.name!r}, learnt before; plug-in(s) "
            f"{refusing} isolate what each modality learns and have nothing to give a second task on it"
        )


def learnt_tasks(directory: Path) -> list[str]:
    """The tasks a saved stage has learnt, in order (stages saved before tasks existed: one per modality)."""
    info = json.loads((directory / STAGE_INFO).read_text())
    return list(info.get("tasks", info.get("modalities", [])))


def _train_phase(
    ctx: StageContext, phase: str, dataset: Dataset, trainable: list[str], peft_config=None, plugins=()
) -> dict:
    """Train one phase; returns what stage.json records of it: its loss and the settings it trained with."""
    args = phase_config(ctx.settings, phase, ctx.work_dir)
    # 'connector:new' is the connector of this stage's modality, whether the stage added it or not.
    args.trainable = [f"connector:{ctx.modality}" if spec == "connector:new" else spec for spec in trainable]
    trainer = MeraSFTTrainer(ctx.model, args, dataset, ctx.processor, peft_config=peft_config, plugins=plugins)
    result = trainer.train()
    ctx.model = trainer.model
    return {"train_loss": result.training_loss, **effective_settings(args)}


def _train_quantized(ctx: StageContext, dataset: Dataset, plugins: list[StagePlugin]) -> dict:
    """
    The fine-tuning phase with the LLM's base layers in 4 bits (QLoRA; `trainers.quantization`): the adapters are
    wrapped around the full-precision layers first, and the full-precision layers are put back right after training,
    before any plug-in merges, anchors or saves.
    """
    if ctx.peft_config is not None:
        ctx.model, ctx.peft_config = get_peft_model(ctx.model, ctx.peft_config), None
    mera = unwrap_mera(ctx.model)
    dtype = str(next(mera.language_model.parameters()).dtype).removeprefix("torch.")
    config = quantization_config(True, dtype, ctx.settings.bnb_4bit_quant_type, ctx.settings.use_bnb_nested_quant)
    kept = quantize_llm(mera.model.language_model, config, process_state().device)
    try:
        record = _train_phase(ctx, "finetune", dataset, ctx.finetune_trainable, None, plugins)
    finally:
        restore_full_precision(ctx.model, kept)
    return {**record, "load_in_4bit": True, "quantized_layers": len(kept)}


def check_runtime(settings: StageSettings):
    """
    What the stage loop checks before anything is loaded, written or trained: every `{phase}_args` key is a
    `MeraSFTConfig` field, and the machine and launch offer what the settings need (4-bit: CUDA and bitsandbytes).
    """
    known = {f.name for f in fields(MeraSFTConfig)}
    for phase in PHASES:
        unknown = sorted(set(getattr(settings, f"{phase}_args") or {}) - known)
        if unknown:
            raise ValueError(f"{phase}_args: {unknown} are not MeraSFTConfig (TRL SFTConfig) fields")
    if settings.load_in_4bit:
        check_quantization_available()
        sharding = sharded_launch()
        if sharding:
            raise ValueError(
                f"load_in_4bit: 4-bit fine-tuning under {sharding} is not supported; QLoRA is the one-GPU road "
                "(or DDP / DeepSpeed ZeRO-2, which keep whole weights on every GPU)"
            )


# --- the phases of a stage, in order ---------------------------------------------------------------------------------
def _load_previous(previous, processor: MeraProcessor | None, plugins: list[StagePlugin]):
    """θ(i-1) and the tasks it has learnt: a saved stage (with its plug-ins' states) or a given model (stage 1)."""
    if isinstance(previous, (str, os.PathLike)):
        model, processor, replay = load_stage(previous)
        load_plugin_states(plugins, Path(previous) / PLUGIN_DIR)
        return model, processor, replay, learnt_tasks(Path(previous))
    if processor is None:
        raise ValueError("pass the processor of the given model")
    return previous, processor, ReplayBuffer(), []


def _add_modality(model, processor: MeraProcessor, spec: ModalitySpec, settings: StageSettings):
    """The new modality's encoder (frozen) and connector, and its feature processor."""
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


def _pretrain(ctx: StageContext):
    """The stage modality's connector alone, on the stage's captions (else its samples with media); skipped as
    `pretrain_connector` says ('auto': when the connector was trained at an earlier stage)."""
    when = ctx.settings.pretrain_connector
    if when == "never" or (when == "auto" and not ctx.new_modality):
        ctx.log["pretrain"] = {"skipped": f"pretrain_connector {when!r}; the {ctx.modality} connector is kept"}
        return
    with_media = ctx.train_dataset.filter(lambda media: media is not None, input_columns="media")
    captions = with_media.filter(lambda task: task == "caption", input_columns="task")
    samples = captions if len(captions) else with_media
    if not len(samples):
        raise ValueError(f"stage {ctx.stage}: no sample with {ctx.modality} media to pre-train its connector on")
    with console.context(phase="pre-train"):
        record = _train_phase(ctx, "pretrain", samples, list(DEFAULT_TRAINABLE["pretrain"]))
    ctx.log["pretrain"] = {**record, "samples": len(samples)}


def _finetune(ctx: StageContext, plugins: list[StagePlugin]):
    """The new connector and the LLM (LoRA, or every weight), on what the plug-ins make of the stage's data."""
    ctx.finetune_dataset = ctx.train_dataset
    if ctx.settings.use_lora:
        ctx.peft_config = llm_lora_config(ctx.model, **ctx.settings.lora_settings())
    else:
        ctx.finetune_trainable = ["connector:new", "llm"]
    _call(plugins, "configure_finetune", ctx)
    lora = ctx.peft_config  # recorded as trained: a plug-in may have replaced or dropped the loop's LoRA
    shape = {"lora_r": lora.r, "lora_alpha": lora.lora_alpha} if getattr(lora, "r", None) else {}
    with console.context(phase="fine-tune"):
        if ctx.settings.load_in_4bit:
            record = _train_quantized(ctx, ctx.finetune_dataset, plugins)
        else:
            record = _train_phase(
                ctx, "finetune", ctx.finetune_dataset, ctx.finetune_trainable, ctx.peft_config, plugins
            )
    ctx.log["finetune"] = {**record, **shape, "samples": len(ctx.finetune_dataset)}


def _merge(ctx: StageContext, plugins: list[StagePlugin], finetuned_dir: Path):
    """The plug-ins' merge, then any remaining LoRA folded into the LLM; saved so that a killed stage resumes here."""
    with _timed(ctx, "merge"):
        _call(plugins, "after_finetune", ctx)
        if isinstance(ctx.model, PeftModel) and ctx.adapter_format is None:
            ctx.model = ctx.model.merge_and_unload()  # methods without a merge keep the full fine-tuned LLM
    # The resume point is a full save: its time stands for the final save's, which stage.json cannot hold.
    with _timed(ctx, "save"):
        save_stage(ctx.model, ctx.processor, ctx.replay, {"log": ctx.log}, finetuned_dir, ctx.adapter_format)


def _resume_merged(ctx: StageContext, finetuned_dir: Path):
    """A killed stage's pre-training, fine-tuning and merge, read back."""
    ctx.model = load_stage_model(finetuned_dir, ctx.processor)
    finetuned_info = read_stage_info(finetuned_dir)
    ctx.log, ctx.adapter_format = finetuned_info["log"], adapter_format_of(finetuned_info, finetuned_dir / STAGE_INFO)


def _save(ctx: StageContext, plugins: list[StagePlugin], output_dir: Path, started: float, memory: PeakMemory):
    info = {
        "stage": ctx.stage,
        "modality": ctx.modality,
        "task": ctx.task,
        "tasks": ctx.tasks,
        "modalities": ctx.model.modalities,
        "plugins": [plugin.name for plugin in plugins],
        "settings": asdict(ctx.settings),
        "log": ctx.log,
        "train_samples": len(ctx.train_dataset),
        "seconds": round(time.time() - started, 1),
        **memory.read(),
    }
    save_stage(ctx.model, ctx.processor, ctx.replay, info, output_dir, ctx.adapter_format, plugins)
    if process_state().is_main_process:
        shutil.rmtree(ctx.work_dir, ignore_errors=True)


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
        spec: the modality this stage adds, or (`spec.task`) the task it adds on a modality learnt before.
        train_dataset: D_i in the sample format (conversations about media of modality `spec.name`, or text only).
        stage: the stage index, checked against the checkpoint (default: one more than the checkpoint's).
        plugins: the method's plug-ins; MERA's merge and realign by default.
        settings: per-phase training settings; the paper's by default.

    A killed stage resumes from its last finished phase (kept in `output_dir`'s `.partial` sibling).
    """
    settings = settings or StageSettings()
    check_runtime(settings)
    plugins = mera_plugins() if plugins is None else plugins
    output_dir = Path(output_dir)
    if is_finished_stage(output_dir):
        raise FileExistsError(f"{output_dir} already holds a finished stage; it is never re-trained")
    model, processor, replay, previous_tasks = _load_previous(previous, processor, plugins)
    stage = len(previous_tasks) + 1 if stage is None else stage
    _check_stage_inputs(spec, stage, previous_tasks, train_dataset)
    new_modality = spec.name not in model.modalities
    if not new_modality:
        _check_plugins(plugins, spec, stage)
    kept = {index: info["ratio_percent"] for index, info in replay.info.items()}
    short = {index: ratio for index, ratio in kept.items() if ratio < settings.replay_ratio}
    if short:
        raise ValueError(
            f"stage {stage} draws up to {settings.replay_ratio}% of every earlier stage from the replay buffer, but "
            f"the checkpoint's buffer keeps less of stage(s) {short} (in %); continue with replay_ratio and "
            "realign_ratio at most that, or retrain those stages"
        )
    started, memory = time.time(), PeakMemory()

    if new_modality:
        _add_modality(model, processor, spec, settings)
    else:  # the same start for every method, as a new connector's seeded initialisation gives
        set_seed(settings.seed)
    replay.add_stage(stage, train_dataset, settings.replay_ratio, seed=settings.seed + stage)
    work_dir = output_dir.with_name(f"{output_dir.name}.partial")
    tasks = [*previous_tasks, spec.task_name]
    ctx = StageContext(stage, spec.name, model, processor, train_dataset, settings, work_dir, replay,
                       task=spec.task_name, new_modality=new_modality, tasks=tasks)  # fmt: skip
    _call(plugins, "before_stage", ctx)

    finetuned_dir = work_dir / "finetuned"
    if is_finished_stage(finetuned_dir):
        try:
            verify_stage(finetuned_dir)
        except CheckpointError as error:  # work in progress: train its phases again rather than stop
            logger.warning(f"{error}; its phases are trained again")
            shutil.rmtree(finetuned_dir)
    if is_finished_stage(finetuned_dir):
        _resume_merged(ctx, finetuned_dir)
    else:
        with _timed(ctx, "pretrain"):
            _pretrain(ctx)
        with _timed(ctx, "finetune"):
            _finetune(ctx, plugins)
        _merge(ctx, plugins, finetuned_dir)
    _call(plugins, "after_stage", ctx, timed=True)  # MERA's realign; EWC's Fisher; MR-LoRA's router
    _save(ctx, plugins, output_dir, started, memory)
    return output_dir
