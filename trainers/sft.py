"""
TRL trainers for one MERA stage: `MeraSFTTrainer` (the standard two-phase MLLM training, with the trainable set
given by name) and `RealignTrainer` (connector-only realigning on a replay set).
"""

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel
from trl import ModelConfig, SFTConfig, SFTTrainer, get_peft_config

from . import console
from .data import MeraDataCollator
from .data.feature_cache import EncoderFeatureCache
from .distributed import gathered_state_dict, shards_parameters
from .settings import StageSettings

# What trains in each phase unless a plug-in or a config says otherwise: the one place these defaults live.
DEFAULT_TRAINABLE = {
    "pretrain": ("connector:new",),
    "finetune": ("connector:new", "llm:lora"),
    "realign": ("connectors",),
}
# Table 9 of the paper (AdamW, cosine decay, warm-up ratio 0.03, one epoch).
PAPER_PHASES = {
    "pretrain": {"per_device_train_batch_size": 128, "learning_rate": 1e-3},
    "finetune": {"per_device_train_batch_size": 16, "learning_rate": 2e-4, "connector_learning_rate": 2e-5},
    "realign": {"per_device_train_batch_size": 16, "learning_rate": 2e-5},
}


@dataclass
class MeraSFTConfig(SFTConfig):
    """
    `SFTConfig` with the settings a multimodal MERA batch needs, and two fields of its own.

    Defaults that differ from `SFTConfig`: `remove_unused_columns=False` and `skip_prepare_dataset` (the collator
    tokenises), `bf16` only where a GPU supports it (TRL turns it on everywhere, which on a CPU is slow autocast),
    `dataloader_pin_memory` only with an accelerator, `activation_checkpointing=False` (turn it on for large
    LLMs), no external loggers, no intermediate checkpoints (a stage resumes from its last finished phase), cosine
    decay with 3% warm-up, one epoch.
    """

    trainable: list[str] | None = field(
        default=None,
        metadata={
            "help": "What trains, by name: 'connector:NAME', 'connector:new' (the newest modality's), 'connectors' "
            "(all), 'llm:lora' (the LoRA adapter), 'llm' (every LLM weight), 'encoder:NAME', 'match:REGEX' (every "
            "parameter whose name the regular expression matches, e.g. one named adapter). Everything else is "
            "frozen. Unset: the trainer's default (MeraSFTTrainer: 'connector:new'; RealignTrainer: 'connectors')."
        },
    )
    connector_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of connector parameters; `learning_rate` when unset."}
    )
    remove_unused_columns: bool = False
    dataset_kwargs: dict | None = field(default_factory=lambda: {"skip_prepare_dataset": True})
    bf16: bool | None = None
    dataloader_pin_memory: bool | None = None
    activation_checkpointing: bool = False
    gradient_checkpointing: bool | None = None
    report_to: str | list[str] = "none"
    save_strategy: str = "no"
    lr_scheduler_type: str = "cosine"
    # transformers 5 dropped `warmup_ratio`: a float below 1 in `warmup_steps` is the fraction of the phase's steps
    # (`TrainingArguments.get_warmup_steps`: ceil(0.03 · steps)).
    warmup_steps: float = 0.03
    num_train_epochs: float = 1.0
    max_length: int | None = None
    logging_steps: float = 10
    feature_cache_dir: str | None = field(
        default=None,
        metadata={"help": "Folder of the frozen-encoder feature cache (trainers.data.feature_cache); unset: off."},
    )
    feature_cache_gb: float = field(default=2.0, metadata={"help": "Size limit of the feature cache, in GiB."})

    def __post_init__(self):
        if self.warmup_steps < 0 or (self.warmup_steps >= 1 and self.warmup_steps != int(self.warmup_steps)):
            raise ValueError(
                f"warmup_steps must be a whole number of steps or a fraction in [0, 1) of the phase's steps, got "
                f"{self.warmup_steps}"
            )
        if self.bf16 is None:
            self.bf16 = bool(not self.fp16 and torch.cuda.is_available() and torch.cuda.is_bf16_supported())
        if self.dataloader_pin_memory is None:
            # Pinned memory only speeds up copies to an accelerator; without one, torch warns on every data loader.
            self.dataloader_pin_memory = torch.accelerator.is_available()
        super().__post_init__()


