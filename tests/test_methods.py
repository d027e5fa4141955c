"""The method registry and the simple baselines: Replay's data, EProj's frozen LLM, a realign after any method."""

import json
from dataclasses import replace

import pytest
import torch
from conftest import build_tiny_model, tiny_processor, toy_samples
from datasets import Dataset
from test_stage import SPECS, tiny_settings

import trainers.stage as stage_loop
from trainers.checkpoint import load_stage
from trainers.data import MeraDataCollator, load_samples
from trainers.data.replay import ReplayBuffer
from trainers.methods import METHODS, check_method_settings, get_method_plugins, register_method
from trainers.methods.mera import REPLAY_DRAW, RealignPlugin
from trainers.plugins import StagePlugin
from trainers.settings import ContinualConfig
from trainers.stage import run_stage

PAPER_TABLE = {"fine_tuning", "replay", "ewc", "eproj", "pathweave", "mera", "merge_only", "realign_only", "mr_lora"}


def test_registry_resolves_every_method_and_refuses_what_it_cannot_run():
    assert PAPER_TABLE <= set(METHODS)
    assert [p.name for p in get_method_plugins("mera")] == ["merge", "realign"]
    assert [p.name for p in get_method_plugins("replay")] == ["replay"]
    with pytest.raises(ValueError, match=r"unknown method 'lwf'; known methods: \['eproj', 'ewc', 'fine_tuning'"):
        get_method_plugins("lwf")
    # --realign_ratio R appends MERA's realign step to any method that can take one.
    config = ContinualConfig(method="ewc", realign_ratio=1.0, method_args={"ewc_lambda": 0.5})
    plugins = get_method_plugins("ewc", config)
    assert [p.name for p in plugins] == ["ewc", "realign"]
    assert plugins[0].ewc_lambda == 0.5 and plugins[1].realign_ratio == 1.0
    with pytest.raises(ValueError, match="'mr_lora' cannot be followed by a realign step"):
        get_method_plugins("mr_lora", ContinualConfig(realign_ratio=1.0))
    with pytest.raises(ValueError, match="'mera' already realigns"):
        get_method_plugins("mera", ContinualConfig(realign_ratio=1.0))
    with pytest.raises(ValueError, match=r"method_args \['lambda'\] are not settings of method 'ewc'"):
        get_method_plugins("ewc", ContinualConfig(method_args={"lambda": 3}))
    assert get_method_plugins("ewc", ContinualConfig(method_args={"fisher_percent": 5}))[0].fisher_percent == 5


def test_a_user_method_registered_from_outside_runs_in_the_stage_loop(tmp_path):
    class FreezeLLM(StagePlugin):
        name = "freeze_llm"

        def configure_finetune(self, ctx):
            ctx.peft_config, ctx.finetune_trainable = None, ["connector:new"]

    @register_method("connector_only_test")
    def connector_only(config=None):
        return [FreezeLLM()]

    try:
        with pytest.raises(ValueError, match="already registered"):
            register_method("connector_only_test")(connector_only)
        base = build_tiny_model(())
        data = load_samples(toy_samples(tmp_path / "data", "image", 4))
        plugins = get_method_plugins("connector_only_test", ContinualConfig(realign_ratio=12.5))
        output = run_stage(
            base, tiny_processor(base), SPECS["image"], data, tmp_path / "s1", 1, plugins, tiny_settings()
        )
    finally:
        METHODS.pop("connector_only_test")
    info = json.loads((output / "stage.json").read_text())
    assert info["plugins"] == ["freeze_llm", "realign"]
    assert "realign" not in info["log"]  # stage 1: one modality, nothing to realign
    assert "connector_only_test" not in METHODS


def test_realign_ratio_takes_r_percent_of_every_stage_out_of_the_replay_pool():
    buffer = ReplayBuffer()
    for stage, count in ((1, 40), (2, 100)):
        rows = [{"id": f"{stage}-{i}", "modality": "image"} for i in range(count)]
        buffer.add_stage(stage, Dataset.from_list(rows), 10.0, seed=stage)
    ctx = type("Ctx", (), {"replay": buffer, "settings": replace(tiny_settings(), replay_ratio=10.0), "stage": 2})()
    subset = RealignPlugin(realign_ratio=5.0).realign_set(ctx)
    ids = subset["id"]
    assert sum(i.startswith("1-") for i in ids) == 2 and sum(i.startswith("2-") for i in ids) == 5
    assert set(ids) <= set(buffer.union()["id"])
    assert RealignPlugin().realign_set(ctx)["id"] == buffer.union()["id"]  # no ratio: the whole pool (10%)
    assert RealignPlugin(realign_ratio=10.0).realign_set(ctx)["id"] == buffer.union()["id"]
    with pytest.raises(ValueError, match="50.0% of stage 1 needs 20 samples but the replay buffer keeps 4"):
        RealignPlugin(realign_ratio=50.0).realign_set(ctx)
    # Replay draws 5% from the same pool independently of realign's 5%.
    replay_ids = buffer.subset(5.0, 0, purpose=REPLAY_DRAW)["id"]
    assert len(replay_ids) == 7 and replay_ids != ids


