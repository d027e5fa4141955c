"""
Every setting of a run, declared once: `StageSettings` (how one stage trains, read by the stage loop and its
plug-ins), `ContinualConfig` (a whole run: the stage settings plus the stages, the method and evaluation), and
`ModalitySpec` (the modality a stage adds, or the task it adds on a modality learnt before). YAML files set them
and the command line overrides them (`TrlParser`).

This module imports no torch, so that `--help` of the entry points stays fast.
"""

import json
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UserError
from .evaluation.judges import DEFAULT_MAX_FAILURE_RATE

# The per-phase settings a command line reaches by name (`--finetune_learning_rate 1e-4`): `{phase}_{field}` sets
# the field of the phase's `MeraSFTConfig`. Every other MeraSFTConfig field goes into `{phase}_args`.
PHASES = ("pretrain", "finetune", "realign")
PHASE_FIELDS = {
    "learning_rate": "Learning rate",
    "per_device_train_batch_size": "Batch size per device",
    "num_train_epochs": "Epochs",
    "gradient_accumulation_steps": "Gradient accumulation steps",
}
PHASE_NAMES = {"pretrain": "connector pre-training", "finetune": "fine-tuning", "realign": "realigning"}


def _phase_field(phase: str, name: str, help_text: str | None = None):
    help_text = help_text or f"{PHASE_FIELDS[name]} of {PHASE_NAMES[phase]}"
    return field(default=None, metadata={"help": f"{help_text} (unset: the paper's, Table 9)."})


def _phase_args_field(phase: str):
    return field(
        default=None,
        metadata={
            "help": f"Further MeraSFTConfig fields of {PHASE_NAMES[phase]}, as a dict (YAML) or JSON (command line: "
            f"--{phase}_args '{{\"warmup_steps\": 0.1}}'). Fields with their own setting ({phase}_learning_rate, "
            "...) are set there, not here."
        },
    )


@dataclass
class ModalitySpec:
    """
    What a stage learns: the modality it adds (`MeraForCausalLM.add_modality` arguments plus its feature
    processor), or, when the model has learnt that modality already, the task (`task`) it adds on it.
    """

    name: str
    kind: str | None = None
    encoder_config: Any = None
    encoder_weights: str | None = None
    connector: dict | None = None
    feature_processor: Any = None
    """A transformers image processor / feature extractor, or a Hub id or folder to load one from."""
    options: dict = field(default_factory=dict)
    """Further `MeraModalityConfig` fields (feature_layer, num_frames, max_audio_seconds, ...)."""
    task: str | None = None
    """The task (domain, ability) the stage learns; by default the modality's name. A stage on a modality the
    model has learnt already adds this task only: no new encoder or connector (the fields above go unused)."""

    @property
    def task_name(self) -> str:
        return self.task or self.name


