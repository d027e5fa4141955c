"""`mera bench`'s pieces that can be checked without timing anything: the LLaVA twin and MERA's floor."""

import json
from pathlib import Path

import pytest
import torch
from conftest import build_tiny_model, tiny_processor, toy_samples

from trainers.bench import format_bench, llava_twin, sample_passes
from trainers.data import MeraDataCollator, load_samples
from trainers.settings import StageSettings


def test_llava_twin_holds_the_same_weights(tmp_path):
    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    samples = list(load_samples(toy_samples(tmp_path, "image", 2)))
    llava = llava_twin(model).eval()
    batch = MeraDataCollator(processor)(samples)
    placeholder = model.config.placeholder_token_ids["image"]
    llava_ids = batch["input_ids"].masked_fill(batch["input_ids"] == placeholder, llava.config.image_token_index)
    with torch.no_grad():
        ours = model(**batch)
        theirs = llava(
            input_ids=llava_ids,
            attention_mask=batch["attention_mask"],
            labels=batch["labels"],
            pixel_values=batch["modality_inputs"]["image"],
        )
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours.loss, theirs.loss, rtol=0, atol=1e-5)


def test_floor_counts_replayed_sample_passes():
    settings = StageSettings(pretrain_num_train_epochs=1, finetune_num_train_epochs=2, realign_num_train_epochs=3)
    fine_tuning = [{"captions": 40, "finetune_samples": 80, "realign_samples": 0} for _ in range(2)]
    mera = [{**stage, "realign_samples": 8 * (index + 1)} for index, stage in enumerate(fine_tuning)]
    assert sample_passes(fine_tuning, settings) == 2 * (40 + 160)
    assert sample_passes(mera, settings) / sample_passes(fine_tuning, settings) == pytest.approx(1 + 3 * 24 / 400)


