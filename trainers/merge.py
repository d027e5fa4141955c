"""
MERA's merge step: fold one stage's LLM update into the LLM with the running-average coefficient

    θLLM(i) = (i-1)/i · θLLM(i-1) + 1/i · θLLM(i,vanilla)

where θLLM(i-1) is the LLM before stage i and θLLM(i,vanilla) the LLM after stage i's fine-tuning. Only the LLM (every
parameter under `model.language_model.` and `lm_head.`) is averaged; encoders and connectors are never averaged: each
modality keeps the connector that was trained for it.

Laid out like PEFT's `merge_utils`: small pure tensor functions (`stage_weight`, `running_average`,
`weighted_delta_sum`), then one model-level function per case:

- `merge_stage_adapter`: the LLM was trained with LoRA. θ(i,vanilla) = θ(i-1) + ΔW_i, so the formula is
  θ(i-1) + (1/i)·ΔW_i: the adapter is scaled by 1/i with PEFT's `set_scale` and folded with `merge_and_unload`.
- `average_llm_weights` (with `llm_state_dict` to snapshot θ(i-1) first): the LLM was fully fine-tuned; every LLM
  parameter, embeddings, norms and LM head included, is averaged in place.
- `merge_adapters`: the general form, several adapters with one weight each, folded exactly (`"exact"`) or through
  PEFT's `add_weighted_adapter` (`"cat"`, `"svd"`, `"linear"`, `"ties"`, `"dare_*"`, ...).

Why PEFT's `combination_type="linear"` is not MERA's merge
---------------------------------------------------------
`add_weighted_adapter(..., combination_type="linear")` does not average the adapters' updates ΔWᵢ = sᵢ·Bᵢ·Aᵢ
(sᵢ = lora_alpha / r). It averages the two factors separately, each with √(wᵢ·sᵢ), into a new adapter of scale 1:

    A = Σᵢ √(wᵢsᵢ)·Aᵢ,   B = Σᵢ √(wᵢsᵢ)·Bᵢ,   B·A = Σᵢ wᵢ·ΔWᵢ + Σᵢ≠ⱼ √(wᵢsᵢwⱼsⱼ)·Bᵢ·Aⱼ

The cross terms Bᵢ·Aⱼ pair one adapter's output directions with another's input directions; they are not small in
general (see tests/test_merge.py, where they change the merged weights by far more than 1e-3 relative). `ties`,
`dare_linear`, `dare_ties` and `magnitude_prune` combine A and B the same way and add pruning (and, for dare,
randomness) on top. With a single adapter there are no cross terms and "linear" is exact, which is why
MERA's own step (one new adapter per stage) can use `set_scale(adapter, 1/i)` + `merge_and_unload()`. Whenever
several adapters are combined, use `"exact"` (Σ wᵢ·ΔWᵢ added to the base weights) or `"cat"` (a new adapter of rank
Σ rᵢ whose product is Σ wᵢ·ΔWᵢ; plain LoRA only, since PEFT 0.21 over-scales a combination of rsLoRA adapters by
√rank); `"svd"` forms the exact sum and then truncates it to `svd_rank`. docs/merge.md has the full table.

Since each stage trains its adapter on the already merged base, chaining the stages gives
θLLM(n) = θLLM(0) + Σ_k (1/k)·ΔW_k: keeping every stage's adapter and merging them with weights 1, 1/2, ..., 1/n is
the same model, but only with an exact combination type.
"""

import numbers

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper, PeftType, TrainableTokensWrapper
from torch import nn

LLM_PREFIXES = ("model.language_model.", "lm_head.")
"""Parameter-name prefixes of the LLM inside a `MeraForCausalLM`."""
PEFT_PREFIX = "base_model.model."
"""What a `PeftModel` puts in front of the wrapped model's parameter names."""
PEFT_WRAPPER_SEGMENTS = ("base_layer", "original_module")
"""Name segments PEFT inserts between a wrapped module and its own parameters."""

