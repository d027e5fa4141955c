"""The demo's benchmark, tiny language model and encoders: deterministic, balanced, input-dependent, pluggable."""

import filecmp
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoModelForCausalLM, AutoTokenizer

import trainers.demo.language_model as language_model_module
from modeling_mera import MeraForCausalLM, MeraProcessor
from modeling_mera.encoders import encode_modality
from trainers.data import MeraDataCollator, load_samples, read_media, read_wav
from trainers.demo import (
    MODALITIES,
    build_benchmark,
    build_tokenizer,
    chance_accuracy,
    demo_modality_entries,
    demo_modality_specs,
    majority_baseline,
    pretrained_language_model,
    pretraining_report,
    read_split,
    text_loss,
)
from trainers.demo.benchmark import COLORS, NUMBER_WORDS, PITCHES, SYNTHETIC_MODALITIES
from trainers.demo.language_model import TinyLlamaSettings, benchmark_texts

SMALL = {"train_per_modality": 12, "test_per_modality": 8}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """The benchmark at its default size (what `mera demo` trains on); building it takes about a second."""
    folder = tmp_path_factory.mktemp("demo") / "benchmark"
    build_benchmark(folder, seed=0, progress=False)
    return folder


@pytest.fixture(scope="module")
def language_model(demo_dir, tmp_path_factory) -> Path:
    return pretrained_language_model(tmp_path_factory.mktemp("lm-cache"), demo_dir, seed=0, progress=False)


def all_rows(folder: Path, modalities=MODALITIES) -> list[dict]:
    return [row for name in modalities for split in ("train", "test") for row in read_split(folder, name, split)]


def file_tree(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


# --- the benchmark -------------------------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files_and_another_seed_does_not(tmp_path):
    first = build_benchmark(tmp_path / "a", seed=3, progress=False, **SMALL)
    second = build_benchmark(tmp_path / "b", seed=3, progress=False, **SMALL)
    build_benchmark(tmp_path / "c", seed=4, progress=False, **SMALL)
    assert first == second
    names = file_tree(tmp_path / "a")
    assert names == file_tree(tmp_path / "b") == file_tree(tmp_path / "c")
    assert len(names) == 1 + 4 * (2 + 12 + 8), "manifest, two JSONL files and one media file per item"
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / "a", tmp_path / "b", names, shallow=False)
    assert mismatch == [] and errors == []
    _, mismatch, _ = filecmp.cmpfiles(tmp_path / "a", tmp_path / "c", names, shallow=False)
    media = [name for name in names if "/media/" in name]
    assert set(media) <= set(mismatch), "every media file depends on the seed"


def test_rebuild_reuses_a_finished_benchmark_and_refuses_other_settings(tmp_path):
    folder = tmp_path / "benchmark"
    build_benchmark(folder, progress=False, **SMALL)
    manifest_time = (folder / "manifest.json").stat().st_mtime_ns
    build_benchmark(folder, progress=False, **SMALL)
    assert (folder / "manifest.json").stat().st_mtime_ns == manifest_time
    with pytest.raises(FileExistsError, match="test_per_modality"):
        build_benchmark(folder, progress=False, train_per_modality=12, test_per_modality=12)
    build_benchmark(folder, progress=False, train_per_modality=12, test_per_modality=12, overwrite=True)
    assert len(read_split(folder, "audio", "test")) == 2 * 12
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a demo benchmark"):
        build_benchmark(tmp_path / "other", progress=False, **SMALL)