def test_bench_table_and_plot_read_every_section(tmp_path):
    summary = {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    phases = {p: summary for p in ("pretrain", "finetune", "merge", "realign", "save", "evaluation")}
    method = {"phase_cpu_seconds": phases, "training_cpu_seconds": summary, "peak_memory_mb": summary}
    result = {
        "training": {
            "fine_tuning": method,
            "mera": method,
            "mera_vs_fine_tuning": {
                "measured_ratio": summary,
                "within_run_ratio": summary,
                "computed_floor": 1.5,
                "above_floor_percent": 33.3,
                "within_run_above_floor_percent": -2.5,
            },
        },
        "llava": {"batch": 8, "forward_backward_ratio": summary, "generate_ratio": summary},
        "latency": {"mera": summary},
        "data_path": {
            "image": {
                k: summary for k in ("collator_fresh", "collator_cached", "step_raw_inputs", "step_cached_features")
            }
        },
    }
    table = format_bench(json.loads(json.dumps(result)))
    assert "computed floor 1.500" in table and "33.3% above it" in table and "2.5% below it" in table
    assert "forward+backward 2.000 (1.000-3.000)x" in table
    assert table.count("2.00 (1.00-3.00)") == 2 * 7
    from trainers.bench import plot_bench

    plot_bench(result, tmp_path / "bench.png")
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_fresh_trainer_skips_the_idle_full_garbage_collection(tmp_path, monkeypatch):
    import gc

    from trainers.sft import MeraSFTConfig, MeraSFTTrainer

    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    args = MeraSFTConfig(output_dir=str(tmp_path / "run"), max_steps=1, disable_tqdm=True)
    trainer = MeraSFTTrainer(model, args, load_samples(toy_samples(tmp_path, "image", 2)), processor)
    collections = []
    monkeypatch.setattr(gc, "collect", lambda *a: collections.append(a) or 0)
    trainer.train()
    assert collections == [], "Trainer.train()'s free_memory on an idle CPU accelerator collects nothing"
    trainer.accelerator.free_memory(object())  # objects to release: accelerate's own path, with its collection
    assert len(collections) == 1


def test_lora_step_flops_and_mfu(tmp_path):
    """The LoRA step's FLOPs as torch's FlopCounterMode counts them: at least the forward's 2 x weights x tokens of
    the LLM's linear layers, at most the 6 x of full training (LoRA skips the frozen weights' gradients; 3.8 x
    here)."""
    from trainers.bench import bench_lora_step, device_peak_tflops

    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    samples = list(load_samples(toy_samples(tmp_path, "image", 4)))
    settings = StageSettings(lora_r=4, lora_alpha=8)
    result = bench_lora_step(model, processor, samples, settings, repetitions=1, batch_size=4, peak_tflops=2.0)
    linear_weights = sum(
        module.weight.numel()
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not name.startswith(("encoders", "connectors"))
    )
    tokens = result["batch"] * MeraDataCollator(processor)(samples[:4])["input_ids"].shape[1]
    assert 2 * linear_weights * tokens <= result["flops_per_step"] <= 6 * linear_weights * tokens
    assert result["mfu"]["median"] == pytest.approx(result["achieved_tflops"]["median"] / 2.0)
    assert device_peak_tflops("NVIDIA H200") == 989.0 and device_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert device_peak_tflops("Tesla T4") is None and device_peak_tflops(None) is None


@pytest.mark.slow
def test_mera_bench_end_to_end_on_a_small_config(tmp_path):
    """`mera bench --config`: every section in bench.json, the table on the console, the plot; one line per run."""
    import os
    import subprocess
    import sys

    import yaml

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "recipes" / "configs" / "bench.yaml").read_text())
    config["bench"] = {"methods": ["fine_tuning", "mera"], "repetitions": 1, "test_limit": 2, "new_tokens": 2}
    config["benchmark"] = {"train_per_modality": 8, "test_per_modality": 4}
    config["language_model"] = {"steps": 2}
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(config))
    out = tmp_path / "bench"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(root)}
    command = [sys.executable, "-m", "recipes.cli", "bench", "--config", str(small), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=1800, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    bench = json.loads((out / "bench.json").read_text())
    assert set(bench) >= {"training", "llava", "latency", "data_path", "lora_step", "machine", "seconds"}
    ratio = bench["training"]["mera_vs_fine_tuning"]
    # R_i = 10% of each stage's 16 samples (2), kept for stages 1..i: 4 + 6 + 8 realigned over 4 x (8 + 16).
    assert ratio["computed_floor"] == pytest.approx(1 + 18 / 96)
    assert [s["realign_samples"] for s in bench["training"]["mera"]["stages"]] == [0, 4, 6, 8]
    assert set(bench["data_path"]) == {"image", "video", "audio", "point_cloud"}
    assert bench["lora_step"]["flops_per_step"] > 0 and bench["lora_step"]["mfu"] is None  # no GPU, no peak given
    assert "MERA / Fine-Tuning training time" in result.stdout and "computed floor 1.188" in result.stdout
    mera_run = bench["training"]["mera"]["stages"]
    realign = sum(s["phase_cpu"]["realign"] for s in mera_run)
    total = sum(s["phase_cpu"][p] for s in mera_run for p in ("pretrain", "finetune", "merge", "realign"))
    assert ratio["within_run_ratio"]["median"] == pytest.approx(total / (total - realign))
    assert "[1/2] fine_tuning, repetition 1/1" in result.stdout and "[2/2] mera" in result.stdout
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    assert "Traceback" not in result.stderr

    # A bad size in the YAML is the user's error: one line naming the file, exit code 2, nothing trained.
    config["benchmark"]["test_per_modality"] = 2
    small.write_text(yaml.safe_dump(config))
    command[-1] = str(tmp_path / "bad")
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{small}: benchmark: test_per_modality must be an integer >= 4" in result.stderr
    assert not (tmp_path / "bad" / "runs").exists()
