"""The data path: per-sample preparation once per phase, and the exact, bounded cache of frozen-encoder outputs."""

import pytest
import torch
from conftest import build_tiny_model, tiny_processor, toy_samples
from datasets import Dataset

from modeling_mera.encoders import encode_modality
from trainers.data import MeraDataCollator, load_samples, read_media
from trainers.data.conversations import encode_samples
from trainers.data.feature_cache import EncoderFeatureCache
from trainers.sft import MeraSFTConfig, MeraSFTTrainer, unwrap_mera


def mixed_samples(tmp_path, modalities=("image", "audio", "point_cloud"), count=3):
    return list(load_samples([s for m in modalities for s in toy_samples(tmp_path / m, m, count)]))


def test_per_sample_preparation_equals_the_processor_on_the_whole_batch(tmp_path):
    model = build_tiny_model(("image", "audio", "point_cloud"))
    processor = tiny_processor(model)
    samples = mixed_samples(tmp_path)
    batch = [samples[i] for i in (0, 7, 13, 2, 8, 15, 1)]
    collator = MeraDataCollator(processor)
    expected = encode_samples(processor, batch)
    for _ in range(2):  # the second call is served from the collator's memory
        got = collator(batch)
        for key in ("input_ids", "attention_mask", "labels"):
            assert torch.equal(got[key], expected[key])
        assert set(got["modality_inputs"]) == set(expected["modality_inputs"])
        for name, tensor in expected["modality_inputs"].items():
            assert torch.equal(got["modality_inputs"][name], tensor), name
    assert len(collator._memo) == len(batch)


def test_cached_features_are_bit_equal_and_feed_the_connector(tmp_path):
    model = build_tiny_model(("image", "audio", "point_cloud"))
    processor = tiny_processor(model)
    samples = mixed_samples(tmp_path, count=4)
    cache = EncoderFeatureCache(tmp_path / "cache")
    encoded = cache.fill(model, processor, samples)
    assert encoded == {"image": 4, "audio": 4, "point_cloud": 4}, "each media item once (caption and QA share it)"
    assert cache.fill(model, processor, samples) == {}, "a second fill encodes nothing"
    for name in ("image", "audio", "point_cloud"):
        items = [s for s in samples if s["modality"] == name][::2]
        inputs = processor.prepare_modality(name, [read_media(s["media"], name) for s in items])
        with torch.no_grad():
            direct = encode_modality(name, model.encoders[name], model.config.modality(name), inputs)
        cached = torch.stack([cache.lookup(s) for s in items])
        assert torch.equal(cached, direct), name
    # The model takes the cached features in place of raw inputs: the same logits, bit for bit.
    batch = samples[:4]
    raw = MeraDataCollator(processor)(batch)
    from_cache = MeraDataCollator(processor, feature_cache=cache)(batch)
    assert set(from_cache["modality_inputs"]["image"]) == {"encoder_features"}
    with torch.no_grad():
        assert torch.equal(model(**raw).logits, model(**from_cache).logits)


def test_processes_fill_disjoint_shares(tmp_path):
    """Under several processes each encodes every n-th missing item: together all of them, each once."""
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    samples = mixed_samples(tmp_path, ("image", "audio"), count=5)
    shares = [EncoderFeatureCache(tmp_path / "cache").fill(model, processor, samples, index, 2) for index in (0, 1)]
    assert shares == [{"image": 3, "audio": 3}, {"image": 2, "audio": 2}]
    cache = EncoderFeatureCache(tmp_path / "cache")
    assert cache.fill(model, processor, samples) == {}, "every item is stored"
    assert all(cache.lookup(sample) is not None for sample in samples)