def test_counts_datasets_and_media_load_through_the_sample_loader(demo_dir):
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    assert manifest["settings"]["seed"] == 0
    expected_shapes = {"video": (4, 32, 32, 3), "point_cloud": (256, 6)}
    for name in MODALITIES:
        for split, items in (("train", 240), ("test", 48)):
            samples = load_samples(demo_dir / name / f"{split}.jsonl")  # checks that every media file exists
            assert len(samples) == 2 * items == manifest["modalities"][name]["samples"][split]
            assert Counter(samples["dataset"]) == {f"{name}-caption": items, f"{name}-qa": items}
            assert Counter(zip(samples["dataset"], samples["task"])) == {
                (f"{name}-caption", "caption"): items,
                (f"{name}-qa", "qa"): items,
            }
            assert set(samples["modality"]) == {name}
            assert len(set(samples["media"])) == items, "a caption and a QA sample per media item"
            media = read_media(samples[0]["media"], name)
            if name == "image":
                assert media.size == (32, 32) and media.mode == "RGB"
            elif name == "audio":
                waveform, rate = media
                assert rate == 16000 and waveform.shape == (16000,)
            else:
                assert media.shape == expected_shapes[name]
                assert media.dtype == (np.uint8 if name == "video" else np.float32)
    assert manifest["modalities"]["audio"]["datasets"] == {"audio-caption": "cider", "audio-qa": "exact_match"}


def test_each_modality_has_its_own_wording_and_answer_style(demo_dir):
    caption_prompts = {
        name: {r["prompt"] for r in all_rows(demo_dir, [name]) if r["task"] == "caption"} for name in MODALITIES
    }
    assert all(len(prompts) == 1 for prompts in caption_prompts.values())
    assert len(set.union(*caption_prompts.values())) == 4
    questions = [{r["prompt"] for r in all_rows(demo_dir, [name]) if r["task"] == "qa"} for name in MODALITIES]
    assert sum(len(q) for q in questions) == len(set.union(*questions)) == 10, "no question is asked of two modalities"
    caption_openings = {
        name: {" ".join(r["answer"].split()[:2]) for r in all_rows(demo_dir, [name]) if r["task"] == "caption"}
        for name in MODALITIES
    }
    assert caption_openings["image"] == {"a picture"} and caption_openings["point_cloud"] == {"a 3d"}


def test_content_words_are_shared_across_modalities(demo_dir):
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    words = {name: set(manifest["modality_vocabulary"][name]) for name in MODALITIES}
    content = set(COLORS) | set(NUMBER_WORDS[1:4]) | {"circle", "square", "triangle"}
    shared = {word for word in content if sum(word in words[name] for name in MODALITIES) > 1}
    print(
        f"shared words: {len(manifest['shared_words'])} of {len(manifest['vocabulary'])}: {manifest['shared_words']}"
    )
    assert shared == content, "colours, numbers and shape names each appear in two modalities or more"
    assert all(set(COLORS) <= words[name] for name in ("image", "video", "point_cloud"))
    assert set(NUMBER_WORDS[1:4]) <= words["image"] & words["audio"]
    for name in MODALITIES:
        others = set.union(*(words[other] for other in MODALITIES if other != name))
        assert len(words[name] & others & (content | {"shape", "color"})) >= 3, name
    assert set(manifest["shared_words"]) == {
        w for w in manifest["vocabulary"] if sum(w in words[n] for n in MODALITIES) > 1
    }


# --- questions need the input ----------------------------------------------------------------------------------------
def nearest_color(rgb) -> str:
    return min(COLORS, key=lambda name: np.linalg.norm(np.array(COLORS[name]) - rgb))


def shape_of(mask: np.ndarray) -> str:
    """A drawn shape from how much of its bounding box it fills: square ~1, circle ~0.75, triangle ~0.5."""
    ys, xs = np.nonzero(mask)
    fill = mask.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
    return "square" if fill > 0.9 else "triangle" if fill < 0.62 else "circle"


def read_image(path) -> dict:
    pixels = np.asarray(Image.open(path).convert("RGB")).astype(float)
    mask = pixels.max(-1) > 100
    half = mask.shape[0] // 2
    quadrants = [mask[:half, :half], mask[:half, half:], mask[half:, :half], mask[half:, half:]]
    occupied = [quadrant for quadrant in quadrants if quadrant.sum() > 5]
    return {
        "count": NUMBER_WORDS[len(occupied)],
        "color": nearest_color(pixels[mask].mean(0)),
        "shape": shape_of(occupied[0]),
    }


