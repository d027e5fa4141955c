"""One MERA stage's pieces: the sample format and collator, the two-phase SFT trainers, realign, replay."""

import json

import numpy as np
import pytest
import torch
from conftest import build_tiny_model, tiny_processor, toy_samples
from datasets import Dataset

from trainers.data import MediaError, MeraDataCollator, load_samples
from trainers.data.replay import ReplayBuffer, replay_count, sample_replay
from trainers.sft import MeraSFTConfig, MeraSFTTrainer, RealignTrainer, llm_lora_config, set_trainable, unwrap_mera


def tiny_args(tmp_path, **overrides) -> MeraSFTConfig:
    settings = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        num_train_epochs=6,
        learning_rate=5e-3,
        warmup_steps=0,
        lr_scheduler_type="constant",
        logging_steps=1,
        seed=0,
        disable_tqdm=True,
    )
    return MeraSFTConfig(**{**settings, **overrides})


@torch.no_grad()
def mean_loss(model, processor, dataset) -> float:
    model.eval()
    batch = MeraDataCollator(processor)(list(dataset))
    return model(**batch).loss.item()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in unwrap_mera(model).state_dict().items()}


def changed_parameters(before: dict, model) -> set[str]:
    after = unwrap_mera(model).state_dict()
    return {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}


def test_collator_masks_prompts_and_batches_mixed_modalities(tmp_path):
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    samples = load_samples(toy_samples(tmp_path, "image", 2) + toy_samples(tmp_path, "audio", 2))
    batch = MeraDataCollator(processor)([samples[0], samples[4], samples[1]])
    assert batch["modality_inputs"]["image"].shape == (2, 3, 32, 32)
    assert batch["modality_inputs"]["audio"].shape == (1, 16, 40)
    for row, sample in enumerate([samples[0], samples[4], samples[1]]):
        answer_ids = processor.encode_answer(sample["answer"])
        labels = batch["labels"][row]
        assert labels[labels != -100].tolist() == answer_ids, "only the answer (and EOS) is learnt"
    placeholder_rows = (batch["input_ids"] == model.config.placeholder_token_ids["image"]).any(dim=1)
    assert placeholder_rows.tolist() == [True, False, True]


def test_missing_media_fails_at_load_time_naming_the_file(tmp_path):
    samples = toy_samples(tmp_path, "image", 3)
    (tmp_path / "image-1.png").unlink()
    data_file = tmp_path / "train.jsonl"
    data_file.write_text("".join(json.dumps({**s, "media": s["media"].split("/")[-1]}) + "\n" for s in samples))
    with pytest.raises(MediaError, match=r"image-1\.png .*no such file"):
        load_samples(data_file)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps({"modality": "image", "media": "image-0.png", "answer": "red"}) + "\n")
    with pytest.raises(ValueError, match=r"broken\.jsonl, row 1: missing field\(s\) \['prompt'\]"):
        load_samples(broken)


def test_llava_conversation_rows_are_read(tmp_path):
    toy_samples(tmp_path, "image", 1)
    row = {
        "id": "x",
        "image": "image-0.png",
        "conversations": [{"from": "human", "value": "<image>\nwhat color ?"}, {"from": "gpt", "value": "red"}],
    }
    (tmp_path / "llava.json").write_text(json.dumps([row]))
    sample = load_samples(tmp_path / "llava.json", task="qa", dataset="toy")[0]
    assert sample["modality"] == "image" and sample["prompt"] == "<image>\nwhat color ?" and sample["answer"] == "red"
    assert sample["media"] == str(tmp_path / "image-0.png") and sample["task"] == "qa"


def test_pretrain_phase_trains_only_the_new_connector_and_lowers_the_loss(tmp_path):
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    data = load_samples(toy_samples(tmp_path, "audio", 6)).filter(lambda s: s["task"] == "caption")
    before, loss_before = snapshot(model), mean_loss(model, processor, data)
    args = tiny_args(tmp_path, trainable=["connector:new"], learning_rate=1e-2, num_train_epochs=10)
    trainer = MeraSFTTrainer(model, args, data, processor)
    assert set(trainer.trainable_counts) == {"connector:new"}
    trainer.train()
    changed = changed_parameters(before, model)
    assert changed and all(name.startswith("model.connectors.audio.") for name in changed)
    # Only 4 query tokens steer a random tiny LLM here: measured 4.06 -> 3.78.
    assert mean_loss(model, processor, data) < 0.95 * loss_before


