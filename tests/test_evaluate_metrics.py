"""CIDEr-D and the QA judge as `evaluate` metric modules: `evaluate.load(<file>)` gives the loop's scores."""

import json
import os
import subprocess
import sys
from pathlib import Path

import evaluate
import pytest
from test_judges import FakeOpenAIServer, make_judge

import trainers.evaluation.cider_d
import trainers.evaluation.qa_judge
from trainers.evaluation.cider import score_captions
from trainers.evaluation.generation import score_predictions

ROOT = Path(__file__).resolve().parents[1]
CIDER_D_FILE = trainers.evaluation.cider_d.__file__

CAPTION_SAMPLES = [
    {"modality": "image", "media": "a.png", "prompt": "Describe.", "task": "caption", "dataset": "shapes", **fields}
    for fields in (
        {"answer": ["a red circle on the left", "a small red circle"]},
        {"answer": ["a blue square moving up"]},
        {"answer": ["a green triangle", "one green triangle in the middle"]},
        {"answer": "a yellow star"},
    )
]
CAPTIONS = ["a red circle", "a blue square moving down", "the green triangle in the middle", "a star"]


def test_evaluate_load_in_a_fresh_process_gives_the_loops_cider_d(tmp_path):
    loop = score_predictions(CAPTION_SAMPLES, CAPTIONS)["datasets"]["shapes"]
    references = [
        sample["answer"] if isinstance(sample["answer"], list) else [sample["answer"]] for sample in CAPTION_SAMPLES
    ]
    script = (
        "import evaluate, json, sys; m = evaluate.load(sys.argv[1]); "
        "print(json.dumps(m.compute(predictions=json.loads(sys.argv[2]), references=json.loads(sys.argv[3]))))"
    )
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HOME": str(tmp_path / "hf")}
    output = subprocess.run(
        [sys.executable, "-c", script, CIDER_D_FILE, json.dumps(CAPTIONS), json.dumps(references)],
        capture_output=True,
        text=True,
        check=True,
        env=environment,
        cwd=tmp_path,
    ).stdout
    loaded = json.loads(output.strip().splitlines()[-1])
    assert loaded["cider_d"] == pytest.approx(loop["score"], abs=1e-9)
    assert loaded["per_sample"] == pytest.approx(loop["per_sample"], abs=1e-9)
    assert loop["score"] > 0 and len(set(loop["per_sample"])) == 4  # real, differing scores, not a constant


def test_cider_d_module_describes_itself_and_takes_single_references():
    metric = evaluate.load(trainers.evaluation.cider_d.__file__)
    assert metric.name == "cider_d"
    assert "Vedantam" in metric.citation and "CIDEr-D" in metric.description
    assert [set(features) for features in metric.features] == [{"predictions", "references"}] * 2
    single = metric.compute(predictions=["a dog runs", "a cat sleeps"], references=["a dog runs", "a bird flies"])
    assert single["cider_d"] == pytest.approx(
        score_captions(["a dog runs", "a cat sleeps"], ["a dog runs", "a bird flies"])["score"]
    )
    assert single["per_sample"][0] > 0 and single["per_sample"][1] == 0.0


QA_SAMPLES = [
    {"modality": "audio", "media": "a.wav", "task": "qa", "dataset": "beeps", "prompt": prompt, "answer": answer}
    for prompt, answer in (
        ("How many beeps?", "three"),
        ("Is the tone high?", "yes"),
        ("Which colour?", ["red", "crimson"]),
        ("How many?", "two"),
    )
]
ANSWERS = ["3 beeps", "no", "it is crimson", "two"]


def test_qa_judge_module_gives_the_loops_accuracy_with_the_match_judge():
    loop = score_predictions(QA_SAMPLES, ANSWERS, judge="match")["datasets"]["beeps"]
    metric = evaluate.load(trainers.evaluation.qa_judge.__file__)
    assert metric.name == "qa_judge" and "Video-ChatGPT" in metric.citation
    loaded = metric.compute(
        predictions=ANSWERS,
        references=[[a] if isinstance(a, str) else a for a in (s["answer"] for s in QA_SAMPLES)],
        questions=[sample["prompt"] for sample in QA_SAMPLES],
        judge="match",
    )
    assert loaded["accuracy"] == loop["accuracy"] == 0.75
    assert [verdict["correct"] for verdict in loaded["verdicts"]] == [True, False, True, True]
    assert loaded["judge"] == loop["judge"] == "match"


def test_qa_judge_module_is_a_layer_over_the_gpt_judge_and_its_cache(tmp_path):
    pytest.importorskip("openai", reason="the gpt judge needs the `openai` package (eval/test extras)")
    metric = evaluate.load(trainers.evaluation.qa_judge.__file__)
    inputs = dict(
        predictions=["dog", "two", "MALFORMED"],
        references=[["dog"], ["three"], ["cat"]],
        questions=["What animal?", "How many?", "What animal?"],
    )
    with FakeOpenAIServer() as server:
        judge = make_judge(server, tmp_path / "cache.jsonl")
        first = metric.compute(**inputs, judge=judge)
        second = metric.compute(**inputs, judge=make_judge(server, tmp_path / "cache.jsonl"))
        by_name = metric.compute(
            **inputs,
            judge="gpt",
            judge_kwargs={
                "model": "judge-model",
                "base_url": server.base_url,
                "api_key": "not-a-real-key",
                "cache_file": tmp_path / "cache.jsonl",
                "progress": False,
                "client_max_retries": 0,
            },
        )
    assert first["accuracy"] == 0.5 and first["num_failures"] == 1 and first["judge"] == "gpt:judge-model"
    # Verdicts come from the judge's own cache (failures are not cached, so that sample is asked again).
    assert [v["cached"] for v in second["verdicts"]] == [True, True, False]
    assert second["accuracy"] == by_name["accuracy"] == 0.5