def test_cache_keys_follow_encoder_weights_and_preprocessing(tmp_path):
    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    cache = EncoderFeatureCache(tmp_path / "cache")
    first = cache.namespace(model, processor, "image")
    assert cache.namespace(model, processor, "image") == first
    with torch.no_grad():
        next(model.encoders["image"].parameters()).add_(1e-3)
    changed_weights = cache.namespace(model, processor, "image")
    assert changed_weights != first
    processor.modality_processors["image"].image_mean = [0.0, 0.0, 0.0]
    assert cache.namespace(model, processor, "image") not in (first, changed_weights)
    # Not cached: an encoder that trains, or one whose training mode differs (dropout).
    model.encoders["image"].requires_grad_(True)
    assert cache.namespace(model, processor, "image") is None
    model.encoders["image"].requires_grad_(False)
    model.encoders["image"].config.attention_dropout = 0.1
    assert cache.namespace(model, processor, "image") is None


def test_cache_stays_within_its_size_limit(tmp_path):
    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    samples = mixed_samples(tmp_path, ("image",), count=6)
    per_item = 16 * 32 * 4 + 1024  # tokens x encoder hidden size x fp32 + file overhead
    cache = EncoderFeatureCache(tmp_path / "cache", max_bytes=4 * per_item)
    cache.fill(model, processor, samples)
    files = list((tmp_path / "cache").glob("*/*.pt"))
    assert 0 < len(files) <= 4
    assert sum(f.stat().st_size for f in files) <= 4 * per_item
    # Items that did not fit are encoded in the batch as before: the batch is still exact.
    collator = MeraDataCollator(processor, feature_cache=cache)
    batch = collator(samples[:12:2])
    assert torch.is_tensor(batch["modality_inputs"]["image"]), "a batch mixing stored and missing items: raw"
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, model(**MeraDataCollator(processor)(samples[:12:2])).logits)


def _train(tmp_path, samples, feature_cache_dir):
    model = build_tiny_model(("image", "point_cloud"))
    model.encoders.requires_grad_(True)  # as from_pretrained leaves them: the trainer's trainable set freezes them
    processor = tiny_processor(model)
    args = MeraSFTConfig(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        num_train_epochs=3,
        learning_rate=5e-3,
        warmup_steps=0,
        seed=0,
        disable_tqdm=True,
        trainable=["connectors"],
        feature_cache_dir=feature_cache_dir,
    )
    trainer = MeraSFTTrainer(model, args, Dataset.from_list(samples), processor)
    result = trainer.train()
    return result.training_loss, unwrap_mera(trainer.model).state_dict(), trainer.feature_cache


def test_training_with_and_without_the_cache_is_identical(tmp_path):
    samples = mixed_samples(tmp_path, ("image", "point_cloud"), count=6)
    loss_raw, state_raw, _ = _train(tmp_path / "raw", samples, None)
    loss_cached, state_cached, cache = _train(tmp_path / "cached", samples, str(tmp_path / "cache"))
    assert cache.encoded == 12 and cache.hits == 24, "each item encoded once; every sample served from the cache"
    assert loss_cached == loss_raw
    for name, tensor in state_raw.items():
        assert torch.equal(tensor, state_cached[name]), name


def test_a_batch_norm_encoder_is_cached_only_while_frozen():
    from trainers.data.feature_cache import training_invariant

    model = build_tiny_model(("point_cloud",))
    encoder = model.encoders["point_cloud"]
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in encoder.modules())
    assert training_invariant(encoder), "frozen, Point-BERT keeps its batch norms in evaluation mode"
    encoder.requires_grad_(True)
    assert not training_invariant(encoder), "trainable, its batch norms use batch statistics in training mode"
    assert encoder.training is False, "the check leaves the encoder's mode as it was"


def _batches(trainer) -> list[dict]:
    return list(trainer.get_train_dataloader())


