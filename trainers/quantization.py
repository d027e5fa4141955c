"""
QLoRA for a stage's fine-tuning: the LLM's linear layers are 4-bit (bitsandbytes NF4) while the adapters train, and
full precision everywhere else, so that MERA's merge stays exact.

    θ(i-1) (bf16/fp32) ─► adapters wrapped around the full-precision layers (LoRA, PathWeave, MR-LoRA)
                       ─► quantize_llm: each base linear layer swapped for a 4-bit copy; the originals kept on the CPU
                       ─► fine-tune (the adapters and the new connector train; the 4-bit base is frozen)
                       ─► restore_full_precision: the original layers put back, bit-identical
                       ─► merge θ(i-1) + (1/i)·ΔW on the full-precision weights; save

The base weights are frozen while the adapters train, so putting the kept originals back loses nothing: the merge,
EWC's anchor and Fisher, and the adapters PathWeave and MR-LoRA keep beside the LLM all see the same full-precision
weights as a run without quantization. Only the adapters' training saw the 4-bit weights (as in any QLoRA).
docs/merge.md says the same for the merge.
"""

from torch import nn

ADAPTER_SEGMENTS = ("lora_", "pathweave_", "modules_to_save", "original_module", "router")


def quantization_config(load_in_4bit: bool, dtype: str, quant_type: str = "nf4", nested: bool = False):
    """
    The `BitsAndBytesConfig` of a stage's 4-bit fine-tuning (None without `load_in_4bit`), built by TRL's
    `get_quantization_config` from a `ModelConfig` with the same field names as the stage settings.
    """
    if not load_in_4bit:
        return None
    from trl import ModelConfig, get_quantization_config

    compute_dtype = "bfloat16" if dtype in (None, "auto") else dtype
    return get_quantization_config(
        ModelConfig(
            dtype=compute_dtype, load_in_4bit=True, bnb_4bit_quant_type=quant_type, use_bnb_nested_quant=nested
        )
    )


def check_quantization_available():
    """
    Raise a `ValueError` saying what is missing when 4-bit fine-tuning cannot run here: bitsandbytes' 4-bit kernels
    for training need a CUDA GPU (and the bitsandbytes package: `pip install 'mera-mcl[quant]'`).
    """
    import importlib.util

    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("a CUDA GPU (torch.cuda.is_available() is False on this machine)")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing.append("the bitsandbytes package (pip install 'mera-mcl[quant]')")
    if missing:
        raise ValueError(
            "load_in_4bit: 4-bit (QLoRA) fine-tuning needs " + " and ".join(missing) + "; set load_in_4bit to false "
            "to fine-tune the LLM in its dtype"
        )


def _is_base_linear(name: str, module: nn.Module) -> bool:
    return type(module) is nn.Linear and not any(part.startswith(ADAPTER_SEGMENTS) for part in name.split("."))


def quantize_llm(language_model: nn.Module, config, device) -> dict[nn.Module, nn.Linear]:
    """
    Swap every base linear layer of `language_model` (not the adapters' own layers, not the LM head) for a 4-bit
    `bitsandbytes.nn.Linear4bit` on `device`, quantized from its weights with `config` (a `BitsAndBytesConfig`).
    Returns the original layers, moved to the CPU, keyed by the 4-bit layer that replaced each: give them to
    `restore_full_precision`.
    """
    import bitsandbytes as bnb

    kept = {}
    for parent_name, parent in list(language_model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if not _is_base_linear(f"{parent_name}.{child_name}", child):
                continue
            quantized = bnb.nn.Linear4bit(
                child.in_features,
                child.out_features,
                bias=child.bias is not None,
                compute_dtype=config.bnb_4bit_compute_dtype,
                compress_statistics=config.bnb_4bit_use_double_quant,
                quant_type=config.bnb_4bit_quant_type,
                quant_storage=config.bnb_4bit_quant_storage,
                device="meta",
            )
            quantized.weight = bnb.nn.Params4bit(
                child.weight.detach().to("cpu", copy=True),
                requires_grad=False,
                compress_statistics=config.bnb_4bit_use_double_quant,
                quant_type=config.bnb_4bit_quant_type,
                quant_storage=config.bnb_4bit_quant_storage,
                module=quantized,
            )
            if child.bias is not None:
                quantized.bias = nn.Parameter(child.bias.detach().clone(), requires_grad=False)
            quantized = quantized.to(device)  # Params4bit quantizes when it first moves to a device
            setattr(parent, child_name, quantized)
            kept[quantized] = child.to("cpu")
    if not kept:
        raise ValueError("load_in_4bit: the language model has no linear layer to quantize")
    return kept


def restore_full_precision(model: nn.Module, kept: dict[nn.Module, nn.Linear]) -> int:
    """
    Put back, in `model` (which may since have been wrapped, e.g. in a `PeftModel`), every original layer that
    `quantize_llm` replaced, on the device its 4-bit copy was on. Returns how many layers were restored; every kept
    layer must be found.
    """
    restored = 0
    for parent in list(model.modules()):
        for child_name, child in list(parent.named_children()):
            if child in kept:
                device = next(child.parameters()).device
                setattr(parent, child_name, kept[child].to(device))
                restored += 1
    if restored != len(kept):
        raise RuntimeError(f"restored {restored} of the {len(kept)} quantized layers; the model lost some of them")
    return restored
