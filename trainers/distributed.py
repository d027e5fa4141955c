"""
Several processes and sharded weights: what the stage loop needs beyond one device.

- `process_state()`: accelerate's `PartialState`, honouring a CPU launch (`ACCELERATE_USE_CPU`) as the Trainer does.
- `shards_parameters(accelerator)`: whether a Trainer's parameters are split across processes while it trains
  (FSDP, DeepSpeed ZeRO-3). DDP and ZeRO-2 keep a whole copy of every weight on every process.
- `gathered_state_dict(model)`: every weight of a model in full, on every process, whatever shards it.

The parts of a stage that read or write whole weights (MERA's merge, the realign's freezing, EWC's Fisher and
anchor, saving a stage) run on an unsharded model: `MeraSFTTrainer.train` hands back a whole copy of the model it
trained when its parameters were sharded (see `trainers.sft`).
"""

import os

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, parse_flag_from_env
from torch import nn


def process_state() -> PartialState:
    """
    The process group's state. A bare `PartialState()` reads a CPU launch with several processes as a single
    process (it only looks for accelerators); `TrainingArguments` and `AcceleratorState` honour `ACCELERATE_USE_CPU`,
    and so does this, so that whichever is created first, every part of a run sees the same processes.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))


def close_process_group():
    """
    Wait for every process, then close the process group. A gloo group still open when the interpreter exits can
    abort a process whose work is done ("terminate called without an active exception", exit code -6), so each
    entry point closes it on its way out.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def shards_parameters(accelerator) -> bool:
    """Whether `accelerator` splits the parameters themselves across processes (FSDP, DeepSpeed ZeRO-3)."""
    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        return accelerator.state.deepspeed_plugin.zero_stage == 3
    return False


def sharded_launch() -> str | None:
    """
    'FSDP' or 'DeepSpeed ZeRO-3' when this process was started by `accelerate launch` with a config that shards
    parameters, else None: read from the launcher's environment, so that settings can be checked before any model
    or Trainer exists.
    """
    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return "FSDP"
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") and os.environ.get("ACCELERATE_DEEPSPEED_ZERO_STAGE") == "3":
        return "DeepSpeed ZeRO-3"
    return None


def _is_fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    return any(isinstance(module, (FSDPModule, FullyShardedDataParallel)) for module in model.modules())


def _is_zero3(model: nn.Module) -> bool:
    return any(hasattr(parameter, "ds_id") for parameter in model.parameters())


@torch.no_grad()
def gathered_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """
    The full state dict of `model` on every process, under the names of the unwrapped model: gathered from the
    shards under FSDP (1 or 2) and DeepSpeed ZeRO-3, the plain `state_dict()` otherwise. Every process must call it.
    """
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    if _is_zero3(model):
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
            return {name: value.detach().clone() for name, value in model.state_dict().items()}
    return model.state_dict()
