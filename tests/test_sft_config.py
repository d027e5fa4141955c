"""The settings `MeraSFTConfig` fixes must be settings of the installed TRL/transformers, and take effect."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tiny_model, tiny_processor, toy_samples
from trl import SFTConfig

from trainers.data import load_samples
from trainers.sft import PAPER_PHASES, MeraSFTConfig, MeraSFTTrainer, paper_phase_config

DEMO_YAML = Path(__file__).parents[1] / "recipes" / "configs" / "demo.yaml"


def test_every_field_mera_sft_config_sets_exists_upstream():
    # transformers 5 dropped `warmup_ratio`; a subclass that declares it silently gets a field nothing reads.
    own_fields = {"trainable", "connector_learning_rate", "feature_cache_dir", "feature_cache_gb"}  # its own fields
    upstream = {f.name for f in dataclasses.fields(SFTConfig)}
    declared = set(MeraSFTConfig.__annotations__) - own_fields
    assert declared, "MeraSFTConfig overrides some SFTConfig defaults"
    assert sorted(declared - upstream) == []
    for phase in PAPER_PHASES.values():
        assert sorted(set(phase) - upstream - own_fields) == []


@pytest.mark.parametrize("phase", list(PAPER_PHASES))
@pytest.mark.parametrize("steps", [1, 10, 34, 1000])
def test_each_phase_warms_up_for_three_percent_of_its_steps(tmp_path, phase, steps):
    config = paper_phase_config(phase, str(tmp_path))
    assert config.get_warmup_steps(steps) == math.ceil(0.03 * steps) > 0


def test_demo_phases_warm_up_too(tmp_path):
    demo = yaml.safe_load(DEMO_YAML.read_text())
    for phase in PAPER_PHASES:
        config = paper_phase_config(phase, str(tmp_path), **demo[f"{phase}_args"])
        assert config.get_warmup_steps(1000) == 30, phase


def test_warmup_ratio_is_refused_with_its_replacement(tmp_path):
    with pytest.raises(ValueError, match=r"finetune: 'warmup_ratio' .*'warmup_steps: 0.1'"):
        paper_phase_config("finetune", str(tmp_path), warmup_ratio=0.1)
    with pytest.raises(ValueError, match="warmup_steps must be a whole number of steps or a fraction"):
        MeraSFTConfig(output_dir=str(tmp_path), warmup_steps=2.5)


def test_the_trainer_schedule_starts_from_zero_and_peaks_after_the_warmup(tmp_path):
    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    samples = load_samples(toy_samples(tmp_path, "image", 8))
    args = MeraSFTConfig(
        output_dir=str(tmp_path / "run"), per_device_train_batch_size=1, num_train_epochs=5, learning_rate=1e-3,
        warmup_steps=0.1, disable_tqdm=True,
    )  # fmt: skip
    trainer = MeraSFTTrainer(model, args, samples, processor)
    steps = 5 * len(samples)
    trainer.create_optimizer_and_scheduler(steps)
    rates = []
    for _ in range(steps):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    warmup = math.ceil(0.1 * steps)
    assert rates[0] == 0.0
    assert rates[1] == pytest.approx(1e-3 / warmup)
    assert rates[warmup] == pytest.approx(1e-3) and max(rates) == pytest.approx(1e-3)
    assert torch.tensor(rates[: warmup + 1]).diff().gt(0).all()
