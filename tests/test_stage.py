"""`run_stage`: a whole MERA stage (pre-train, fine-tune, merge, realign) from θ(i-1) to θi, saved atomically."""

import json

import pytest
import torch
from conftest import (
    QFORMER,
    build_tiny_model,
    tiny_audio_processor,
    tiny_clip_config,
    tiny_image_processor,
    tiny_point_bert_config,
    tiny_processor,
    tiny_whisper_config,
    toy_samples,
)

import trainers.stage as stage_loop
from modeling_mera import MeraForCausalLM
from trainers.checkpoint import adapter_format_of, load_stage
from trainers.data import load_samples
from trainers.settings import PHASES, ModalitySpec, StageSettings
from trainers.stage import run_stage

TINY_PHASE = {"warmup_steps": 0, "logging_steps": 1, "disable_tqdm": True}

SPECS = {
    "image": ModalitySpec(
        "image",
        encoder_config=tiny_clip_config(),
        feature_processor=tiny_image_processor(),
        options={"feature_layer": -2, "feature_select_strategy": "default"},
    ),
    "audio": ModalitySpec(
        "audio",
        encoder_config=tiny_whisper_config(),
        connector=QFORMER,
        feature_processor=tiny_audio_processor(),
        options={"max_audio_seconds": 1.0},
    ),
    "point_cloud": ModalitySpec("point_cloud", encoder_config=tiny_point_bert_config(), options={"num_points": 64}),
}


def tiny_settings() -> StageSettings:
    shape = {f"{phase}_{name}": value for phase in PHASES
             for name, value in (("per_device_train_batch_size", 4), ("num_train_epochs", 2))}  # fmt: skip
    return StageSettings(
        **shape,
        pretrain_learning_rate=1e-2,
        finetune_learning_rate=5e-3,
        finetune_connector_learning_rate=1e-3,
        realign_learning_rate=1e-3,
        pretrain_args=TINY_PHASE,
        finetune_args=TINY_PHASE,
        realign_args=TINY_PHASE,
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        replay_ratio=25,
        seed=0,
    )


def test_three_stages_of_run_stage(tmp_path):
    base = build_tiny_model(())
    processor = tiny_processor(base)
    previous = base
    for stage, modality in enumerate(("image", "audio", "point_cloud"), start=1):
        data = load_samples(toy_samples(tmp_path / "data", modality, 4, seed=stage))
        output = run_stage(
            previous,
            processor if stage == 1 else None,
            SPECS[modality],
            data,
            tmp_path / f"stage-{stage}",
            settings=tiny_settings(),
        )
        info = json.loads((output / "stage.json").read_text())
        assert info["stage"] == stage and info["modality"] == modality
        assert info["plugins"] == ["merge", "realign"]
        if stage == 1:  # one modality: nothing to merge with, nothing to realign
            assert "merge" not in info["log"] and "realign" not in info["log"]
        else:
            assert info["log"]["merge"]["coefficient"] == pytest.approx(1 / stage)
            # R_i holds ceil(25% of 8) = 2 samples of each stage so far, the current one included.
            assert info["log"]["realign"]["samples"] == 2 * stage
        # Each phase's wall-clock and process CPU seconds; realign is the realign plug-in's after_stage (which has
        # nothing to do at stage 1).
        phases = info["log"]["phase_seconds"]
        assert set(phases) == {"pretrain", "finetune", "merge", "save", "realign"}
        assert all(t["wall"] >= 0 and t["cpu"] >= 0 for t in phases.values())
        assert phases["finetune"]["cpu"] > 0
        assert not (tmp_path / f"stage-{stage}.partial").exists()
        previous = output

    model, processor, replay = load_stage(tmp_path / "stage-3")
    assert model.modalities == ["image", "audio", "point_cloud"]
    assert sorted(replay.stages) == [1, 2, 3]
    batch = processor(
        ["<image> describe", "<audio> describe", "<point_cloud> describe"],
        media=[
            {"image": torch.zeros(32, 32, 3, dtype=torch.uint8).numpy()},
            {"audio": torch.zeros(16000).numpy()},
            {"point_cloud": torch.rand(100, 3).numpy()},
        ],
        padding_side="left",
    )
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert batch["input_ids"].shape[1] < generated.shape[1] <= batch["input_ids"].shape[1] + 3
    # The saved stage is a plain checkpoint: from_pretrained alone gives the same model.
    reloaded = MeraForCausalLM.from_pretrained(tmp_path / "stage-3")
    torch.testing.assert_close(reloaded(**batch).logits, model(**batch).logits, rtol=0, atol=0)


