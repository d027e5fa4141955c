"""QLoRA plumbing: the 4-bit config, the refusal without CUDA, and full-precision weights back for the merge."""

import importlib.util

import pytest
import torch
from conftest import build_tiny_model

from trainers.merge import llm_state_dict, merge_stage_adapter
from trainers.quantization import check_quantization_available, quantization_config
from trainers.sft import llm_lora_config

needs_bitsandbytes = pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes is not installed (the 'quant' extra)"
)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="4-bit training runs on a CUDA GPU")


def test_quantization_config_is_nf4_in_the_run_dtype():
    assert quantization_config(False, "bfloat16") is None
    config = quantization_config(True, "bfloat16")
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_compute_dtype == torch.bfloat16
    assert not config.bnb_4bit_use_double_quant
    nested = quantization_config(True, "float32", quant_type="fp4", nested=True)
    assert nested.bnb_4bit_quant_type == "fp4" and nested.bnb_4bit_use_double_quant
    assert nested.bnb_4bit_compute_dtype == torch.float32


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot show")
def test_without_cuda_4bit_is_refused_with_what_is_needed():
    with pytest.raises(ValueError, match=r"load_in_4bit: .*needs a CUDA GPU \(torch.cuda.is_available\(\) is False"):
        check_quantization_available()


@needs_bitsandbytes
def test_quantized_fine_tuning_merges_into_the_full_precision_weights():
    """
    bitsandbytes >= 0.48 also quantizes on the CPU, which is enough to check the swap: 4-bit layers while the LoRA
    adapter trains, the original full-precision layers back afterwards (bit-identical), and the merge on them.
    """
    import bitsandbytes as bnb
    from peft import get_peft_model

    from trainers.quantization import quantize_llm, restore_full_precision

    torch.manual_seed(0)
    model = build_tiny_model(("image",)).train()
    before = llm_state_dict(model)
    peft_model = get_peft_model(model, llm_lora_config(model, r=4, lora_alpha=8, lora_dropout=0.0))
    kept = quantize_llm(model.model.language_model, quantization_config(True, "float32"), torch.device("cpu"))
    quantized = [m for m in peft_model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == len(kept) == 7 * model.config.text_config.num_hidden_layers  # q k v o gate up down
    assert all(m.weight.dtype == torch.uint8 for m in quantized), "the base layers hold 4-bit weights"

    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    ids = torch.randint(4, 30, (2, 8), generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(3):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0], "the adapter trains on the 4-bit base"

    assert restore_full_precision(peft_model, kept) == len(kept)
    assert not any(isinstance(m, bnb.nn.Linear4bit) for m in peft_model.modules())
    restored = llm_state_dict(peft_model)
    assert all(torch.equal(restored[name], value) for name, value in before.items()), "θ(i-1) comes back exact"

    deltas = {}
    for name, module in peft_model.named_modules():
        if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {}):
            deltas[name.removeprefix("base_model.model.") + ".weight"] = module.get_delta_weight("default").detach()
    assert deltas and any(delta.abs().max() > 0 for delta in deltas.values())
    merged = llm_state_dict(merge_stage_adapter(peft_model, stage=3))
    for name, value in before.items():
        expected = value + deltas[name] / 3 if name in deltas else value
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=0)


@needs_cuda
@needs_bitsandbytes
def test_a_tiny_stage_with_4bit_fine_tuning_merges_by_the_full_precision_formula(tmp_path):
    """On a GPU: stage 2 with load_in_4bit; its merged LLM is θ(1) + ΔW/2 on the full-precision weights."""
    from dataclasses import replace

    import bitsandbytes as bnb
    from conftest import build_tiny_model, tiny_processor, toy_samples
    from test_stage import SPECS, tiny_settings

    from trainers.checkpoint import load_stage
    from trainers.data import load_samples
    from trainers.methods.mera import MergePlugin
    from trainers.plugins import StagePlugin
    from trainers.stage import run_stage

    class Watch(StagePlugin):
        """Counts the 4-bit layers while fine-tuning trains, and takes the adapter's ΔW right before the merge."""

        name = "watch"

        def __init__(self):
            self.quantized_while_training, self.deltas = 0, {}

        def extra_loss(self, model, inputs):
            self.quantized_while_training = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())

        def after_finetune(self, ctx):
            assert not any(isinstance(m, bnb.nn.Linear4bit) for m in ctx.model.modules())
            self.deltas = {
                name.removeprefix("base_model.model.") + ".weight": module.get_delta_weight("default").float().cpu()
                for name, module in ctx.model.named_modules()
                if hasattr(module, "get_delta_weight") and "default" in getattr(module, "lora_A", {})
            }

    base = build_tiny_model(())
    data = {m: load_samples(toy_samples(tmp_path / "data", m, 4, seed=i)) for i, m in enumerate(("image", "audio"))}
    stage1 = run_stage(base, tiny_processor(base), SPECS["image"], data["image"], tmp_path / "s1", 1, [MergePlugin()],
                       tiny_settings())  # fmt: skip
    before = llm_state_dict(load_stage(stage1)[0], device="cpu")
    watch = Watch()
    settings = replace(tiny_settings(), load_in_4bit=True)
    stage2 = run_stage(stage1, None, SPECS["audio"], data["audio"], tmp_path / "s2", 2, [watch, MergePlugin()],
                       settings)  # fmt: skip
    assert watch.quantized_while_training == 7 * base.config.text_config.num_hidden_layers
    assert watch.deltas and any(delta.abs().max() > 0 for delta in watch.deltas.values())
    merged = llm_state_dict(load_stage(stage2)[0], device="cpu")
    for name, value in before.items():
        expected = value + watch.deltas[name] / 2 if name in watch.deltas else value
        torch.testing.assert_close(merged[name], expected, atol=1e-6, rtol=0)
