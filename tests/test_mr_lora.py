"""MR-LoRA: one frozen LoRA expert per stage, a router LoRA that picks the expert, routed generation in one call."""

import json

import torch
from conftest import build_tiny_model, tiny_processor, toy_samples
from peft import PeftModelForCausalLM
from test_stage import SPECS, tiny_settings

from trainers.checkpoint import base_state_dict, load_stage
from trainers.data import load_samples
from trainers.evaluation.generation import evaluate_model
from trainers.methods import get_method_plugins
from trainers.methods.routing import RoutedLoraModel, encode_prompts, parse_choice, routed_batches
from trainers.settings import ContinualConfig
from trainers.stage import run_stage

MODALITIES = ("image", "audio", "point_cloud")
# The tiny word-level vocabulary has no letters but 'a': option labels are number words here.
ROUTER = {
    "router_samples": 4,
    "router_eval_samples": 4,
    "labels": ["one", "two", "three"],
    "router_lora": {"r": 4, "lora_alpha": 8},
    "router_args": {"num_train_epochs": 40, "learning_rate": 1e-2},
}


def test_parse_choice_takes_the_first_label_named_and_falls_back_otherwise():
    labels = ["A", "B", "C"]
    assert parse_choice("B", labels, fallback=2) == (1, True)
    assert parse_choice(" C. the audio expert, not A", labels, fallback=0) == (2, True)
    assert parse_choice("Because", labels, fallback=2) == (2, False)  # 'B' inside a word is no answer
    assert parse_choice("", labels, fallback=0) == (0, False)


def _expert_weights(model, adapter):
    weights = {key: value.clone() for key, value in model.state_dict().items() if f".{adapter}." in key}
    assert len(weights) == 28, adapter  # lora_A and lora_B on 14 linear layers
    return weights


def test_experts_stay_frozen_and_the_router_sends_each_input_to_its_stage(tmp_path):
    base = build_tiny_model(())
    llm_before = {
        k: v.clone() for k, v in base.state_dict().items() if k.startswith(("model.language_model.", "lm_head."))
    }
    config = ContinualConfig(method="mr_lora", method_args=ROUTER)
    previous, models = base, {}
    for stage, modality in enumerate(MODALITIES, start=1):
        data = load_samples(toy_samples(tmp_path / "data", modality, 4, seed=stage))
        processor = tiny_processor(base) if stage == 1 else None
        plugins = get_method_plugins("mr_lora", config)
        previous = run_stage(
            previous, processor, SPECS[modality], data, tmp_path / f"s{stage}", stage, plugins, tiny_settings()
        )
        models[stage] = load_stage(previous)[0]
        info = json.loads((previous / "stage.json").read_text())
        # 4 held-out router samples per stage so far, every one routed to its stage's expert.
        assert info["log"]["router"]["samples"] == 4 * stage and info["log"]["router"]["accuracy"] == 1.0
    model, processor, _ = load_stage(previous)
    assert isinstance(model, RoutedLoraModel)
    assert set(model.peft_config) == {"expert-1", "expert-2", "expert-3", "router"}

    # Earlier experts are bit-identical after later stages; the base LLM never changes.
    for adapter, first in (("expert-1", 1), ("expert-2", 2)):
        earlier, last = _expert_weights(models[first], adapter), _expert_weights(model, adapter)
        assert all(torch.equal(value, last[key]) for key, value in earlier.items()), adapter
    plain = base_state_dict(model)
    assert all(torch.equal(plain[key], value) for key, value in llm_before.items())

    # Unseen inputs labelled by stage (their modality): the router picks that stage's expert, every time.
    tests = {m: toy_samples(tmp_path / "test", m, 4, seed=100 + i) for i, m in enumerate(MODALITIES)}
    for stage, modality in enumerate(MODALITIES):
        choices = [c for batch in routed_batches(model, processor, tests[modality]) for c in batch]
        assert choices == [stage] * 8, modality

    # One generate call routes, then answers each input with its expert, like explicit per-input adapters.
    model.eval()
    mixed = [tests[m][1] for m in MODALITIES]
    batch = encode_prompts(processor, mixed, "left")
    options = {"max_new_tokens": 4, "do_sample": False, "pad_token_id": processor.tokenizer.pad_token_id}
    routed = model.generate(**batch, **options)
    explicit = PeftModelForCausalLM.generate(
        model, **batch, adapter_names=["expert-1", "expert-2", "expert-3"], **options
    )
    assert torch.equal(routed, explicit)
    with_router_only = PeftModelForCausalLM.generate(model, **batch, adapter_names=["router"] * 3, **options)
    assert not torch.equal(routed, with_router_only)

    # Evaluation reports the router's accuracy on the test sets.
    samples = [s for m in MODALITIES for s in tests[m]]
    result = evaluate_model(model, processor, samples, judge="match", max_new_tokens=3, progress=False)
    assert result["routing"]["inputs"] == 24 and result["routing"]["accuracy"] == 1.0
    assert result["routing"]["chosen"] == {"expert-1": 8, "expert-2": 8, "expert-3": 8}
    assert result["routing"]["fallbacks"] == 0