def paper_phase_config(phase: str, output_dir: str, **overrides) -> MeraSFTConfig:
    """The paper's hyper-parameters for a phase ('pretrain', 'finetune', 'realign'), with overrides."""
    if phase not in PAPER_PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {list(PAPER_PHASES)}")
    if "warmup_ratio" in overrides:
        raise ValueError(
            f"{phase}: 'warmup_ratio' is not a setting of transformers 5 (it would be ignored); write the fraction as "
            f"'warmup_steps: {overrides['warmup_ratio']}' (a float below 1 is a fraction of the phase's steps)"
        )
    defaults = {**PAPER_PHASES[phase], "trainable": list(DEFAULT_TRAINABLE[phase])}
    return MeraSFTConfig(output_dir=output_dir, **{**defaults, **overrides})


def phase_config(settings: StageSettings, phase: str, output_dir: Path) -> MeraSFTConfig:
    """A stage phase's `MeraSFTConfig`: the paper's settings, the run's seed and feature cache, then what the run sets
    for the phase."""
    overrides = {
        "seed": settings.seed,
        "data_seed": settings.seed,
        "feature_cache_dir": settings.feature_cache,
        "feature_cache_gb": settings.feature_cache_gb,
        **settings.phase_overrides(phase),
    }
    return paper_phase_config(phase, str(Path(output_dir) / phase), **overrides)


def effective_settings(args: MeraSFTConfig) -> dict:
    """What a phase trained with, as its `MeraSFTConfig` holds it (a stage records these in stage.json)."""
    return {
        "learning_rate": args.learning_rate,
        "connector_learning_rate": args.connector_learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_train_epochs": args.num_train_epochs,
    }


def llm_lora_config(
    model,
    r: int = 128,
    lora_alpha: int = 128,
    lora_dropout: float = 0.05,
    use_rslora: bool = False,
    target_modules: list[str] | None = None,
) -> LoraConfig:
    """
    LoRA on the LLM's linear layers: every one, as in the paper, or those named in `target_modules` (`q_proj`, ...);
    never the LM head, encoders or connectors. The shape defaults to the paper's (r = alpha = 128). The config is
    TRL's `get_peft_config` of a `ModelConfig` with these values (`lora_r`, ... are the stage settings' names too).
    """
    linear_names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, module in model.language_model.named_modules()
            if isinstance(module, torch.nn.Linear)
        }
    )
    if target_modules is not None:
        unknown = sorted(set(target_modules) - set(linear_names))
        if unknown or not target_modules:
            raise ValueError(
                f"lora_target_modules {list(target_modules)} must name linear layers of the LLM; it has {linear_names}"
            )
        linear_names = sorted(set(target_modules))
    pattern = r".*\.language_model\..*\.(" + "|".join(map(re.escape, linear_names)) + r")$"
    settings = ModelConfig(
        use_peft=True,
        lora_r=r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        lora_target_modules=pattern,
        use_rslora=use_rslora,
        lora_task_type="CAUSAL_LM",
    )
    return get_peft_config(settings)


def unwrap_mera(model):
    """The `MeraForCausalLM` inside a `PeftModel` (or the model itself)."""
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _matches(name: str, spec: str, newest_modality: str) -> bool:
    """Whether parameter `name` (of a MeraForCausalLM, possibly PEFT-wrapped) belongs to the trainable part `spec`."""
    kind, _, target = spec.partition(":")
    if kind == "connector" and target == "new":
        target = newest_modality
    if kind in ("connector", "connectors"):
        return f"model.connectors.{target}." in name if target else "model.connectors." in name
    if kind == "encoder":
        return f"model.encoders.{target}." in name
    if kind == "llm" and target == "lora":
        return "lora_" in name
    if kind == "llm" and not target:
        return ("model.language_model." in name or name.endswith("lm_head.weight")) and "lora_" not in name
    if kind == "match" and target:
        return re.search(target, name) is not None
    raise ValueError(
        f"unknown trainable part {spec!r}; use 'connector:NAME', 'connector:new', 'connectors', 'llm:lora', 'llm', "
        "'encoder:NAME' or 'match:REGEX'"
    )