def test_finetune_phase_trains_the_connector_and_the_llm_lora(tmp_path):
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    data = load_samples(toy_samples(tmp_path, "audio", 6))
    before, loss_before = snapshot(model), mean_loss(model, processor, data)
    args = tiny_args(tmp_path, trainable=["connector:new", "llm:lora"], connector_learning_rate=1e-3)
    trainer = MeraSFTTrainer(model, args, data, processor, peft_config=llm_lora_config(model, r=4, lora_alpha=8))
    trainer.train()
    learning_rates = sorted(group["lr"] for group in trainer.optimizer.param_groups)
    assert learning_rates[0] == pytest.approx(1e-3) and learning_rates[-1] == pytest.approx(5e-3)
    merged = trainer.model.merge_and_unload()
    changed = changed_parameters(before, merged)
    assert any(name.startswith("model.connectors.audio.") for name in changed)
    assert any(name.startswith("model.language_model.") for name in changed)
    unexpected = {n for n in changed if not n.startswith(("model.connectors.audio.", "model.language_model."))}
    assert not unexpected, "encoders, the image connector, embeddings and the head stay bit-identical"
    llm_changed = [name for name in changed if name.startswith("model.language_model.")]
    assert not any("embed_tokens" in n or "norm" in n for n in llm_changed), "LoRA touches linear layers only"
    assert mean_loss(merged, processor, data) < 0.8 * loss_before


def test_realign_trains_every_connector_and_nothing_else(tmp_path):
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    data = load_samples(toy_samples(tmp_path, "image", 3) + toy_samples(tmp_path, "audio", 3))
    before, loss_before = snapshot(model), mean_loss(model, processor, data)
    trainer = RealignTrainer(model, tiny_args(tmp_path, learning_rate=1e-2, num_train_epochs=10), data, processor)
    assert set(trainer.trainable_counts) == {"connectors"}
    trainer.train()
    changed = changed_parameters(before, model)
    assert any(n.startswith("model.connectors.image.") for n in changed)
    assert any(n.startswith("model.connectors.audio.") for n in changed)
    assert all(name.startswith("model.connectors.") for name in changed), "encoders and LLM are bit-identical"
    # Connectors alone steer a random tiny LLM only so far: measured 4.12 -> 3.80.
    assert mean_loss(model, processor, data) < 0.95 * loss_before
    with pytest.raises(ValueError, match="connectors only"):
        RealignTrainer(model, tiny_args(tmp_path, trainable=["llm"]), data, processor)


def test_trainable_names_are_checked():
    model = build_tiny_model(("image",))
    with pytest.raises(ValueError, match="unknown trainable part 'decoder'"):
        set_trainable(model, ["decoder"])
    with pytest.raises(ValueError, match="match no parameter"):
        set_trainable(model, ["connector:audio"])
    with pytest.raises(ValueError, match="no LoRA adapter"):
        set_trainable(model, ["llm:lora"])
    counts = set_trainable(model, ["llm"])
    assert counts["llm"] == sum(p.numel() for p in model.language_model.parameters()) + model.lm_head.weight.numel()


def test_replay_sampling_is_seeded_and_takes_r_percent_rounded_up():
    dataset = Dataset.from_list([{"id": str(i), "stage": 1} for i in range(95)])
    first, again = sample_replay(dataset, 10, seed=3), sample_replay(dataset, 10, seed=3)
    assert first["id"] == again["id"] and len(first) == 10  # ceil(9.5)
    assert sample_replay(dataset, 10, seed=4)["id"] != first["id"]
    assert [replay_count(n, r) for n, r in [(95, 10), (100, 10), (5, 1), (1000, 1), (3, 0), (7, 100)]] == [
        10,
        10,
        1,
        10,
        0,
        7,
    ]
    with pytest.raises(ValueError, match="percentage"):
        replay_count(10, 150)


def test_replay_buffer_rebuilds_the_union_from_disk(tmp_path):
    buffer = ReplayBuffer()
    sizes = {1: 40, 2: 25, 3: 7}
    for stage, size in sizes.items():
        data = Dataset.from_list([{"id": f"{stage}-{i}", "stage": stage} for i in range(size)])
        buffer.add_stage(stage, data, 10, seed=100 + stage)
    buffer.save(tmp_path)
    loaded = ReplayBuffer.load(tmp_path)
    union = loaded.union()
    counts = {stage: union["stage"].count(stage) for stage in sizes}
    assert counts == {1: 4, 2: 3, 3: 1}
    assert union["id"] == buffer.union()["id"]
    assert np.all(np.diff([int(i.split("-")[1]) for i in union["id"][:4]]) > 0), "kept in data order"