def test_mispaired_realign_pairs_carry_another_samples_media():
    rows = [{"id": f"{m}-{i}", "modality": m, "media": f"{m}/{i}.png"} for m in ("image", "audio") for i in range(20)]
    buffer = ReplayBuffer()
    buffer.add_stage(1, Dataset.from_list(rows), 100.0, seed=0)
    ctx = type("Ctx", (), {"replay": buffer, "settings": replace(tiny_settings(), replay_ratio=100.0), "stage": 2})()
    noisy = RealignPlugin(mispaired_percent=50.0).realign_set(ctx)
    assert sum(noisy["mispaired"]) == 20
    for sample in noisy:
        own = f"{sample['modality']}/{sample['id'].split('-')[1]}.png"
        assert (sample["media"] != own) == sample["mispaired"]
        assert sample["media"].startswith(sample["modality"] + "/")  # media of the same modality
    assert sum(RealignPlugin(mispaired_percent=10.0).realign_set(ctx)["mispaired"]) == 4


def test_method_settings_are_refused_before_anything_is_written():
    cases = {
        "unknown method 'meera'": ContinualConfig(method="meera"),
        r"method_args \['fisher_pct'\] are not settings of method 'ewc'": ContinualConfig(
            method="ewc", method_args={"fisher_percent": 1, "fisher_pct": 2}
        ),
        "EWC needs ewc_lambda >= 0, fisher_percent in": ContinualConfig(
            method="ewc", method_args={"fisher_percent": 0}
        ),
        "mispaired_percent must be a percentage": ContinualConfig(
            method="mera", method_args={"mispaired_percent": 120}
        ),
        "realign_ratio must be a percentage in": ContinualConfig(method="replay", realign_ratio=150),
        "replay_ratio must be a percentage in": ContinualConfig(method="replay", replay_ratio=0),
        "'mera' already realigns": ContinualConfig(method="mera", realign_ratio=10),
    }
    for message, config in cases.items():
        with pytest.raises(ValueError, match=message):
            check_method_settings(config)
    # Replay 1% + Realign 10%: the buffer keeps 10%, replay draws 1% and realign 10% of it.
    config = ContinualConfig(method="replay", replay_ratio=1, realign_ratio=10)
    replay_plugin, realign_plugin = check_method_settings(config)
    assert (replay_plugin.ratio_percent, realign_plugin.realign_ratio) == (1, 10)
    assert config.stage_settings().replay_ratio == 10.0


def test_replay_batches_mix_old_stages_in_the_stated_proportion(tmp_path, monkeypatch):
    seen: list[tuple[str, str]] = []  # (phase, modality) of every sample a batch held
    phase = {"name": None}
    original_phase, original_call = stage_loop._train_phase, MeraDataCollator.__call__

    def tracing_phase(ctx, name, *args, **kwargs):
        phase["name"] = name
        return original_phase(ctx, name, *args, **kwargs)

    def tracing_call(self, samples):
        seen.extend((phase["name"], sample["modality"]) for sample in samples)
        return original_call(self, samples)

    monkeypatch.setattr(stage_loop, "_train_phase", tracing_phase)
    monkeypatch.setattr(MeraDataCollator, "__call__", tracing_call)
    base = build_tiny_model(())
    settings = tiny_settings()  # replay_ratio 25%: ceil(0.25 x 8) = 2 samples per earlier stage
    image = load_samples(toy_samples(tmp_path / "data", "image", 4, seed=1))
    audio = load_samples(toy_samples(tmp_path / "data", "audio", 4, seed=2))
    stage1 = run_stage(base, tiny_processor(base), SPECS["image"], image, tmp_path / "s1", 1,
                       get_method_plugins("replay"), settings)  # fmt: skip
    seen.clear()
    stage2 = run_stage(stage1, None, SPECS["audio"], audio, tmp_path / "s2", 2, get_method_plugins("replay"), settings)

    finetune = [modality for name, modality in seen if name == "finetune"]
    # Two epochs over D_2 (8 audio samples) ∪ 25% of D_1 (2 image samples): 4 of 20 samples seen are old, 20%.
    assert len(finetune) == 20 and finetune.count("image") == 4
    assert finetune.count("image") / len(finetune) == pytest.approx(2 / (8 + 2))
    assert all(modality == "audio" for name, modality in seen if name == "pretrain")
    info = json.loads((stage2 / "stage.json").read_text())
    assert info["log"]["replay"] == {"ratio_percent": 25, "new_samples": 8, "old_samples": 2}
    assert info["log"]["finetune"]["samples"] == 10
    # The old samples are exactly stage 1's kept replay samples.
    _, _, replay = load_stage(stage2)
    assert replay.stages[1]["id"] == load_stage(stage1)[2].stages[1]["id"] and len(replay.stages[1]) == 2


def test_eproj_keeps_every_llm_weight_bit_identical_across_stages(tmp_path):
    base = build_tiny_model(())
    llm_before = {
        k: v.clone() for k, v in base.state_dict().items() if k.startswith(("model.language_model.", "lm_head."))
    }
    previous, stages = base, []
    for stage, modality in enumerate(("image", "audio"), start=1):
        data = load_samples(toy_samples(tmp_path / "data", modality, 4, seed=stage))
        processor = tiny_processor(base) if stage == 1 else None
        previous = run_stage(previous, processor, SPECS[modality], data, tmp_path / f"s{stage}", stage,
                             get_method_plugins("eproj"), tiny_settings())  # fmt: skip
        stages.append(load_stage(previous)[0].state_dict())
    for state in stages:
        assert not any("lora_" in key for key in state)
        for key, value in llm_before.items():
            assert torch.equal(state[key], value), key
    # Only modality-specific parts learn: the image connector trained at stage 1 and stayed put at stage 2.
    image_connector = [key for key in stages[0] if key.startswith("model.connectors.image.")]
    assert image_connector and all(torch.equal(stages[0][key], stages[1][key]) for key in image_connector)
    fresh = build_tiny_model(("image",))  # same seed: the connector as initialised
    assert any(not torch.equal(stages[0][key], fresh.state_dict()[key]) for key in image_connector)