def set_trainable(model, trainable: list[str]) -> dict[str, int]:
    """Freeze everything, then unfreeze the named parts. Returns the number of trainable parameters per part."""
    mera = unwrap_mera(model)
    if not mera.modalities and any(spec.startswith("connector") for spec in trainable):
        raise ValueError("the model has no modality yet: there is no connector to train")
    newest = mera.modalities[-1] if mera.modalities else ""
    if "llm:lora" in trainable and not isinstance(model, PeftModel):
        raise ValueError("'llm:lora' is trainable but the model has no LoRA adapter; pass a peft_config")
    counts = dict.fromkeys(trainable, 0)
    for name, parameter in model.named_parameters():
        matched = [spec for spec in trainable if _matches(name, spec, newest)]
        parameter.requires_grad_(bool(matched))
        for spec in matched:
            counts[spec] += parameter.numel()
    empty = [spec for spec, count in counts.items() if count == 0]
    if empty:
        raise ValueError(f"trainable part(s) {empty} match no parameter; the model's modalities are {mera.modalities}")
    return counts


class MeraSFTTrainer(SFTTrainer):
    """
    `SFTTrainer` for a `MeraForCausalLM` on the project's sample format.

    The processor is a `MeraProcessor` (the collator tokenises and reads media); the trainable set comes from
    `args.trainable`; connector parameters may get their own learning rate (`args.connector_learning_rate`).
    With a `peft_config`, TRL wraps the model in a `PeftModel` first. `plugins` (stage plug-ins) may add loss
    terms through their `extra_loss(model, inputs)`; each term is logged as `<plugin name>_loss`.
    """

    default_trainable = DEFAULT_TRAINABLE["pretrain"]

    def __init__(self, model, args: MeraSFTConfig, train_dataset, processor, peft_config=None, plugins=(), **kwargs):
        if not isinstance(args, MeraSFTConfig):
            raise TypeError(f"args must be a MeraSFTConfig, got {type(args).__name__}")
        self.plugins = list(plugins)
        self.feature_cache = None
        if args.feature_cache_dir and "data_collator" not in kwargs:
            # Encode each media item once, before training, instead of once per epoch (exact: see feature_cache).
            self.feature_cache = EncoderFeatureCache(args.feature_cache_dir, int(args.feature_cache_gb * 1024**3))
        kwargs.setdefault(
            "data_collator",
            MeraDataCollator(processor, max_length=args.max_length, feature_cache=self.feature_cache),
        )
        super().__init__(
            model=model,
            args=args,
            train_dataset=train_dataset,
            processing_class=processor.tokenizer,
            peft_config=peft_config,
            **kwargs,
        )
        self.processor = processor
        console.install(self)
        self._skip_idle_garbage_collection()
        if args.trainable is None:
            args.trainable = list(self.default_trainable)
        self.trainable_counts = set_trainable(self.model, args.trainable)
        if self.feature_cache is not None:
            # Filled once the trainable set is known: only the encoders that stay frozen in this phase are cached.
            state = self.accelerator.state
            self.feature_cache.fill(
                unwrap_mera(self.model), processor, train_dataset, state.process_index, state.num_processes
            )
            self.accelerator.wait_for_everyone()  # each process encoded its share: all are on disk before training
        self._add_lengths()

    def _add_lengths(self):
        """
        transformers' length-grouped sampling (`train_sampling_strategy="group_by_length"` or "batch_rebalance")
        needs each sample's length; a raw sample has no `input_ids` to measure, so the collator measures it in tokens
        with media placeholders expanded. In a batch mixing modalities (realign's and replay's R_i), a short audio
        item (e.g. 32 tokens) then waits beside image items (576) rarely instead of in most batches.
        """
        dataset, column = self.train_dataset, self.args.length_column_name
        grouped = self.args.train_sampling_strategy in ("group_by_length", "batch_rebalance")
        if not grouped or dataset is None or column in getattr(dataset, "column_names", [column]):
            return
        measure = getattr(self.data_collator, "sample_length", None)
        if measure is None:
            raise ValueError(
                f"train_sampling_strategy={self.args.train_sampling_strategy!r} needs a '{column}' column or a "
                "collator that measures samples (MeraDataCollator)"
            )
        self.train_dataset = dataset.add_column(column, [measure(sample) for sample in dataset])

    def train(self, *args, **kwargs):
        """
        `Trainer.train`. Where the accelerate config shards the parameters (FSDP, DeepSpeed ZeRO-3), `self.model` is
        afterwards a whole, unsharded copy of the trained model on every process, so that what follows a phase (the
        merge, the next phase's freezing, EWC's Fisher, saving) reads and writes whole weights. The copy is taken
        before training, while the model is still whole: it costs one model's size of CPU memory per process.
        """
        whole = copy.deepcopy(self.model) if shards_parameters(self.accelerator) else None
        result = super().train(*args, **kwargs)
        if whole is not None:
            whole.load_state_dict(gathered_state_dict(self.model))
            self.model = self.model_wrapped = whole
        return result

    def _skip_idle_garbage_collection(self):
        """
        `Trainer.train()` starts with accelerate's `free_memory()`, a full `gc.collect()` (~0.4 s with a model in
        memory, three times per stage) that frees nothing in a fresh trainer on a CPU: no prepared model, optimizer or
        dataloader is held yet and there is no device cache to empty. Skip just that case.
        """
        accelerator = self.accelerator
        free_memory = accelerator.free_memory

        def free_memory_unless_idle(*objects):
            idle = not (objects or accelerator._models or accelerator._optimizers or accelerator._dataloaders)
            if idle and accelerator.device.type == "cpu":
                accelerator._schedulers = []
                accelerator.step = 0
                return []
            return free_memory(*objects)

        accelerator.free_memory = free_memory_unless_idle

    def create_optimizer(self, model=None):
        if self.optimizer is not None:
            return self.optimizer
        opt_model = self.model if model is None else model
        decay = set(self.get_decay_parameter_names(opt_model))
        connector_lr = self.args.connector_learning_rate or self.args.learning_rate
        groups = {}
        for name, parameter in opt_model.named_parameters():
            if not parameter.requires_grad:
                continue
            lr = connector_lr if ".connectors." in name else self.args.learning_rate
            weight_decay = self.args.weight_decay if name in decay else 0.0
            groups.setdefault((lr, weight_decay), []).append(parameter)
        optimizer_cls, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, opt_model)
        param_groups = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
        self.optimizer = optimizer_cls(param_groups, **optimizer_kwargs)
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        mode = "train" if self.model.training else "eval"
        for plugin in self.plugins:
            term = plugin.extra_loss(model, inputs)
            if term is None:
                continue
            # Like TRL's MoE aux loss: with `num_items_in_batch`, Trainer leaves gradient accumulation to the loss.
            steps = self.current_gradient_accumulation_steps if num_items_in_batch is not None else 1
            loss = loss + term.to(loss.device) / steps
            self._metrics[mode][f"{plugin.name}_loss"].append(self.accelerator.gather(term.detach()).mean().item())
        return (loss, outputs) if return_outputs else loss


class RealignTrainer(MeraSFTTrainer):
    """
    MERA's realign step: every connector trains on the replay set with the autoregressive loss, while the encoders
    and the LLM (LoRA included) stay frozen.
    """

    default_trainable = DEFAULT_TRAINABLE["realign"]

    def __init__(self, model, args: MeraSFTConfig, train_dataset, processor, **kwargs):
        if kwargs.get("peft_config") is not None:
            raise ValueError("RealignTrainer trains connectors only; it takes no peft_config")
        not_connectors = [spec for spec in args.trainable or [] if not spec.startswith("connector")]
        if not_connectors:
            raise ValueError(f"RealignTrainer trains connectors only; args.trainable also names {not_connectors}")
        super().__init__(model, args, train_dataset, processor, **kwargs)