def test_group_by_length_batches_mixed_modalities_by_their_token_count(tmp_path):
    """transformers' `group_by_length` sampler on raw samples: the collator measures them (placeholders expanded),
    and a mixed realign-style set pads far less than with random batches; every sample is still seen once."""
    model = build_tiny_model(("image", "audio", "point_cloud"))
    processor = tiny_processor(model)
    samples = mixed_samples(tmp_path, count=8)  # 48 samples: caption and QA of 8 items per modality
    collator = MeraDataCollator(processor)
    lengths = {s["modality"]: set() for s in samples}
    for sample in samples:
        lengths[sample["modality"]].add(collator.sample_length(sample))
    assert len({min(v) for v in lengths.values()}) == 3, f"the modalities' lengths should differ: {lengths}"

    padding = {}
    for strategy in ("random", "group_by_length"):
        args = MeraSFTConfig(
            output_dir=str(tmp_path / strategy),
            per_device_train_batch_size=4,
            seed=0,
            disable_tqdm=True,
            train_sampling_strategy=strategy,
        )
        trainer = MeraSFTTrainer(model, args, Dataset.from_list(samples), processor)
        assert ("length" in trainer.train_dataset.column_names) == (strategy == "group_by_length")
        batches = _batches(trainer)
        assert sum(len(b["input_ids"]) for b in batches) == len(samples)
        padding[strategy] = sum(int((b["attention_mask"] == 0).sum()) for b in batches)
        if strategy == "group_by_length":
            measured = sorted(trainer.train_dataset["length"])
            assert measured == sorted(collator.sample_length(s) for s in samples)
    assert padding["group_by_length"] < padding["random"] / 2, padding


def test_group_by_length_without_lengths_or_a_measuring_collator_is_refused(tmp_path):
    model = build_tiny_model(("image",))
    processor = tiny_processor(model)
    samples = mixed_samples(tmp_path, ("image",), count=2)
    args = MeraSFTConfig(
        output_dir=str(tmp_path / "run"), disable_tqdm=True, train_sampling_strategy="group_by_length"
    )
    with pytest.raises(ValueError, match="group_by_length.*needs a 'length' column or a collator that measures"):
        MeraSFTTrainer(model, args, Dataset.from_list(samples), processor, data_collator=lambda batch: batch)


def test_dataloader_workers_deliver_the_same_batches(tmp_path):
    """Preprocessing in dataloader worker processes (`dataloader_num_workers`), with and without the feature cache:
    the batches are those the training process would have built itself."""
    model = build_tiny_model(("image", "audio"))
    processor = tiny_processor(model)
    samples = mixed_samples(tmp_path, ("image", "audio"), count=4)
    for cache in (None, str(tmp_path / "cache")):
        batches = {}
        for workers in (0, 2):
            args = MeraSFTConfig(
                output_dir=str(tmp_path / f"w{workers}"),
                per_device_train_batch_size=4,
                seed=0,
                disable_tqdm=True,
                dataloader_num_workers=workers,
                feature_cache_dir=cache,
            )
            batches[workers] = _batches(MeraSFTTrainer(model, args, Dataset.from_list(samples), processor))
        assert len(batches[0]) == len(batches[2]) == 4
        for one, other in zip(batches[0], batches[2]):
            assert torch.equal(one["input_ids"], other["input_ids"]) and torch.equal(one["labels"], other["labels"])
            for name, inputs in one["modality_inputs"].items():
                got = other["modality_inputs"][name]
                if isinstance(inputs, dict):
                    assert all(torch.equal(inputs[key], got[key]) for key in inputs), name
                else:
                    assert torch.equal(inputs, got), name


def test_evaluation_reads_the_cache_and_predicts_the_same(tmp_path):
    """Generation with the feature cache: the same predictions, and each test item encoded once (its caption and
    question share it) instead of once per prompt."""
    from trainers.evaluation.generation import generate_predictions

    model = build_tiny_model(("image", "audio", "point_cloud")).requires_grad_(False)
    processor = tiny_processor(model)
    samples = mixed_samples(tmp_path, count=3)  # 3 items per modality, 2 prompts each
    plain = generate_predictions(model, processor, samples, batch_size=4, max_new_tokens=4, progress=False)
    cache = EncoderFeatureCache(tmp_path / "cache")
    cached = generate_predictions(
        model, processor, samples, batch_size=4, max_new_tokens=4, progress=False, feature_cache=cache
    )
    assert cached == plain and len(set(plain)) > 1
    assert cache.encoded == 9 and cache.hits == len(samples) and cache.misses == 0