COMBINATION_TYPES = {
    "exact": "exact: Σ wᵢ·ΔWᵢ added to the base weights",
    "cat": "exact: a new adapter of rank Σ rᵢ whose product is Σ wᵢ·ΔWᵢ",
    "svd": "truncated: Σ wᵢ·ΔWᵢ cut to svd_rank singular values",
    "linear": "approximate: A and B averaged separately, cross terms Bᵢ·Aⱼ (exact for one adapter)",
    "ties": "approximate: A and B pruned and sign-elected separately, cross terms",
    "ties_svd": "approximate: TIES on the ΔWᵢ, then truncated to svd_rank",
    "dare_linear": "approximate and random: A and B dropped-and-rescaled separately, cross terms",
    "dare_ties": "approximate and random: DARE then TIES on A and B separately, cross terms",
    "dare_linear_svd": "approximate and random: DARE on the ΔWᵢ, then truncated to svd_rank",
    "dare_ties_svd": "approximate and random: DARE + TIES on the ΔWᵢ, then truncated to svd_rank",
    "magnitude_prune": "approximate: A and B magnitude-pruned separately, cross terms",
    "magnitude_prune_svd": "approximate: magnitude pruning on the ΔWᵢ, then truncated to svd_rank",
}
"""Every `merge_adapters` combination type and whether its folded result equals Σ wᵢ·ΔWᵢ."""
PEFT_MISSCALED_OPTIONS = ("use_rslora", "lora_bias", "use_dora")
"""LoraConfig options that `add_weighted_adapter` (PEFT 0.21) ignores when it builds the combined adapter."""


# Pure tensor functions.


def stage_weight(stage: int) -> float:
    """MERA's weight of stage `stage`'s (1-based) vanilla model in the running average: 1/i."""
    if isinstance(stage, bool) or not isinstance(stage, numbers.Integral) or stage < 1:
        raise ValueError(
            f"stage must be an integer >= 1 (the 1-based index of the modality being learnt), got {stage!r}"
        )
    return 1.0 / int(stage)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """At least float32: half-precision weights are averaged in float32 and cast back once."""
    return torch.promote_types(dtype, torch.float32)


def running_average(previous: torch.Tensor, current: torch.Tensor, stage: int) -> torch.Tensor:
    """
    `(i-1)/i · previous + 1/i · current` for `i = stage`, computed in (at least) float32 and returned in `current`'s
    dtype and device. Stage 1 returns `current`'s values: there is nothing to average with yet.
    """
    weight = stage_weight(stage)
    if previous.shape != current.shape:
        raise ValueError(f"cannot average tensors of shapes {tuple(previous.shape)} and {tuple(current.shape)}")
    dtype = _compute_dtype(current.dtype)
    previous = previous.to(device=current.device, dtype=dtype)
    averaged = (1.0 - weight) * previous + weight * current.to(dtype)
    return averaged.to(current.dtype)