def read_video(path) -> dict:
    clip = np.load(path).astype(float)
    masks = clip.max(-1) > 100
    dy, dx = np.argwhere(masks[-1]).mean(0) - np.argwhere(masks[0]).mean(0)
    direction = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
    return {"direction": direction, "color": nearest_color(clip[masks].mean(0)), "shape": shape_of(masks[0])}


def read_audio(path) -> dict:
    waveform, rate = read_wav(str(path))
    spectrum = np.abs(np.fft.rfft(waveform))
    peak = np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()]
    window = rate // 100
    envelope = np.abs(waveform[: len(waveform) // window * window]).reshape(-1, window).max(1)
    loud = envelope > 0.5 * envelope.max()
    return {
        "count": NUMBER_WORDS[int((loud[1:] & ~loud[:-1]).sum() + loud[0])],
        "pitch": min(PITCHES, key=lambda name: abs(np.log(PITCHES[name] / peak))),
    }


def read_point_cloud(path) -> dict:
    cloud = np.load(path)
    xyz = cloud[:, :3] - (cloud[:, :3].min(0) + cloud[:, :3].max(0)) / 2
    radius, radius_xy, z = np.linalg.norm(xyz, axis=1), np.linalg.norm(xyz[:, :2], axis=1), xyz[:, 2]
    side = np.abs(z) < 0.8 * np.abs(z).max()
    if radius.std() / radius.mean() < 0.05:
        shape = "sphere"
    elif np.corrcoef(z, radius_xy)[0, 1] < -0.35:  # narrower towards the top
        shape = "cone"
    else:
        shape = "cylinder" if radius_xy[side].std() / radius_xy[side].mean() < 0.06 else "cube"
    return {"shape": shape, "color": nearest_color(cloud[:, 3:].mean(0) * 255)}


MEDIA_READERS = {"image": read_image, "video": read_video, "audio": read_audio, "point_cloud": read_point_cloud}


def test_answers_are_a_function_of_the_media(demo_dir):
    """Each row's answer follows from its attributes, and a hand-written signal reader recovers them from the media."""
    for name in MODALITIES:
        synthetic = SYNTHETIC_MODALITIES[name]
        questions = {question.prompt: question for question in synthetic.questions}
        for row in all_rows(demo_dir, [name]):
            attributes = row["attributes"]
            if row["task"] == "caption":
                assert row["answer"] == synthetic.caption(attributes)
            else:
                assert row["answer"] == attributes[questions[row["prompt"]].attribute]
            if row["task"] == "qa":
                assert MEDIA_READERS[name](demo_dir / name / row["media"]) == attributes, row["id"]


def test_input_ignoring_answers_score_at_chance(demo_dir):
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    for name in MODALITIES:
        train, test = read_split(demo_dir, name, "train"), read_split(demo_dir, name, "test")
        chance = chance_accuracy(name)
        best_constant = majority_baseline(test)[f"{name}-qa"]
        from_train = majority_baseline(test, reference=train)[f"{name}-qa"]
        print(f"{name}-qa: chance {chance:.3f}, best constant answer per question {best_constant:.3f}")
        assert best_constant <= chance + 0.05 and from_train <= chance + 0.05
        assert chance <= 1 / 3 + 1e-9
        assert manifest["modalities"][name]["majority_baseline"]["test"] == pytest.approx(best_constant)
        for split in (train, test):
            by_question: dict[str, Counter] = {}
            for row in split:
                if row["task"] == "qa":
                    by_question.setdefault(row["prompt"], Counter())[row["answer"]] += 1
            for question, answers in by_question.items():
                attribute = manifest["modalities"][name]["questions"][question]
                assert set(answers) == set(manifest["modalities"][name]["attributes"][attribute])
                assert max(answers.values()) - min(answers.values()) <= 1, f"{question}: {answers}"
        captions = Counter(row["answer"] for row in test if row["task"] == "caption")
        assert max(captions.values()) / len(test) * 2 <= 0.15, "no caption covers much of the test set"
        assert manifest["modalities"][name]["constant_caption_cider"] < 400, "perfect captions score 1000"


# --- tokenizer and language model ---------------------------------------------------------------------------------
def test_tokenizer_round_trips_every_text_word_for_word(demo_dir, tmp_path):
    manifest = json.loads((demo_dir / "manifest.json").read_text())
    tokenizer = build_tokenizer(manifest["vocabulary"])
    assert len(tokenizer) == 4 + len(manifest["vocabulary"])
    assert [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id] == [
        0,
        1,
        2,
        3,
    ]
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    texts = sorted({row[key] for row in all_rows(demo_dir) for key in ("prompt", "answer")})
    for tok in (tokenizer, reloaded):
        for text in texts:
            ids = tok(text)["input_ids"]
            assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids
            assert len(ids) == 1 + len(text.split()), "one token per word"
            assert tok.decode(ids, skip_special_tokens=True) == text
    assert reloaded.decode(reloaded("a zebra")["input_ids"]) == "<s> a <unk>"


def test_language_model_learns_the_benchmark_language_and_is_cached(demo_dir, language_model, monkeypatch):
    folder = language_model
    report = pretraining_report(folder)
    before, after = report["text_loss_before"], report["text_loss_after"]
    print(
        f"tiny LM: {report['parameters']} parameters, {report['seconds']:.1f} s; text loss (nats/token) train"
        f" {before['train']:.3f} -> {after['train']:.3f}, test {before['test']:.3f} -> {after['test']:.3f};"
        f" entropy floor {report['entropy_floor']:.3f}, uniform {report['uniform_loss']:.3f}"
    )
    accuracy = report["test_answer_accuracy"]
    print(f"test answers right with the attribute words in front: {accuracy}")
    assert before["train"] > report["uniform_loss"] - 0.3, "training starts from an untrained model"
    assert after["train"] < report["entropy_floor"] + 0.15 and after["test"] < report["entropy_floor"] + 0.15
    assert accuracy["with_context_words"] > 0.95, "it reads a description from its context"
    assert accuracy["without_context_words"] < 0.3, "without one, it cannot know the answer"
    # What keeps pre-training to seconds, as behaviour rather than a clock (CI runs on busy machines): a fixed
    # number of optimiser steps over a model of a fixed, tiny size.
    assert report["settings"]["steps"] == TinyLlamaSettings().steps == 300
    assert report["parameters"] < 2_000_000

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert not model.config.tie_word_embeddings and model.config.model_type == "llama"
    assert text_loss(model, tokenizer, benchmark_texts(demo_dir, "test")) == pytest.approx(after["test"], abs=1e-4)
    for name in MODALITIES:  # from the caption prompt alone, it writes a caption in the modality's own style
        prompt = SYNTHETIC_MODALITIES[name].caption_prompt
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        output = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        caption = tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)
        captions = {row["answer"] for row in read_split(demo_dir, name, "train") if row["task"] == "caption"}
        assert caption in captions, (name, caption)

    weights = folder / "model.safetensors"
    modified = weights.stat().st_mtime_ns
    with monkeypatch.context() as patch:  # the cached model is reused: no pre-training step runs
        patch.setattr(language_model_module, "pretrain", lambda *args, **kwargs: pytest.fail("pre-trained again"))
        assert pretrained_language_model(folder.parent, demo_dir, seed=0, progress=False) == folder
    assert weights.stat().st_mtime_ns == modified, "the cached model is reused"
    assert pretrained_language_model(folder.parent, demo_dir, seed=0, steps=5, progress=False) != folder


def test_language_model_is_deterministic(tmp_path):
    texts = ["describe the sound . a high tone beeps once", "how many beeps do you hear ? two"] * 8
    first = pretrained_language_model(tmp_path / "a", texts, seed=1, steps=8, progress=False)
    second = pretrained_language_model(tmp_path / "b", texts, seed=1, steps=8, progress=False)
    third = pretrained_language_model(tmp_path / "c", texts, seed=2, steps=8, progress=False)
    assert first.name == second.name != third.name
    assert (first / "model.safetensors").read_bytes() == (second / "model.safetensors").read_bytes()
    assert (first / "model.safetensors").read_bytes() != (third / "model.safetensors").read_bytes()
    assert os.listdir(tmp_path / "a") == [first.name], "no temporary folder is left behind"


# --- encoders --------------------------------------------------------------------------------------------------------
def test_encoder_specs_plug_into_the_model_and_features_depend_on_the_input(demo_dir, language_model, tmp_path):
    lm_folder = language_model
    torch.manual_seed(0)
    model = MeraForCausalLM.from_language_model(str(lm_folder))
    processor = MeraProcessor(AutoTokenizer.from_pretrained(lm_folder), model.config)
    specs = demo_modality_specs(tmp_path / "cache", seed=0, benchmark=demo_dir)
    assert list(specs) == list(MODALITIES)
    assert {spec.connector["type"] for name, spec in specs.items() if name != "audio"} == {"mlp"}
    assert specs["audio"].connector["type"] == "qformer"
    for name, spec in specs.items():
        model.add_modality(
            name, kind=spec.kind, connector=spec.connector, encoder_weights=spec.encoder_weights, **spec.options
        )
        processor.config = model.config
        processor.add_modality(name, spec.feature_processor)
    assert {name: model.config.modality(name).num_tokens for name in MODALITIES} == {
        "image": 16,
        "video": 16,
        "audio": 8,
        "point_cloud": 17,
    }
    assert not any(p.requires_grad for p in model.encoders.parameters())

    samples = [load_samples(demo_dir / name / "test.jsonl")[0] for name in MODALITIES]
    batch = MeraDataCollator(processor)(samples)
    loss = model(**batch).loss
    assert torch.isfinite(loss) and loss.item() > 0

    model.eval()
    for name in MODALITIES:
        rows = [row for row in read_split(demo_dir, name, "test") if row["task"] == "qa"]
        first = rows[0]
        other = next(row for row in rows if all(row["attributes"][k] != v for k, v in first["attributes"].items()))
        items = [read_media(str(demo_dir / name / row["media"]), name) for row in (first, other, first)]
        with torch.no_grad():
            inputs = processor.prepare_modality(name, items)
            features = encode_modality(name, model.encoders[name], model.config.modality(name), inputs)
        difference = (features[0] - features[1]).norm() / features[0].norm()
        print(f"{name}: relative feature difference of two different items {difference:.3f}")
        assert difference > 0.2, name
        assert torch.equal(features[0], features[2])


def test_encoders_are_drawn_from_the_seed_and_cached(tmp_path):
    entries = demo_modality_entries(tmp_path / "a", seed=0)
    again = demo_modality_entries(tmp_path / "b", seed=0)
    other = demo_modality_entries(tmp_path / "c", seed=1)
    weights = {
        name: [Path(e["encoder_weights"]) / "model.safetensors" for e in group]
        for name, group in (("a", entries), ("b", again), ("c", other))
    }
    for a, b, c in zip(*weights.values()):
        assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    assert entries[0]["encoder_weights"] == entries[1]["encoder_weights"], "image and video share one CLIP tower"
    modified = weights["a"][0].stat().st_mtime_ns
    demo_modality_entries(tmp_path / "a", seed=0)
    assert weights["a"][0].stat().st_mtime_ns == modified

    # The same entries are the runner's YAML form of the modalities.
    from trainers.continual import build_stage_plan
    from trainers.settings import ContinualConfig

    config = ContinualConfig(
        language_model="unused",
        modalities=[
            {**entry, "train": f"{entry['name']}/train.jsonl", "test": f"{entry['name']}/test.jsonl"}
            for entry in entries
        ],
    )
    plan = build_stage_plan(config)
    assert [step.spec.name for step in plan] == list(MODALITIES)
    assert type(plan[2].spec.feature_processor).__name__ == "WhisperFeatureExtractor"
