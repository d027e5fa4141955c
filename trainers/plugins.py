"""
The plug-in API of the stage loop (`trainers.stage.run_stage`): a continual-learning method is a list of
`StagePlugin`s, and each hook may change the stage's data, its PEFT config, its trainable parts, its loss
(`extra_loss`), or the model after a phase. The loop's state during a stage is a `StageContext`.

A plug-in with state (a Fisher matrix, a router's samples) returns it from `state_dict()`; it is saved with the
stage (`plugins/NAME.json`, `plugins/NAME.safetensors`), where the next stage's plug-in finds it.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset

from modeling_mera import MeraProcessor

from .data import ReplayBuffer
from .settings import StageSettings
from .sft import DEFAULT_TRAINABLE

__all__ = ["HOOKS", "StageContext", "StagePlugin", "StageSettings"]

# The hooks the stage loop calls on every plug-in, in the order a stage reaches them.
HOOKS = ("before_stage", "configure_finetune", "after_finetune", "after_stage")


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
    finetune_trainable: list[str] = field(default_factory=lambda: list(DEFAULT_TRAINABLE["finetune"]))
    peft_config: Any = None
    previous_llm_state: dict | None = None
    log: dict = field(default_factory=dict)
    adapter_format: Any = None
    """Set by a plug-in whose adapters stay beside the LLM (a `trainers.checkpoint.AdapterFormat`): the loop then
    neither folds nor unloads them, and the stage is saved and loaded through it."""
    task: str = ""
    """The task this stage learns (the modality's name in MERA's setting)."""
    new_modality: bool = True
    """Whether this stage added its modality (False: it adds a task on a modality learnt before)."""
    tasks: list[str] = field(default_factory=list)
    """Every task learnt so far, this stage's last."""


class StagePlugin:
    """
    A named piece of a continual-learning method; every hook is a no-op unless overridden.

    `supports_realign = False` marks a method that a realign step cannot follow (the registry refuses
    `realign_ratio`); `supports_task_stages = False` one that has no meaning when a stage adds a task on a modality
    learnt before (the run refuses such a plan before training, the stage loop such a stage).
    """

    name = "plugin"
    supports_realign = True
    supports_task_stages = True

    def before_stage(self, ctx: StageContext):
        """After the new modality is added, before any training."""

    def configure_finetune(self, ctx: StageContext):
        """Change the fine-tuning phase: `ctx.finetune_dataset`, `ctx.peft_config`, `ctx.finetune_trainable`."""

    def after_finetune(self, ctx: StageContext):
        """Right after fine-tuning (the model may still carry its LoRA adapter): e.g. merge."""

    def after_stage(self, ctx: StageContext):
        """After the adapter is folded into the LLM: e.g. realign."""

    def fingerprint(self, stage: int) -> dict | None:
        """
        What this plug-in does to stage `stage`, as JSON: `None` when it leaves the stage exactly as plain
        fine-tuning does (so `mera study` may reuse the stage across methods). By default: its class and settings.
        """
        settings = {key: value for key, value in vars(self).items() if not key.startswith("_")}
        return {"plugin": f"{type(self).__module__}.{type(self).__qualname__}", "settings": settings}

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