def weighted_delta_sum(deltas: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """
    Σ wᵢ·ΔWᵢ, the exact form of task arithmetic. Returned in (at least) float32, so that the caller adds it to a
    half-precision weight and rounds once.
    """
    if not deltas or len(deltas) != len(weights):
        raise ValueError(f"need one weight per delta and at least one delta; got {len(deltas)} and {len(weights)}")
    total = torch.zeros_like(deltas[0], dtype=_compute_dtype(deltas[0].dtype))
    for delta, weight in zip(deltas, weights):
        total += float(weight) * delta.to(total.dtype)
    return total


def _add_in_place(parameter: torch.Tensor, delta: torch.Tensor):
    """parameter += delta, summed in (at least) float32 and rounded to the parameter's dtype once."""
    dtype = _compute_dtype(parameter.dtype)
    parameter.copy_((parameter.to(dtype) + delta.to(device=parameter.device, dtype=dtype)).to(parameter.dtype))


# Which parameters are the LLM.


def unwrapped_name(name: str) -> str:
    """
    A parameter's name as the unwrapped `MeraForCausalLM` calls it: PEFT's `base_model.model.` prefix and its
    `.base_layer` / `.original_module` segments removed. Adapter parameters (`lora_A`, ...) keep their segments.
    """
    name = name.removeprefix(PEFT_PREFIX)
    return ".".join(part for part in name.split(".") if part not in PEFT_WRAPPER_SEGMENTS)


def is_llm_parameter(name: str) -> bool:
    """
    Whether parameter `name` of a `MeraForCausalLM` (or of a `PeftModel` around one) belongs to the LLM: everything
    under `model.language_model.` and `lm_head.`, LoRA adapter weights on those layers included.
    """
    return unwrapped_name(name).startswith(LLM_PREFIXES)


def _is_adapter_parameter(name: str) -> bool:
    """Whether `name` is a PEFT-added parameter (LoRA factors, trained `modules_to_save` copies, token deltas)."""
    return any(part.startswith("lora_") or part in ("modules_to_save", "token_adapter") for part in name.split("."))


def llm_parameter_names(model: nn.Module) -> list[str]:
    """The names (as `model.named_parameters()` gives them) of the LLM's parameters; a tied LM head appears once."""
    return [name for name, _ in model.named_parameters() if is_llm_parameter(name)]


def _base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if isinstance(model, PeftModel) else model


def _llm_base_parameters(model: nn.Module, remove_duplicate: bool = True) -> dict[str, nn.Parameter]:
    """The LLM's own (non-adapter) parameters keyed by their unwrapped names."""
    return {
        unwrapped_name(name): parameter
        for name, parameter in _base_model(model).named_parameters(remove_duplicate=remove_duplicate)
        if is_llm_parameter(name) and not _is_adapter_parameter(name)
    }


@torch.no_grad()
def llm_state_dict(model: nn.Module, device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
    """
    A detached copy of the LLM's weights θLLM, keyed by unwrapped parameter names: take it before a stage that fully
    fine-tunes the LLM, and pass it to `average_llm_weights` afterwards. For a `PeftModel` it holds the base weights
    (adapters excluded), i.e. θLLM(i-1) while the adapter is not merged. `device="cpu"` keeps the copy off the GPU.
    """
    return {
        name: parameter.detach().to(device=device if device is not None else parameter.device, copy=True)
        for name, parameter in _llm_base_parameters(model).items()
    }


def _check_previous_state(previous_llm_state: dict[str, torch.Tensor], model: nn.Module):
    """
    `previous_llm_state` must cover every LLM parameter with the same shape; extra keys may only be aliases of tied
    weights. Checked before any weight changes, so that a mismatch leaves the model as it was.
    """
    parameters = _llm_base_parameters(model)
    needed = set(parameters)
    known = set(_llm_base_parameters(model, remove_duplicate=False))
    missing = sorted(needed - set(previous_llm_state))
    extra = sorted(set(previous_llm_state) - known)
    if missing or extra:
        raise ValueError(
            "previous_llm_state does not match the model's LLM (take it with llm_state_dict(model) before the "
            f"stage): missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{' ...' if len(extra) > 5 else ''}"
        )
    for name, parameter in parameters.items():
        if previous_llm_state[name].shape != parameter.shape:
            raise ValueError(
                f"previous_llm_state[{name!r}] has shape {tuple(previous_llm_state[name].shape)} but the model's "
                f"parameter has {tuple(parameter.shape)}; did the vocabulary or the LLM change during the stage?"
            )


@torch.no_grad()
def _average_into(previous_llm_state: dict[str, torch.Tensor], model: nn.Module, stage: int):
    for name, parameter in _llm_base_parameters(model).items():
        parameter.copy_(running_average(previous_llm_state[name], parameter, stage))


def average_llm_weights(previous_llm_state: dict[str, torch.Tensor], model: nn.Module, stage: int) -> None:
    """
    MERA's merge for a fully fine-tuned LLM, in place: every LLM parameter (embeddings, norms and LM head included;
    a tied LM head once, with its embedding) becomes `(i-1)/i · previous + 1/i · current`. Encoders and connectors
    are left as trained.

    Args:
        previous_llm_state: θLLM(i-1), from `llm_state_dict(model)` taken before the stage trained.
        model: the `MeraForCausalLM` after the stage's fine-tuning, θ(i,vanilla); it becomes θ(i,merged).
        stage: i, the 1-based index of the stage (stage 1 leaves the model as it is).
    """
    stage_weight(stage)
    if isinstance(model, PeftModel):
        raise TypeError(
            "average_llm_weights averages plain weights, but the model still carries a PEFT adapter whose update "
            "is not in them; fold it with merge_stage_adapter(model, stage, previous_llm_state=...) instead"
        )
    _check_previous_state(previous_llm_state, model)
    _average_into(previous_llm_state, model, stage)


# LoRA: one stage's adapter, and the general weighted merge.


def _check_lora_adapters(peft_model: nn.Module, adapters: list[str]):
    if not isinstance(peft_model, PeftModel):
        raise TypeError(f"expected a peft.PeftModel carrying LoRA adapters, got {type(peft_model).__name__}")
    available = list(peft_model.peft_config)
    for adapter in adapters:
        if adapter not in available:
            raise ValueError(f"adapter {adapter!r} not found; the model carries adapters {available}")
        if peft_model.peft_config[adapter].peft_type != PeftType.LORA:
            raise ValueError(f"adapter {adapter!r} is {peft_model.peft_config[adapter].peft_type}, expected LORA")


def _lora_layers(peft_model: PeftModel, adapters: list[str]) -> list[tuple[str, LoraLayer]]:
    """The LoRA layers holding any of `adapters`, after checking that each can be folded as a plain scaled ΔW."""
    layers = []
    for name, module in peft_model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer) or not any(adapter in module.scaling for adapter in adapters):
            continue
        for adapter in adapters:
            if adapter in getattr(module, "lora_variant", {}):
                raise ValueError(
                    f"adapter {adapter!r} on {name} is a LoRA variant "
                    f"({type(module.lora_variant[adapter]).__name__}, e.g. DoRA) whose merge is not the linear "
                    "ΔW = scaling·B·A; it cannot be weight-averaged exactly. Train plain LoRA for MERA."
                )
            if adapter in module.merged_adapters:
                raise ValueError(f"adapter {adapter!r} is already merged into {name}; unmerge it first")
        layers.append((name, module))
    return layers


def _wrapper_adapters(module: nn.Module) -> set[str]:
    if isinstance(module, ModulesToSaveWrapper):
        return set(module.modules_to_save)
    if isinstance(module, TrainableTokensWrapper):
        return set(module.token_adapter.trainable_tokens_delta)
    return set()


def _auxiliary_wrappers(peft_model: PeftModel, adapters: list[str], wrapper_type: type) -> list[tuple[str, nn.Module]]:
    """PEFT's `modules_to_save` / `trainable_token_indices` wrappers of type `wrapper_type` that hold any adapter."""
    return [
        (name, module)
        for name, module in peft_model.get_base_model().named_modules()
        if isinstance(module, wrapper_type) and _wrapper_adapters(module) & set(adapters)
    ]


@torch.no_grad()
def merge_stage_adapter(
    peft_model: PeftModel,
    stage: int,
    adapter_name: str = "default",
    previous_llm_state: dict[str, torch.Tensor] | None = None,
) -> nn.Module:
    """
    MERA's merge for a LoRA-trained LLM: fold stage `stage`'s adapter into the LLM with weight 1/i and unload PEFT.

    The adapter was trained on θ(i-1), so θLLM(i,vanilla) = θLLM(i-1) + ΔW_i and the merge is θLLM(i-1) + (1/i)·ΔW_i.
    Every LoRA layer of the LLM gets `set_scale(adapter_name, 1/i)`; in PEFT 0.21 that sets scaling to
    1/i · lora_alpha / r (1/i · lora_alpha / √r with rsLoRA; per-layer alpha and r with `alpha_pattern` /
    `rank_pattern`): the factor multiplies the configured scale, not the current one (that would be `scale_layer`).
    PEFT's `merge_and_unload` then adds scaling·B·A (and scaling·lora_B.bias with `lora_bias`) to each base weight.
    LoRA only wraps linear layers, so the LLM's other parameters (embeddings, norms) are the same in θ(i-1) and
    θ(i,vanilla) and the formula holds for them as is.

    Parts that changed outside the adapter:
    - LLM modules trained through `modules_to_save` (e.g. the LM head) are averaged with their original copy.
    - LLM weights trained directly (unfrozen next to the adapter) overwrite θ(i-1), so the model alone cannot tell
      what to average them with: pass `previous_llm_state=llm_state_dict(peft_model)` taken before training, and
      every LLM base weight is averaged with it too.
    - Encoders, connectors and any LoRA on them are folded as trained (scale 1): each modality keeps its connector.

    Args:
        peft_model: the `PeftModel` around θ(i-1)'s `MeraForCausalLM` after stage i's fine-tuning.
        stage: i, the 1-based stage index; stage 1 merges the adapter at full scale (θ1,merged = θ1,vanilla).
        adapter_name: the stage's LoRA adapter; it must be the only adapter on the model.
        previous_llm_state: θLLM(i-1), only needed when LLM weights outside the adapter were trained.

    Returns:
        The unwrapped `MeraForCausalLM` with the merged LLM. Use the return value: PEFT's unload is not in place.
    """
    weight = stage_weight(stage)
    _check_lora_adapters(peft_model, [adapter_name])
    others = [name for name in peft_model.peft_config if name != adapter_name]
    if others:
        raise ValueError(
            f"merge_stage_adapter folds one adapter and unloads the model, which would drop adapters {others}; "
            "merge or delete them first (peft_model.delete_adapter(name))"
        )
    layers = _lora_layers(peft_model, [adapter_name])
    token_wrappers = _auxiliary_wrappers(peft_model, [adapter_name], TrainableTokensWrapper)
    llm_token_wrappers = [name for name, _ in token_wrappers if is_llm_parameter(name + ".")]
    if llm_token_wrappers:
        raise ValueError(
            f"trainable_token_indices on {llm_token_wrappers} cannot be weight-averaged; train those embeddings "
            "through modules_to_save or LoRA instead"
        )
    if previous_llm_state is not None:
        _check_previous_state(previous_llm_state, peft_model)
        _average_into(previous_llm_state, peft_model, stage)
    for name, wrapper in _auxiliary_wrappers(peft_model, [adapter_name], ModulesToSaveWrapper):
        if not is_llm_parameter(name + "."):
            continue
        originals = dict(wrapper.original_module.named_parameters())
        for parameter_name, parameter in wrapper.modules_to_save[adapter_name].named_parameters():
            key = unwrapped_name(f"{name}.{parameter_name}")
            previous = previous_llm_state[key] if previous_llm_state is not None else originals[parameter_name]
            parameter.copy_(running_average(previous, parameter, stage))
    for name, layer in layers:
        if is_llm_parameter(name + "."):
            layer.set_scale(adapter_name, weight)
    return peft_model.merge_and_unload(adapter_names=[adapter_name])


@torch.no_grad()
def _fold_exact(peft_model: PeftModel, adapters: list[str], weights: list[float]) -> nn.Module:
    """Add Σ wᵢ·ΔWᵢ (from each layer's `get_delta_weight`) to every LoRA layer's base weight; unload PEFT."""
    wrappers = _auxiliary_wrappers(peft_model, adapters, (ModulesToSaveWrapper, TrainableTokensWrapper))
    if wrappers:
        raise ValueError(
            f"combination_type='exact' folds LoRA updates only, but {[name for name, _ in wrappers]} were trained "
            "through modules_to_save / trainable_token_indices; merge those yourself or use merge_stage_adapter"
        )
    for name, layer in _lora_layers(peft_model, adapters):
        present = [(adapter, weight) for adapter, weight in zip(adapters, weights) if adapter in layer.scaling]
        base_layer = layer.get_base_layer()
        deltas = [layer.get_delta_weight(adapter) for adapter, _ in present]
        if not isinstance(getattr(base_layer, "weight", None), torch.Tensor) or (
            base_layer.weight.shape != deltas[0].shape or not base_layer.weight.dtype.is_floating_point
        ):
            raise ValueError(
                f"{name} ({type(layer).__name__}) has no plain floating-point weight of ΔW's shape (quantized or "
                "multi-weight layer); use one of PEFT's combination types or merge_and_unload instead"
            )
        _add_in_place(base_layer.weight, weighted_delta_sum(deltas, [weight for _, weight in present]))
        bias_deltas = [
            (layer.lora_B[adapter].bias * layer.scaling[adapter], weight)
            for adapter, weight in present
            if layer.lora_bias.get(adapter, False)
        ]
        if bias_deltas and base_layer.bias is None:
            raise ValueError(f"{name} has a LoRA bias (lora_bias=True) but its base layer has no bias to fold it into")
        if bias_deltas:
            _add_in_place(base_layer.bias, weighted_delta_sum(*map(list, zip(*bias_deltas))))
    return peft_model.unload()


def merge_adapters(
    peft_model: PeftModel,
    adapters: list[str],
    weights: list[float],
    combination_type: str = "exact",
    adapter_name: str = "merged",
    **kwargs,
) -> nn.Module:
    """
    Fold a weighted combination of LoRA adapters into the base weights and unload PEFT: the general form of MERA's
    merge, for users who want other merges (MERA's own step is `merge_stage_adapter`).

    | combination_type | folded update | equals Σ wᵢ·ΔWᵢ? |
    |---|---|---|
    | `exact` (default) | Σ wᵢ·ΔWᵢ from each layer's `get_delta_weight`, summed in float32 | yes |
    | `cat` | PEFT: new adapter of rank Σ rᵢ, A = [wᵢ·sᵢ·Aᵢ], B = [Bᵢ] | yes (plain LoRA, see below) |
    | `svd` | PEFT: Σ wᵢ·ΔWᵢ truncated to `svd_rank` (default: the largest rank) | only if its rank ≤ `svd_rank` |
    | `linear` | PEFT: A = Σ √(wᵢsᵢ)·Aᵢ, B = Σ √(wᵢsᵢ)·Bᵢ | no: cross terms Bᵢ·Aⱼ (yes for one adapter) |
    | `ties`, `magnitude_prune` | PEFT: A and B pruned (and sign-elected) separately | no: pruning + cross terms |
    | `dare_linear`, `dare_ties` | PEFT: A and B randomly dropped and rescaled separately | no: random + cross terms |
    | `*_svd` variants | PEFT: the pruned/dropped ΔWᵢ combined, then truncated to `svd_rank` | no |

    (sᵢ = lora_alpha / r of adapter i; ΔWᵢ = sᵢ·Bᵢ·Aᵢ.) PEFT combination types build a new adapter `adapter_name`
    with `add_weighted_adapter(adapters, weights, adapter_name, combination_type, **kwargs)` (kwargs: `svd_rank`,
    `density`, `majority_sign_method`, ...) and then fold only that one; their handling of `modules_to_save` is
    PEFT's (the active adapter's copy is kept). `dare_*` drop at random: seed torch first to reproduce a merge.
    Every type unloads all adapters: use the returned model.

    PEFT 0.21's `add_weighted_adapter` gives the new adapter the first adapter's `use_rslora`, `lora_bias` and
    `use_dora` while building it for plain LoRA, so with any of these it silently mis-scales the result (with rsLoRA
    by √rank, even for `cat`; huggingface/peft#3761). Such adapters are refused here for every PEFT type; `exact`
    handles rsLoRA and `lora_bias` (both are in `get_delta_weight` / `scaling`), and no type folds DoRA.

    Raises:
        ValueError: unknown combination type, missing or non-LoRA adapter, a weights/adapters length mismatch,
            `adapter_name` already taken, options given to `exact`, or a layer `exact` cannot fold.
    """
    if combination_type not in COMBINATION_TYPES:
        raise ValueError(f"unknown combination_type {combination_type!r}; expected one of {list(COMBINATION_TYPES)}")
    adapters, weights = list(adapters), [float(weight) for weight in weights]
    if not adapters:
        raise ValueError("adapters is empty: name at least one adapter to merge")
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters {adapters}; give one per adapter")
    if len(set(adapters)) != len(adapters):
        raise ValueError(f"adapters {adapters} name an adapter twice")
    _check_lora_adapters(peft_model, adapters)
    if combination_type == "exact":
        if kwargs:
            raise ValueError(f"combination_type='exact' takes no options, got {sorted(kwargs)}")
        return _fold_exact(peft_model, adapters, weights)
    misscaled = [
        adapter
        for adapter in adapters
        if any(getattr(peft_model.peft_config[adapter], option, None) for option in PEFT_MISSCALED_OPTIONS)
    ]
    if misscaled:
        raise ValueError(
            f"adapters {misscaled} use one of {list(PEFT_MISSCALED_OPTIONS)}, which PEFT's add_weighted_adapter "
            "combines into a wrongly scaled adapter without saying so (huggingface/peft#3761; with use_rslora the "
            "result is √rank times too large); use combination_type='exact'"
        )
    if adapter_name in peft_model.peft_config:
        # add_weighted_adapter would silently keep the existing adapter and fold that instead.
        raise ValueError(f"adapter_name {adapter_name!r} is already an adapter of the model; choose a new name")
    peft_model.add_weighted_adapter(adapters, weights, adapter_name, combination_type=combination_type, **kwargs)
    return peft_model.merge_and_unload(adapter_names=[adapter_name])
