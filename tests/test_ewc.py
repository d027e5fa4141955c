"""Online EWC: the penalty λ/2·Σ F·(θ−θ(i-1))² in weight space, and its Fisher accumulated and kept with the stages."""

import json
import shutil

import pytest
import torch
from conftest import build_tiny_model, tiny_processor, toy_samples
from peft import get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file
from test_stage import SPECS, tiny_settings

from modeling_mera import MeraBatch
from trainers.checkpoint import load_stage
from trainers.data import MeraDataCollator, load_samples
from trainers.data.replay import sample_replay
from trainers.merge import unwrapped_name
from trainers.methods import get_method_plugins
from trainers.methods.ewc import EWCPlugin, ewc_penalty, tracked_weights
from trainers.sft import MeraSFTTrainer, llm_lora_config
from trainers.stage import run_stage


def _fisher(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    named = dict(model.named_parameters())
    return {name: torch.rand(named[name].shape, generator=generator) for name in tracked_weights(model, False)}


def test_penalty_is_zero_at_the_anchor_equals_the_formula_and_pulls_back_with_lora():
    model = build_tiny_model(("image",))
    fisher = {name: value for name, value in _fisher(model).items() if name in tracked_weights(model, True)}
    assert len(fisher) == 14  # 2 layers x (q, k, v, o, gate, up, down)
    peft_model = get_peft_model(model, llm_lora_config(model, r=4, lora_alpha=8, lora_dropout=0.0))
    plugin = EWCPlugin(ewc_lambda=0.7)
    plugin.fisher, plugin.fisher_stages = fisher, [1]
    # LoRA starts at B = 0: the model is θ(i-1) and the penalty is exactly zero.
    assert plugin.extra_loss(peft_model, {}).item() == 0.0

    generator = torch.Generator().manual_seed(1)
    layers = {unwrapped_name(n) + ".weight": m for n, m in peft_model.named_modules() if isinstance(m, LoraLayer)}
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B["default"].weight.copy_(
                0.1 * torch.randn(layer.lora_B["default"].weight.shape, generator=generator)
            )
    expected = sum(
        (fisher[name] * (2.0 * layer.lora_B["default"].weight @ layer.lora_A["default"].weight) ** 2).sum()
        for name, layer in layers.items()
    )  # scaling = lora_alpha / r = 2
    penalty = plugin.extra_loss(peft_model, {})
    torch.testing.assert_close(penalty, 0.5 * 0.7 * expected, rtol=1e-6, atol=0)
    assert penalty.item() > 1e-3

    # One gradient step on the adapter moves every weight back towards θ(i-1): the penalty shrinks.
    penalty.backward()
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_B["default"].weight -= 0.2 * layer.lora_B["default"].weight.grad
    assert plugin.extra_loss(peft_model, {}).item() < 0.9 * penalty.item()


def test_full_fine_tuning_penalty_gradient_is_lambda_fisher_times_the_deviation():
    model = build_tiny_model(("image",))
    fisher = _fisher(model)
    plugin = EWCPlugin(ewc_lambda=2.0)
    plugin.fisher, plugin.fisher_stages = fisher, [1]
    plugin.configure_finetune(type("Ctx", (), {"finetune_trainable": ["connector:new", "llm"], "model": model})())
    assert plugin.extra_loss(model, {}).item() == 0.0
    weight = dict(model.named_parameters())["model.language_model.layers.1.mlp.down_proj.weight"]
    delta = 0.01 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        weight += delta
    penalty = plugin.extra_loss(model, {})
    name = "model.language_model.layers.1.mlp.down_proj.weight"
    torch.testing.assert_close(penalty, (0.5 * 2.0 * fisher[name] * delta**2).sum(), rtol=1e-5, atol=0)
    penalty.backward()
    # ∂/∂θ = λ·F·(θ−θ(i-1)): same sign as the deviation, so a descent step goes back towards θ(i-1).
    deviation = weight.detach() - plugin.anchors[name]  # δ as float32 holds it
    torch.testing.assert_close(weight.grad, 2.0 * fisher[name] * deviation, rtol=1e-6, atol=0)
    assert bool((weight.grad * delta >= 0).all()) and float((weight.grad * delta).sum()) > 0
    assert ewc_penalty({}, {}, 1.0).item() == 0.0
    with pytest.raises(ValueError, match="no Fisher information"):
        ewc_penalty({"x": torch.ones(1)}, {}, 1.0)


def test_fisher_accumulates_over_stages_and_travels_with_the_checkpoints(tmp_path, monkeypatch):
    logged = []
    original_log = MeraSFTTrainer.log
    monkeypatch.setattr(
        MeraSFTTrainer, "log", lambda self, logs, *a, **k: (logged.append(logs), original_log(self, logs, *a, **k))
    )
    base = build_tiny_model(())
    processor = tiny_processor(base)
    settings = tiny_settings()
    settings.finetune_args["logging_steps"] = 1
    data = {m: load_samples(toy_samples(tmp_path / "data", m, 4, seed=i)) for i, m in enumerate(("image", "audio"))}
    stage1 = run_stage(base, processor, SPECS["image"], data["image"], tmp_path / "s1", 1,
                       get_method_plugins("ewc"), settings)  # fmt: skip
    assert not any("ewc_loss" in logs for logs in logged)  # stage 1 has nothing to protect yet
    stage2 = run_stage(stage1, None, SPECS["audio"], data["audio"], tmp_path / "s2", 2,
                       get_method_plugins("ewc"), settings)  # fmt: skip
    penalties = [logs["ewc_loss"] for logs in logged if "ewc_loss" in logs]
    # 2 epochs x 2 steps, logged per step; the first step starts at θ(1) (LoRA B = 0), later ones have moved away
    assert len(penalties) == 4 and penalties[0] == 0.0 and all(value > 0 for value in penalties[1:])
    info = json.loads((stage2 / "stage.json").read_text())
    assert info["log"]["ewc"] == {"lambda": 1.0, "fisher_samples": 1, "fisher_stages": [1, 2]}
    fisher1, fisher2 = (load_file(str(s / "plugins" / "ewc.safetensors")) for s in (stage1, stage2))
    assert len(fisher1) == 14 and fisher1.keys() == fisher2.keys()

    # F(2) = F(1) + the squared gradient of the loss of stage 2's 1% subset (1 sample), at θ2.
    model, processor, _ = load_stage(stage2)
    (sample,) = sample_replay(data["audio"], 1.0, seed=settings.seed + 2)
    batch = MeraBatch(MeraDataCollator(processor)([sample]))
    names = [name.removeprefix("fisher.") for name in fisher2]
    parameters = dict(model.named_parameters())
    gradients = torch.autograd.grad(model(**batch).loss, [parameters[name] for name in names])
    for name, gradient in zip(names, gradients):
        torch.testing.assert_close(
            fisher2[f"fisher.{name}"] - fisher1[f"fisher.{name}"], gradient**2, rtol=1e-4, atol=1e-9
        )
    assert sum(float(value.sum()) for value in fisher1.values()) > 0

    # EWC after a stage that kept no Fisher (here: its Fisher removed) stops before any training.
    shutil.copytree(stage1, tmp_path / "plain")
    shutil.rmtree(tmp_path / "plain" / "plugins")
    # ... as a stage saved without plug-in state records it (else the checkpoint is damaged: files are missing).
    info = json.loads((tmp_path / "plain" / "stage.json").read_text())
    info["files"] = {name: entry for name, entry in info["files"].items() if not name.startswith("plugins/")}
    (tmp_path / "plain" / "stage.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="needs the Fisher of stage 1"):
        run_stage(tmp_path / "plain", None, SPECS["audio"], data["audio"], tmp_path / "p2", 2,
                  get_method_plugins("ewc"), settings)  # fmt: skip
    assert not (tmp_path / "p2.partial").exists()
