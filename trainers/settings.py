"""
Every setting of a run, declared once: `StageSettings` (how one stage trains, read by the stage loop and its
plug-ins), `ContinualConfig` (a whole run: the stage settings plus the modalities, the method and evaluation), and
`ModalitySpec` (a modality a stage adds). YAML files set them and the command line overrides them (`TrlParser`).

This module imports no torch, so that `--help` of the entry points stays fast.
"""

from dataclasses import dataclass, field, fields
from typing import Any

# The paper's LoRA shape (r = alpha = 128); a config's `lora` overrides single keys of it.
PAPER_LORA = {"r": 128, "lora_alpha": 128, "lora_dropout": 0.05}


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
    """How one stage trains: `MeraSFTConfig` overrides per phase, the LoRA shape, the replay ratio (paper defaults)."""

    pretrain_args: dict | None = field(default=None, metadata={"help": "MeraSFTConfig overrides, pre-training."})
    finetune_args: dict | None = field(default=None, metadata={"help": "MeraSFTConfig overrides, fine-tuning."})
    realign_args: dict | None = field(default=None, metadata={"help": "MeraSFTConfig overrides, realigning."})
    lora: dict | None = field(
        default=None, metadata={"help": "LoRA settings over the paper's (r=128, lora_alpha=128, lora_dropout=0.05)."}
    )
    use_lora: bool = field(default=True, metadata={"help": "Fine-tune the LLM with LoRA (else every weight)."})
    replay_ratio: float = field(
        default=10.0,
        metadata={"help": "Percent of each stage's data kept for replay: r of 'replay' and 'mera', the realign pool."},
    )
    seed: int = field(default=42, metadata={"help": "Seed of training, replay sampling and data order."})

    def __post_init__(self):
        self.lora = {**PAPER_LORA, **(self.lora or {})}


MODALITY_KEYS = {"name", "kind", "encoder_config", "encoder_weights", "connector", "feature_processor", "options"}
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
            "help": "The modalities in sequential order, each a dict: name, kind, encoder_weights or encoder_config, "
            "connector, feature_processor, options, and train / test (files relative to data_root)."
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
            "help": "Add MERA's realign step on R%% of every stage's data after any method (R <= replay_ratio).",
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
    eval_batch_size: int = field(default=16, metadata={"help": "Batch size of evaluation's greedy decoding."})
    max_new_tokens: int = field(default=32, metadata={"help": "Tokens generated per test answer."})
    test_limit: int | None = field(default=None, metadata={"help": "Evaluate at most this many samples per file."})
    train_experts: bool = field(default=True, metadata={"help": "Train missing single-modality experts."})
    push_to_hub: str | None = field(
        default=None,
        metadata={
            "help": "Hub repo id (org/name) to push each stage to as it finishes: branch stage-i, main follows the "
            "latest (see trainers.hub). The token comes from HF_TOKEN or `hf auth login`. A failed push is retried, "
            "then reported without stopping the run; `mera push OUTPUT_DIR REPO_ID` pushes what is missing later."
        },
    )
    hub_private_repo: bool | None = field(
        default=None, metadata={"help": "Create the push_to_hub repo private (default: the Hub's default)."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.order not in ("sequential", "reverse"):
            raise ValueError(f"order must be 'sequential' or 'reverse', got {self.order!r}")
        for index, modality in enumerate(self.modalities or []):
            unknown = sorted(set(modality) - MODALITY_KEYS - MODALITY_DATA_KEYS)
            if unknown:
                raise ValueError(
                    f"modalities[{index}] ({modality.get('name')!r}): unknown keys {unknown}; "
                    f"known keys are {sorted(MODALITY_KEYS | MODALITY_DATA_KEYS)}"
                )
            for key in ("name", "train", "test"):
                if not modality.get(key):
                    raise ValueError(f"modalities[{index}]: '{key}' is required")
        if self.push_to_hub is not None:
            from huggingface_hub.utils import validate_repo_id

            try:
                validate_repo_id(self.push_to_hub)
            except ValueError as error:
                raise ValueError(f"push_to_hub must be a Hub repo id like 'org/name': {error}") from None

    def stage_settings(self) -> StageSettings:
        """The stage loop's settings: this config's `StageSettings` fields."""
        return StageSettings(**{f.name: getattr(self, f.name) for f in fields(StageSettings)})