@dataclass
class StageSettings:
    """
    How one stage trains: each phase's `MeraSFTConfig` settings, the LoRA shape, 4-bit fine-tuning, the replay ratio.
    Unset per-phase fields keep the paper's values (Table 9); the LoRA shape defaults to the paper's (r = alpha = 128).
    Field names follow TRL's `ModelConfig` (`lora_r`, `load_in_4bit`, ...) where they mean the same.
    """

    pretrain_learning_rate: float | None = _phase_field("pretrain", "learning_rate")
    pretrain_per_device_train_batch_size: int | None = _phase_field("pretrain", "per_device_train_batch_size")
    pretrain_num_train_epochs: float | None = _phase_field("pretrain", "num_train_epochs")
    pretrain_gradient_accumulation_steps: int | None = _phase_field("pretrain", "gradient_accumulation_steps")
    pretrain_args: dict | str | None = _phase_args_field("pretrain")
    finetune_learning_rate: float | None = _phase_field("finetune", "learning_rate")
    finetune_connector_learning_rate: float | None = _phase_field(
        "finetune", "connector_learning_rate", "Learning rate of the new connector during fine-tuning"
    )
    finetune_per_device_train_batch_size: int | None = _phase_field("finetune", "per_device_train_batch_size")
    finetune_num_train_epochs: float | None = _phase_field("finetune", "num_train_epochs")
    finetune_gradient_accumulation_steps: int | None = _phase_field("finetune", "gradient_accumulation_steps")
    finetune_args: dict | str | None = _phase_args_field("finetune")
    realign_learning_rate: float | None = _phase_field("realign", "learning_rate")
    realign_per_device_train_batch_size: int | None = _phase_field("realign", "per_device_train_batch_size")
    realign_num_train_epochs: float | None = _phase_field("realign", "num_train_epochs")
    realign_gradient_accumulation_steps: int | None = _phase_field("realign", "gradient_accumulation_steps")
    realign_args: dict | str | None = _phase_args_field("realign")
    use_lora: bool = field(default=True, metadata={"help": "Fine-tune the LLM with LoRA (else every weight)."})
    lora_r: int = field(default=128, metadata={"help": "LoRA rank (paper: 128)."})
    lora_alpha: int = field(default=128, metadata={"help": "LoRA alpha (paper: 128)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout (paper: 0.05)."})
    lora_target_modules: list[str] | None = field(
        default=None,
        metadata={"help": "Names of the LLM's linear layers LoRA adapts (unset: every one, as in the paper)."},
    )
    use_rslora: bool = field(default=False, metadata={"help": "Rank-stabilised LoRA: scaling lora_alpha/sqrt(r)."})
    load_in_4bit: bool = field(
        default=False,
        metadata={
            "help": "QLoRA: hold the LLM's linear layers in 4 bits (bitsandbytes) while LoRA fine-tunes them; the "
            "stage's weights stay in `dtype` and the merge runs on them. Needs a CUDA GPU and bitsandbytes."
        },
    )
    bnb_4bit_quant_type: str = field(
        default="nf4", metadata={"help": "4-bit quantization type.", "choices": ["nf4", "fp4"]}
    )
    use_bnb_nested_quant: bool = field(default=False, metadata={"help": "Quantize the 4-bit scales too."})
    replay_ratio: float = field(
        default=10.0,
        metadata={"help": "Percent of each stage's data kept for replay: r of 'replay' and 'mera', the realign pool."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of training, replay sampling and data order."})
    pretrain_connector: str = field(
        default="auto",
        metadata={
            "help": "Connector pre-training: 'auto' when the stage adds its modality (a stage adding a task on a "
            "modality learnt before keeps its trained connector), 'always' or 'never'. It trains on the stage's "
            "captions, or on all its samples with media when it has none (QA-only data).",
            "choices": ["auto", "always", "never"],
        },
    )
    feature_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder of a disk cache of frozen-encoder outputs (trainers.data.feature_cache): each media item "
            "is encoded once, not once per epoch and phase. Exact; keyed by the encoder's weights and the "
            "preprocessing. Unset: off (at paper scale it costs ~1.2 MB per CLIP-336 image in bf16)."
        },
    )
    feature_cache_gb: float = field(
        default=2.0, metadata={"help": "Size limit of the feature cache, in GiB; the oldest entries go first."}
    )

    def __post_init__(self):
        if self.feature_cache_gb <= 0:
            raise ValueError(f"feature_cache_gb must be positive, got {self.feature_cache_gb}")
        for phase in PHASES:
            setattr(self, f"{phase}_args", _phase_args(phase, getattr(self, f"{phase}_args")))
        if self.lora_r < 1 or self.lora_alpha <= 0 or not 0 <= self.lora_dropout < 1:
            raise ValueError(
                f"LoRA needs lora_r >= 1, lora_alpha > 0 and 0 <= lora_dropout < 1; got {self.lora_r}, "
                f"{self.lora_alpha}, {self.lora_dropout}"
            )
        if self.load_in_4bit and not self.use_lora:
            raise ValueError(
                "load_in_4bit: true contradicts use_lora: false: 4-bit weights cannot be trained, so 4-bit "
                "fine-tuning trains LoRA adapters on them (QLoRA); set use_lora: true or load_in_4bit: false"
            )
        if self.bnb_4bit_quant_type not in ("nf4", "fp4"):
            raise ValueError(f"bnb_4bit_quant_type must be 'nf4' or 'fp4', got {self.bnb_4bit_quant_type!r}")
        if self.pretrain_connector not in ("auto", "always", "never"):
            raise ValueError(
                f"pretrain_connector must be 'auto', 'always' or 'never', got {self.pretrain_connector!r}"
            )

    def phase_overrides(self, phase: str) -> dict:
        """The `MeraSFTConfig` fields this run sets for `phase`: its `{phase}_args`, then its named fields."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; expected one of {list(PHASES)}")
        named = {
            name: getattr(self, f"{phase}_{name}")
            for name in (*PHASE_FIELDS, "connector_learning_rate")
            if getattr(self, f"{phase}_{name}", None) is not None
        }
        return {**(getattr(self, f"{phase}_args") or {}), **named}

    def lora_settings(self) -> dict:
        """The LoRA shape as `trainers.sft.llm_lora_config` takes it."""
        return {
            "r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "lora_dropout": self.lora_dropout,
            "use_rslora": self.use_rslora,
            "target_modules": self.lora_target_modules,
        }


def _phase_args(phase: str, value) -> dict | None:
    """`{phase}_args` as a dict: parsed from JSON (the command line), checked against the phase's named fields."""
    name = f"{phase}_args"
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name} must be a JSON object such as '{{\"warmup_steps\": 0.1}}': {error}") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a dict of MeraSFTConfig fields, got {type(value).__name__} {value!r}")
    named = [key for key in value if key in PHASE_FIELDS or key == "connector_learning_rate"]
    if named:
        raise ValueError(
            f"{name} sets {named}, which have their own settings: use "
            + ", ".join(f"{phase}_{key}" for key in named)
            + " instead (one setting, one place)"
        )
    return dict(value)


