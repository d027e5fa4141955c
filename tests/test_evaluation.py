"""Generation-based evaluation: batched greedy decoding per modality, per-dataset scores, the JSON written."""

import json

import pytest
from conftest import build_tiny_model, tiny_processor, toy_samples

from trainers.data import read_media
from trainers.evaluation.cider import compute_cider
from trainers.evaluation.generation import evaluate_model, generate_predictions, score_predictions
from trainers.evaluation.metrics import ScoreMatrix


@pytest.fixture(scope="module")
def model_and_samples(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    model = build_tiny_model(("image", "audio", "point_cloud"))
    samples = []
    for modality in ("image", "audio", "point_cloud"):
        for sample in toy_samples(folder / modality, modality, count=3):
            samples.append({**sample, "dataset": f"{modality}-{sample['task']}"})
    # Interleave modalities so that per-modality batching has to restore the original order.
    samples = samples[::2] + samples[1::2]
    return model, tiny_processor(model), samples


def test_batched_greedy_decoding_equals_one_sample_at_a_time(model_and_samples):
    model, processor, samples = model_and_samples
    batched = generate_predictions(model, processor, samples, batch_size=4, max_new_tokens=5, progress=False)
    single = generate_predictions(model, processor, samples, batch_size=1, max_new_tokens=5, progress=False)
    assert batched == single
    assert len(batched) == len(samples) and all(isinstance(text, str) for text in batched)
    assert any(batched), "the tiny model should produce some words"

    # Each prediction continues its own prompt: compare with one plain greedy `generate` on that sample alone.
    sample = samples[3]
    kind = processor.config.modalities[sample["modality"]]["kind"]
    placeholder = processor.config.modalities[sample["modality"]]["placeholder"]
    prompt = f"{placeholder}\n{sample['prompt']}"
    batch = processor(prompt, media={sample["modality"]: read_media(sample["media"], kind)})
    output = model.generate(**batch, max_new_tokens=5, do_sample=False, pad_token_id=0)
    expected = processor.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True).strip()
    assert batched[3] == expected


def test_score_predictions_per_dataset():
    samples = [
        {"modality": "image", "media": "a.png", "prompt": "Describe.", "task": "caption", "dataset": "caps",
         "answer": ["a red square", "a red box"]},
        {"modality": "image", "media": "b.png", "prompt": "Describe.", "task": "caption", "dataset": "caps",
         "answer": ["a green circle", "a green ring"]},
        {"modality": "image", "media": "a.png", "prompt": "How many?", "task": "qa", "dataset": "qa",
         "answer": "two"},
        {"modality": "image", "media": "b.png", "prompt": "Which color?", "task": "qa", "dataset": "qa",
         "answer": ["green", "lime"]},
    ]  # fmt: skip
    predictions = ["a red square", "a blue star", "2", "It is lime."]
    result = score_predictions(samples, predictions, judge="match")

    corpus, _ = compute_cider(predictions[:2], [samples[0]["answer"], samples[1]["answer"]])
    assert result["scores"]["caps"] == pytest.approx(100 * corpus)
    assert result["scores"]["qa"] == 1.0
    qa = result["datasets"]["qa"]
    assert qa["judge"] == "match" and qa["num_failures"] == 0 and qa["task"] == "qa" and qa["modality"] == "image"
    assert len(result["datasets"]["caps"]["per_sample"]) == 2

    with pytest.raises(ValueError, match="mixes tasks"):
        score_predictions([{**samples[0], "dataset": "qa"}, samples[2]], predictions[:2], judge="match")
    with pytest.raises(ValueError, match=r"missing field\(s\) \['answer'\]"):
        score_predictions([{**samples[0], "answer": []}], ["x"], judge="match")


def test_evaluate_model_writes_predictions_and_scores(model_and_samples, tmp_path):
    model, processor, samples = model_and_samples
    model.train()
    output_file = tmp_path / "eval" / "stage-3.json"
    result = evaluate_model(
        model, processor, samples, judge="match", batch_size=3, max_new_tokens=4, output_file=output_file,
        progress=False,
    )  # fmt: skip
    assert model.training, "evaluation must give the model back in the mode it found it"
    model.eval()
    written = json.loads(output_file.read_text())
    assert written["scores"] == pytest.approx(result["scores"])
    datasets = {sample["dataset"] for sample in samples}
    assert set(written["scores"]) == datasets
    assert [p["id"] for p in written["predictions"]] == [s["id"] for s in samples]
    for name, details in written["datasets"].items():
        assert details["num_samples"] == 3
        assert details["metric"] == ("cider" if name.endswith("caption") else "accuracy")
        if details["task"] == "qa":
            assert details["judge"] == "match"
    assert not list(tmp_path.glob("eval/*.tmp"))

    # The scores are, as they are, one stage of a score matrix.
    order = ["image", "audio", "point_cloud"]
    modalities = [{"name": name, "datasets": [f"{name}-caption", f"{name}-qa"]} for name in order]
    experts = {name: max(score, 1.0) for name, score in result["scores"].items()}
    stages = [
        {name: score for name, score in result["scores"].items() if name.rsplit("-", 1)[0] in order[: stage + 1]}
        for stage in range(3)
    ]
    matrix = ScoreMatrix.from_dict({"method": "tiny", "modalities": modalities, "experts": experts, "stages": stages})
    assert matrix.num_stages == 3


def test_unknown_modality_is_reported_before_generation(model_and_samples):
    model, processor, samples = model_and_samples
    with pytest.raises(ValueError, match="modality 'video' is not in the model"):
        generate_predictions(model, processor, [{**samples[0], "modality": "video"}], progress=False)
