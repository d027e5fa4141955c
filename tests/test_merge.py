"""MERA's merge against its formula, θLLM(i) = (i-1)/i·θLLM(i-1) + 1/i·θLLM(i,vanilla), to 1e-6 on tiny models."""

import copy

import pytest
import torch
from conftest import build_tiny_model, tiny_text_config, tiny_tokenizer
from peft import LoraConfig, get_peft_model

from modeling_mera import MeraConfig, MeraForCausalLM
from trainers.merge import (
    COMBINATION_TYPES,
    average_llm_weights,
    is_llm_parameter,
    llm_parameter_names,
    llm_state_dict,
    merge_adapters,
    merge_stage_adapter,
    running_average,
    unwrapped_name,
)

TOLERANCE = 1e-6
LLM_LINEAR = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
MODALITIES = ("image", "audio", "image")  # the modality trained at stages 1, 2, 3 (a modality may come back)
# Parameters LoRA never touches: the formula must hold for them too.
NON_LINEAR_LLM = ("model.language_model.embed_tokens.weight", "model.language_model.norm.weight", "lm_head.weight")


def lora_config(**overrides) -> LoraConfig:
    # alpha != r, so that a merge forgetting the scaling alpha/r is caught.
    return LoraConfig(
        **{"r": 8, "lora_alpha": 16, "target_modules": LLM_LINEAR, "task_type": "CAUSAL_LM", **overrides}
    )


