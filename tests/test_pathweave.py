"""PathWeave: adapter-in-adapter layers, earlier adapters frozen, every adapter kept and used at inference."""

import json

import pytest
import torch
from conftest import build_tiny_model, tiny_processor, toy_samples
from test_stage import SPECS, tiny_settings

from trainers.checkpoint import base_state_dict, load_stage
from trainers.data import load_samples
from trainers.evaluation.generation import evaluate_model
from trainers.methods import get_method_plugins
from trainers.methods.pathweave import PathWeaveLinear, pathweave_layers
from trainers.plugins import StagePlugin
from trainers.stage import run_stage


def test_layer_output_is_the_base_plus_the_gated_adapters_and_new_parts_start_neutral():
    torch.manual_seed(0)
    base = torch.nn.Linear(8, 6)
    layer = PathWeaveLinear(base, r=2, lora_alpha=4)
    layer.add_modality("image")
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # a new adapter's up projection is zero
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn_like(parameter))
    image_delta = layer.get_delta_weight("image")
    before = layer(x)
    layer.add_modality("audio")
    # The in-adapter added to the image adapter starts at zero: the image adapter is the same linear map.
    torch.testing.assert_close(layer.get_delta_weight("image"), image_delta, rtol=0, atol=0)
    assert layer.modalities == ["image", "audio"] and list(layer.pathweave_in["image"]) == ["audio"]
    assert layer.pathweave_gate.weight.shape == (2, 8)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.randn_like(parameter))
    gates = torch.softmax(layer.pathweave_gate(x), dim=-1)
    expected = base(x) + sum(
        gates[..., [j]] * (x @ layer.get_delta_weight(m).T) for j, m in enumerate(layer.modalities)
    )
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(layer(x), before)
    with pytest.raises(ValueError, match="already has a PathWeave adapter for 'image'"):
        layer.add_modality("image")


class FailOnce(StagePlugin):
    """Kills the first run of a stage after its fine-tuning was saved, as a crash would."""

    name = "fail_once"

    def __init__(self):
        self.failed = False

    def after_stage(self, ctx):
        if not self.failed:
            self.failed = True
            raise RuntimeError("killed")


def test_stages_freeze_earlier_adapters_and_infer_with_all_of_them(tmp_path):
    base = build_tiny_model(())
    processor = tiny_processor(base)
    llm_before = {
        k: v.clone() for k, v in base.state_dict().items() if k.startswith(("model.language_model.", "lm_head."))
    }
    previous, states, crash = base, {}, FailOnce()
    for stage, modality in enumerate(("image", "audio", "point_cloud"), start=1):
        data = load_samples(toy_samples(tmp_path / "data", modality, 4, seed=stage))
        plugins = get_method_plugins("pathweave") + ([crash] if stage == 2 else [])
        arguments = (SPECS[modality], data, tmp_path / f"s{stage}", stage, plugins, tiny_settings())
        if stage == 2:  # a crash after the fine-tuning: the rerun resumes from the saved adapters
            with pytest.raises(RuntimeError, match="killed"):
                run_stage(previous, None, *arguments)
            assert (tmp_path / "s2.partial" / "finetuned" / "adapters" / "pathweave.safetensors").is_file()
        previous = run_stage(previous, processor if stage == 1 else None, *arguments)
        model = load_stage(previous)[0]
        states[stage] = {k: v.clone() for k, v in model.state_dict().items()}
        info = json.loads((previous / "stage.json").read_text())
        assert info["adapter_format"] == "pathweave" and info["log"]["pathweave"]["layers"] == 14
        assert info["adapter_format_class"] == "trainers.methods.pathweave.PathWeaveFormat"

    def adapter_keys(state, pattern):
        keys = [key for key in state if pattern in key]
        assert keys, pattern
        return keys

    # Earlier adapters (and the in-adapters added for earlier modalities) are bit-identical after later stages.
    for key in adapter_keys(states[1], ".pathweave_down.image.") + adapter_keys(states[1], ".pathweave_up.image."):
        assert torch.equal(states[1][key], states[3][key]), key
    for pattern in (".pathweave_down.audio.", ".pathweave_up.audio.", ".pathweave_in.image.audio."):
        for key in adapter_keys(states[2], pattern):
            assert torch.equal(states[2][key], states[3][key]), key
    # What stage 3 trains did change: its adapter, its in-adapters, the gate.
    assert any(states[3][key].abs().sum() > 0 for key in adapter_keys(states[3], ".pathweave_up.point_cloud."))
    assert any(states[3][key].abs().sum() > 0 for key in adapter_keys(states[3], ".pathweave_in.image.point_cloud."))
    # The LLM's own weights never change (saved under their plain names, so the base model loads them).
    model, processor, _ = load_stage(previous)
    plain = base_state_dict(model)
    assert not any("pathweave" in key for key in plain)
    for key, value in llm_before.items():
        assert torch.equal(plain[key], value), key

    # Inference keeps every adapter: each layer mixes three, and the adapters change the model's answer.
    assert all(layer.modalities == ["image", "audio", "point_cloud"] for layer in pathweave_layers(model).values())
    samples = [s for m in ("image", "audio", "point_cloud") for s in toy_samples(tmp_path / "test", m, 1, seed=9)]
    result = evaluate_model(model, processor, samples, judge="match", max_new_tokens=3, progress=False)
    assert len(result["predictions"]) == 6 and set(result["scores"]) == {s["dataset"] for s in samples}
    media = [{"image": torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()}, {"audio": torch.zeros(16000).numpy()}]
    batch = processor(["<image> describe", "<audio> describe"], media=media)
    with_adapters = model(**batch).logits
    with torch.no_grad():
        for layer in pathweave_layers(model).values():
            for up in layer.pathweave_up.values():
                up.weight.zero_()
    assert not torch.allclose(model(**batch).logits, with_adapters)