MODALITY_KEYS = {
    "name",
    "kind",
    "encoder_config",
    "encoder_weights",
    "connector",
    "feature_processor",
    "options",
    "task",
}
MODALITY_DATA_KEYS = {"train", "test"}


@dataclass
class ContinualConfig(StageSettings):
    """
    Everything a continual run needs; YAML files set these fields and the command line overrides them. The fields
    of `StageSettings` (how each stage trains) come first and are declared there only; `stage_settings()` hands
    them to the stage loop.
    """

    language_model: str = field(default="", metadata={"help": "Hub id or folder of the causal LM to start from."})
    modalities: list[dict] | None = field(
        default=None,
        metadata={
            "help": "The stages in sequential order, each a dict: its modality's name, kind, encoder_weights or "
            "encoder_config, connector, feature_processor, options; its task (MLLM-CL's setting: a stage may add a "
            "task on a modality an earlier stage learnt, naming that modality and the task); and train / test "
            "(files relative to data_root)."
        },
    )
    output_dir: str = field(default="runs/continual", metadata={"help": "Where stages, scores and reports go."})
    experts_dir: str | None = field(
        default=None,
        metadata={"help": "Where single-modality experts are trained/read (default: output_dir/experts)."},
    )
    data_root: str = field(default=".", metadata={"help": "Folder the modalities' train/test files are relative to."})
    order: str = field(default="sequential", metadata={"help": "'sequential' (as listed) or 'reverse'."})
    method: str = field(
        default="mera",
        metadata={
            "help": "Continual-learning method: fine_tuning, replay, ewc, eproj, pathweave, mera, merge_only, "
            "realign_only, mr_lora, or one registered with trainers.methods.register_method."
        },
    )
    realign_ratio: float | None = field(
        default=None,
        metadata={
            "help": "Add MERA's realign step on R%% of every stage's data after any method. Replay and realign draw "
            "independently: the replay buffer keeps max(replay_ratio, realign_ratio)%% of each stage.",
            "aliases": ["--realign"],
        },
    )
    method_args: dict | None = field(
        default=None,
        metadata={
            "help": "The method's own settings, keyword arguments of its plug-ins (ewc: ewc_lambda, fisher_percent, "
            "decay; mr_lora: router_samples, ...)."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "dtype the LLM is loaded in (float32, bfloat16, ...)."})
    use_chat_template: bool = field(default=False, metadata={"help": "Wrap prompts in the LLM's chat template."})
    judge: str = field(default="match", metadata={"help": "QA judge: 'match' (offline) or 'gpt'."})
    max_judge_failure_rate: float = field(
        default=DEFAULT_MAX_FAILURE_RATE,
        metadata={
            "help": "Share of a QA test set's verdicts that may fail (judge server errors, unparsable replies); "
            "above it the run stops with a message after scoring what it could, and nothing failed is cached."
        },
    )
    judge_args: dict | None = field(
        default=None,
        metadata={
            "help": "Settings of the 'gpt' judge: model (paper: gpt-4o-mini), base_url (any OpenAI-compatible "
            "server, e.g. a local vLLM), system_prompt, user_prompt (a template of {question}, {answer} and "
            "{prediction}), concurrency, retries, temperature, timeout, cache_file. The key comes from OPENAI_API_KEY."
        },
    )
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size of evaluation's greedy decoding."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per test answer."})
    test_limit: int | None = field(default=None, metadata={"help": "Evaluate at most this many samples per file."})
    train_experts: bool = field(default=True, metadata={"help": "Train missing single-modality experts."})
    smoke_test: bool = field(
        default=False,
        metadata={
            "help": "A run that only checks that every step works (tiny data, short training): its score matrix, "
            "reports, plots and model cards say 'smoke test — figures are not meaningful'. `mera demo --quick` sets "
            "it."
        },
    )
    push_to_hub: bool = field(
        default=False,
        metadata={
            "help": "Push each stage to the Hub repo `hub_model_id` as it finishes: branch stage-i, main follows the "
            "latest (see trainers.hub). The token comes from HF_TOKEN or `hf auth login`. A failed push is retried, "
            "then reported without stopping the run; `mera push OUTPUT_DIR REPO_ID` pushes what is missing later."
        },
    )
    hub_model_id: str | None = field(
        default=None, metadata={"help": "The Hub repo id (org/name) push_to_hub pushes to."}
    )
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Create the hub_model_id repo private (default: the Hub's default)."}
    )
    validate_media: str = field(
        default="decode",
        metadata={
            "help": "How every media file is checked before the run starts: 'decode' reads each one (a corrupt "
            "image is caught before training), 'exists' only checks that it is there and not empty (faster)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.order not in ("sequential", "reverse"):
            raise UserError(f"order must be 'sequential' or 'reverse', got {self.order!r}")
        if self.validate_media not in ("decode", "exists"):
            raise UserError(f"validate_media must be 'decode' or 'exists', got {self.validate_media!r}")
        for index, modality in enumerate(self.modalities or []):
            if not isinstance(modality, dict):
                raise UserError(f"modalities[{index}]: expected a mapping (name, train, test, ...), got {modality!r}")
            unknown = sorted(set(modality) - MODALITY_KEYS - MODALITY_DATA_KEYS)
            if unknown:
                raise UserError(
                    f"modalities[{index}] ({modality.get('name')!r}): unknown keys {unknown}; "
                    f"known keys are {sorted(MODALITY_KEYS | MODALITY_DATA_KEYS)}"
                )
            for key in ("name", "train", "test"):
                if not modality.get(key):
                    raise UserError(f"modalities[{index}]: '{key}' is required")
        from .evaluation.judges import check_judge_args  # no torch there

        check_judge_args(self.judge, self.judge_args)
        if not isinstance(self.push_to_hub, bool):
            raise UserError(
                f"push_to_hub is a boolean, as in transformers' TrainingArguments, got {self.push_to_hub!r}; give the "
                "repo id as hub_model_id (push_to_hub: true, hub_model_id: org/name)"
            )
        if self.push_to_hub and not self.hub_model_id:
            raise UserError("push_to_hub: true needs hub_model_id, the Hub repo id (org/name) to push to")
        if self.hub_model_id is not None:
            from huggingface_hub.utils import validate_repo_id

            try:
                validate_repo_id(self.hub_model_id)
            except ValueError as error:
                raise UserError(f"hub_model_id must be a Hub repo id like 'org/name': {error}") from None

    def stage_settings(self) -> StageSettings:
        """
        The stage loop's settings: this config's `StageSettings` fields, with the replay buffer keeping the larger
        of `replay_ratio` and `realign_ratio` (replay and realign then draw their own shares from it).
        """
        settings = {f.name: getattr(self, f.name) for f in fields(StageSettings)}
        # A float either way, so that 10 and 10.0 give one stage fingerprint (`mera study`).
        settings["replay_ratio"] = float(max(self.replay_ratio, self.realign_ratio or 0.0))
        return StageSettings(**settings)