def test_stage_errors_stop_before_training(tmp_path):
    base = build_tiny_model(())
    processor = tiny_processor(base)
    image_data = load_samples(toy_samples(tmp_path / "data", "image", 2))
    with pytest.raises(ValueError, match=r"stage 2 cannot follow a checkpoint of 0 stage\(s\)"):
        run_stage(base, processor, SPECS["image"], image_data, tmp_path / "s", stage=2, settings=tiny_settings())
    with pytest.raises(ValueError, match="learns 'audio' but its training data also holds modalities \\['image'\\]"):
        run_stage(base, processor, SPECS["audio"], image_data, tmp_path / "s", settings=tiny_settings())
    assert base.modalities == [] and not (tmp_path / "s").exists()
    output = run_stage(base, processor, SPECS["image"], image_data, tmp_path / "s", settings=tiny_settings())
    with pytest.raises(FileExistsError, match="never re-trained"):
        run_stage(base, processor, SPECS["image"], image_data, output, settings=tiny_settings())
    with pytest.raises(ValueError, match="task 'image' was already learnt"):
        run_stage(output, None, SPECS["image"], image_data, tmp_path / "s2", settings=tiny_settings())


def test_the_loop_refuses_an_unknown_hook():
    with pytest.raises(ValueError, match="unknown plug-in hook 'after_merge'"):
        stage_loop._call([], "after_merge", None)


def test_a_stage_records_its_adapter_format_by_import_path():
    info = {"adapter_format": "pathweave", "adapter_format_class": "trainers.methods.pathweave.PathWeaveFormat"}
    assert type(adapter_format_of(info)).__name__ == "PathWeaveFormat"
    assert type(adapter_format_of({"adapter_format": "mr_lora"})).__name__ == "MRLoraFormat"  # an older stage.json
    assert adapter_format_of({"log": {}}) is None
    with pytest.raises(ValueError, match="'trainers.settings.StageSettings' is not an AdapterFormat"):
        adapter_format_of({"adapter_format_class": "trainers.settings.StageSettings"})
    with pytest.raises(ValueError, match="'trainers.methods.nothing.Format' cannot be imported"):
        adapter_format_of({"adapter_format_class": "trainers.methods.nothing.Format"})
    with pytest.raises(ValueError, match="unknown adapter_format 'lora_bank'"):
        adapter_format_of({"adapter_format": "lora_bank"})


def test_mera_stage_one_is_the_fine_tuning_stage_one(tmp_path):
    # The paper's MERA stage-1 scores equal the expert's: stage 1 neither merges (θ1,merged = θ1,vanilla) nor
    # realigns (one modality), so it is the same model as plain fine-tuning's.
    data = load_samples(toy_samples(tmp_path / "data", "image", 4))
    stages = {}
    for name, plugins in (("fine_tuning", []), ("mera", None)):
        base = build_tiny_model(())
        output = run_stage(base, tiny_processor(base), SPECS["image"], data, tmp_path / name, plugins=plugins,
                           settings=tiny_settings())  # fmt: skip
        stages[name] = load_stage(output)[0].state_dict()
    assert stages["mera"].keys() == stages["fine_tuning"].keys()
    for key, tensor in stages["fine_tuning"].items():
        assert torch.equal(stages["mera"][key], tensor), key


def test_two_stages_with_the_feature_cache_train_the_same_weights(tmp_path):
    """A run's `feature_cache` reaches every phase (pre-train, fine-tune, realign on the previous stage's items):
    the stages' weights are bit-equal to those trained without it, and stage 2 encodes no stage-1 item again."""
    from dataclasses import replace

    from trainers.sft import phase_config

    cache = tmp_path / "features"
    settings = replace(tiny_settings(), feature_cache=str(cache), feature_cache_gb=0.5)
    realign = phase_config(settings, "realign", tmp_path)
    assert (realign.feature_cache_dir, realign.feature_cache_gb) == (str(cache), 0.5)
    weights = {}
    for label, run_settings in (("plain", tiny_settings()), ("cached", settings)):
        previous = build_tiny_model(())
        processor = tiny_processor(previous)
        for stage, modality in enumerate(("image", "point_cloud"), start=1):
            data = load_samples(toy_samples(tmp_path / "data", modality, 4, seed=stage))
            output = tmp_path / label / f"stage-{stage}"
            run_stage(previous, processor if stage == 1 else None, SPECS[modality], data, output,
                      settings=run_settings)  # fmt: skip
            previous = output
        weights[label] = load_stage(previous)[0].state_dict()
    assert weights["plain"].keys() == weights["cached"].keys()
    assert all(torch.equal(weights["plain"][k], weights["cached"][k]) for k in weights["plain"]), "bit-equal"
    folders = sorted(path.name.split("-")[0] for path in cache.iterdir())
    assert folders == ["image", "point_cloud"], "one key per encoder: the loaded stage's image encoder hashes alike"
    assert len(list(cache.glob("image-*/*.pt"))) == 4 and len(list(cache.glob("point_cloud-*/*.pt"))) == 4