def randomise(module: torch.nn.Module, seed: int, names: str = "lora_", scale: float = 0.05):
    """Give `names`' parameters random values, as training would (LoRA's B starts at zero, so ΔW would be 0)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if names in name:
                parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def train_stage_with_lora(previous: MeraForCausalLM, stage: int, **config):
    """θ(i-1) → a PeftModel that stands for θ(i,vanilla): a trained adapter and a trained connector."""
    peft_model = get_peft_model(copy.deepcopy(previous), lora_config(**config))
    randomise(peft_model, seed=stage)
    randomise(peft_model, seed=100 + stage, names=f"model.connectors.{MODALITIES[stage - 1]}.")
    return peft_model


def llm_weights(model: MeraForCausalLM) -> dict[str, torch.Tensor]:
    """Every LLM parameter in float64, a tied LM head under its own name too."""
    parameters = model.named_parameters(remove_duplicate=False)
    return {name: parameter.detach().double() for name, parameter in parameters if is_llm_parameter(name)}


def max_formula_error(merged, previous, vanilla, stage: int) -> float:
    """Largest |merged - ((i-1)/i·previous + 1/i·vanilla)| over every LLM parameter (computed in float64)."""
    merged, previous, vanilla = llm_weights(merged), llm_weights(previous), llm_weights(vanilla)
    assert merged.keys() == previous.keys() == vanilla.keys()
    assert set(NON_LINEAR_LLM) <= merged.keys()
    return max(
        float((merged[name] - ((stage - 1) / stage * previous[name] + vanilla[name] / stage)).abs().max())
        for name in merged
    )


def assert_modality_parts_equal(model: MeraForCausalLM, reference: MeraForCausalLM):
    reference = dict(reference.named_parameters())
    parts = [(name, p) for name, p in model.named_parameters() if not is_llm_parameter(name)]
    assert parts and all(name.startswith(("model.encoders.", "model.connectors.")) for name, _ in parts)
    for name, parameter in parts:
        assert torch.equal(parameter, reference[name]), f"{name} was changed by the merge"


# LoRA: merge_stage_adapter


@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_merge_equals_formula_over_three_chained_stages(use_rslora):
    errors = []
    previous = build_tiny_model(("image", "audio"))
    for stage in (1, 2, 3):
        peft_model = train_stage_with_lora(previous, stage, use_rslora=use_rslora)
        trained = peft_model.get_base_model()
        vanilla = copy.deepcopy(peft_model).merge_and_unload()  # θ(i,vanilla): the adapter at its full scale
        trained_connector = {
            name: parameter.clone() for name, parameter in trained.named_parameters() if "connectors." in name
        }

        merged = merge_stage_adapter(peft_model, stage)

        assert type(merged) is MeraForCausalLM
        assert not any("lora_" in name for name, _ in merged.named_parameters())
        error = max_formula_error(merged, previous, vanilla, stage)
        errors.append(error)
        assert error < TOLERANCE, f"stage {stage}: max |merged - formula| = {error:.3g}"
        if stage == 1:
            assert error == 0.0, "stage 1 must give the vanilla model"
        else:  # the coefficient really is 1/i: vanilla and θ(i-1) are both far from the merge
            gap = max_formula_error(merged, previous, vanilla, 1)
            assert gap > 1e-3
        # Connectors and encoders come from the model that trained them, the new connector included.
        assert_modality_parts_equal(merged, vanilla)
        for name, parameter in merged.named_parameters():
            if "connectors." in name:
                assert torch.equal(parameter, trained_connector[name])
        newest = f"model.connectors.{MODALITIES[stage - 1]}."
        changed = [
            name
            for name, parameter in merged.named_parameters()
            if name.startswith(newest) and not torch.equal(parameter, dict(previous.named_parameters())[name])
        ]
        assert changed, "the stage's trained connector must be carried over, not averaged back"
        previous = merged
    print(f"LoRA merge (use_rslora={use_rslora}): max abs error per stage {[f'{e:.2e}' for e in errors]}")


def test_lora_merge_averages_llm_weights_trained_outside_the_adapter():
    """An unfrozen LLM norm (next to LoRA) and an LM head trained via modules_to_save follow the formula too."""
    previous = build_tiny_model(("image",))
    stage = 3
    peft_model = get_peft_model(copy.deepcopy(previous), lora_config(modules_to_save=["lm_head"]))
    snapshot = llm_state_dict(peft_model)
    randomise(peft_model, seed=1)
    randomise(peft_model, seed=2, names="lm_head.modules_to_save")
    randomise(peft_model, seed=3, names="language_model.norm.weight")
    vanilla = copy.deepcopy(peft_model).merge_and_unload()

    merged = merge_stage_adapter(peft_model, stage, previous_llm_state=snapshot)

    assert not torch.equal(vanilla.lm_head.weight, previous.lm_head.weight)
    error = max_formula_error(merged, previous, vanilla, stage)
    assert error < TOLERANCE, error


def test_lora_merge_leaves_lora_on_connectors_at_full_scale():
    previous = build_tiny_model(("image",))
    connector_linear = r".*connectors\.image\.layers\.\d+"
    config = lora_config(target_modules=f"({LLM_LINEAR})|({connector_linear})")
    peft_model = get_peft_model(copy.deepcopy(previous), config)
    assert any("connectors.image" in name and "lora_A" in name for name, _ in peft_model.named_parameters())
    randomise(peft_model, seed=4)
    vanilla = copy.deepcopy(peft_model).merge_and_unload()

    merged = merge_stage_adapter(peft_model, 2)

    assert max_formula_error(merged, previous, vanilla, 2) < TOLERANCE
    assert_modality_parts_equal(merged, vanilla)


# Full fine-tuning: average_llm_weights


@pytest.mark.parametrize("tied", [False, True])
def test_full_fine_tuning_average_equals_formula_over_three_stages(tied):
    if tied:
        text_config = tiny_text_config(len(tiny_tokenizer()))
        text_config.tie_word_embeddings = True
        model = MeraForCausalLM(MeraConfig(text_config=text_config, tie_word_embeddings=True))
        assert model.lm_head.weight is model.get_input_embeddings().weight
    else:
        model = build_tiny_model(("image", "audio"))
    errors = []
    for stage in (1, 2, 3):
        previous = copy.deepcopy(model)
        snapshot = llm_state_dict(model, device="cpu")
        randomise(model, seed=stage, names="")  # full fine-tuning moves every weight, modality parts included
        vanilla = copy.deepcopy(model)

        average_llm_weights(snapshot, model, stage)

        error = max_formula_error(model, previous, vanilla, stage)
        errors.append(error)
        assert error < TOLERANCE, f"stage {stage}: max |merged - formula| = {error:.3g}"
        if stage > 1:
            assert max_formula_error(model, previous, vanilla, 1) > 1e-3
        if tied:
            assert model.lm_head.weight is model.get_input_embeddings().weight
        else:
            assert_modality_parts_equal(model, vanilla)
    print(f"full fine-tuning average (tied={tied}): max abs error per stage {[f'{e:.2e}' for e in errors]}")


def test_full_fine_tuning_average_in_half_precision_rounds_once():
    model = build_tiny_model(("image",)).to(torch.bfloat16)
    snapshot = llm_state_dict(model)
    randomise(model, seed=5, names="language_model")
    parameters = dict(model.named_parameters())
    expected = {name: running_average(snapshot[name], parameters[name], 2) for name in llm_parameter_names(model)}
    average_llm_weights(snapshot, model, 2)
    for name in expected:
        parameter = parameters[name]
        assert parameter.dtype == torch.bfloat16
        assert torch.equal(parameter, expected[name])


def test_running_average_is_the_formula_in_float32():
    previous, current = torch.randn(4, 4), torch.randn(4, 4)
    for stage in (1, 2, 3, 7):
        expected = (stage - 1) / stage * previous.double() + current.double() / stage
        assert float((running_average(previous, current, stage).double() - expected).abs().max()) < TOLERANCE
    assert torch.equal(running_average(previous, current, 1), current)
    half = running_average(previous.half(), current.half(), 2)
    assert half.dtype == torch.float16


def test_llm_parameter_names_with_and_without_peft():
    model = build_tiny_model(("image",))
    names = llm_parameter_names(model)
    assert "lm_head.weight" in names and "model.language_model.embed_tokens.weight" in names
    assert not any(".connectors." in name or ".encoders." in name for name in names)
    peft_model = get_peft_model(copy.deepcopy(model), lora_config())
    wrapped = llm_parameter_names(peft_model)
    assert {unwrapped_name(name) for name in wrapped if "lora_" not in name} == set(names)
    assert any(".base_layer." in name for name in wrapped) and any("lora_B" in name for name in wrapped)
    assert is_llm_parameter("base_model.model.lm_head.weight")
    assert not is_llm_parameter("base_model.model.model.connectors.image.linear_1.weight")
    assert set(llm_state_dict(peft_model)) == set(names)


# The general form: merge_adapters, and the caveat about PEFT's linear combination


def two_adapter_model(**config):
    model = build_tiny_model(("image",))
    peft_model = get_peft_model(model, lora_config(**config), adapter_name="first")
    peft_model.add_adapter("second", lora_config(**config))
    randomise(peft_model, seed=6, scale=0.1)
    return peft_model


def weighted_sum_reference(peft_model, adapters, weights) -> tuple[dict, dict]:
    """(base, base + Σ wᵢ·ΔWᵢ) in float64 for every LoRA-wrapped weight, ΔWᵢ from each layer's get_delta_weight."""
    base, reference = {}, {}
    for name, module in peft_model.get_base_model().named_modules():
        if hasattr(module, "get_delta_weight") and hasattr(module, "base_layer"):
            base[f"{name}.weight"] = module.get_base_layer().weight.detach().double()
            reference[f"{name}.weight"] = base[f"{name}.weight"] + sum(
                weight * module.get_delta_weight(adapter).detach().double()
                for adapter, weight in zip(adapters, weights)
            )
    return base, reference


def merge_errors(merged, base, reference) -> tuple[float, float]:
    """Max abs error against the reference, and the error's norm relative to the norm of the update Σ wᵢ·ΔWᵢ."""
    merged = {name: parameter.detach().double() for name, parameter in merged.named_parameters()}
    absolute = max(float((merged[name] - value).abs().max()) for name, value in reference.items())
    error = sum(float((merged[name] - value).norm() ** 2) for name, value in reference.items()) ** 0.5
    update = sum(float((value - base[name]).norm() ** 2) for name, value in reference.items()) ** 0.5
    return absolute, error / update


@pytest.mark.parametrize("weights", [[0.5, 0.5], [2 / 3, 1 / 3]])
def test_linear_combination_is_not_the_weighted_delta_sum_but_exact_and_cat_are(weights):
    peft_model = two_adapter_model()
    base, reference = weighted_sum_reference(peft_model, ["first", "second"], weights)
    errors = {
        combination_type: merge_errors(
            merge_adapters(copy.deepcopy(peft_model), ["first", "second"], weights, combination_type), base, reference
        )
        for combination_type in ("exact", "cat", "linear", "svd")
    }
    report = {name: f"{absolute:.2e}, {relative:.2e}" for name, (absolute, relative) in errors.items()}
    print(f"weights {weights}: (max abs error, error / |Σ wΔW|) {report}")
    assert errors["exact"][0] < TOLERANCE and errors["cat"][0] < TOLERANCE
    assert errors["linear"][1] > 1e-3, "PEFT's linear combination has cross terms B_i·A_j"
    assert errors["svd"][1] > 1e-3, "svd truncates the rank-16 sum to rank 8"


def test_exact_merge_of_one_adapter_is_the_stage_merge():
    """merge_adapters([adapter], [1/i]) folds the same update as merge_stage_adapter does for the LLM."""
    previous = build_tiny_model(("image",))
    peft_model = train_stage_with_lora(previous, 3)
    by_stage = merge_stage_adapter(copy.deepcopy(peft_model), 3)
    by_weight = merge_adapters(peft_model, ["default"], [1 / 3])
    for (name, left), (_, right) in zip(by_stage.named_parameters(), by_weight.named_parameters()):
        assert float((left - right).abs().max()) < TOLERANCE, name


@pytest.mark.parametrize("combination_type", ["ties", "dare_linear", "dare_ties", "magnitude_prune", "ties_svd"])
def test_other_peft_combination_types_delegate_to_add_weighted_adapter(combination_type):
    peft_model = two_adapter_model()
    merged = merge_adapters(peft_model, ["first", "second"], [0.5, 0.5], combination_type, density=0.5)
    assert type(merged) is MeraForCausalLM
    assert not any("lora_" in name for name, _ in merged.named_parameters())


def test_rslora_adapters_are_refused_by_peft_combinations_but_exact_handles_them():
    peft_model = two_adapter_model(use_rslora=True)
    with pytest.raises(ValueError, match="use_rslora"):
        merge_adapters(copy.deepcopy(peft_model), ["first", "second"], [0.5, 0.5], "cat")
    base, reference = weighted_sum_reference(peft_model, ["first", "second"], [0.5, 0.5])
    merged = merge_adapters(peft_model, ["first", "second"], [0.5, 0.5], "exact")
    assert merge_errors(merged, base, reference)[0] < TOLERANCE


# Bad input


def test_bad_input_raises_clear_errors():
    previous = build_tiny_model(("image",))
    peft_model = train_stage_with_lora(previous, 1)
    with pytest.raises(ValueError, match="stage must be an integer >= 1"):
        merge_stage_adapter(peft_model, 0)
    with pytest.raises(ValueError, match="stage must be an integer >= 1"):
        average_llm_weights(llm_state_dict(previous), previous, 1.5)
    with pytest.raises(ValueError, match="adapter 'stage2' not found; the model carries adapters \\['default'\\]"):
        merge_stage_adapter(peft_model, 2, adapter_name="stage2")
    with pytest.raises(ValueError, match="unknown combination_type 'mean'"):
        merge_adapters(peft_model, ["default"], [1.0], "mean")
    with pytest.raises(ValueError, match="adapter 'missing' not found"):
        merge_adapters(peft_model, ["default", "missing"], [0.5, 0.5])
    with pytest.raises(ValueError, match="got 1 weights for 2 adapters"):
        merge_adapters(peft_model, ["default", "default"], [1.0])
    with pytest.raises(ValueError, match="already an adapter"):
        merge_adapters(peft_model, ["default"], [1.0], "cat", adapter_name="default")
    with pytest.raises(ValueError, match="takes no options"):
        merge_adapters(peft_model, ["default"], [1.0], "exact", svd_rank=4)
    with pytest.raises(TypeError, match="merge_stage_adapter"):
        average_llm_weights(llm_state_dict(peft_model), peft_model, 2)
    with pytest.raises(ValueError, match="missing \\['lm_head.weight'\\]"):
        state = llm_state_dict(previous)
        del state["lm_head.weight"]
        average_llm_weights(state, previous, 2)
    state = llm_state_dict(previous)
    state["model.language_model.norm.weight"] = torch.zeros(3)
    before = llm_state_dict(previous)
    with pytest.raises(ValueError, match="has shape \\(3,\\) but the model's parameter has \\(64,\\)"):
        average_llm_weights(state, previous, 2)
    assert all(torch.equal(before[name], value) for name, value in llm_state_dict(previous).items())
    peft_model.add_adapter("other", lora_config())
    with pytest.raises(ValueError, match="would drop adapters \\['other'\\]"):
        merge_stage_adapter(peft_model, 2)
    dora = get_peft_model(copy.deepcopy(previous), lora_config(use_dora=True))
    with pytest.raises(ValueError, match="DoRA"):
        merge_stage_adapter(dora, 2)
    assert set(COMBINATION_TYPES) >= {"exact", "cat", "svd", "linear", "ties", "dare_linear", "dare_ties"}
