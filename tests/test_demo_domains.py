"""The domain benchmark of `mera demo --scenario domain`: four image domains, QA only, each its own words."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest

from trainers.demo import DOMAINS, build_benchmark, read_split


def test_four_image_domains_each_with_its_own_questions_and_answer_words(tmp_path):
    manifest = build_benchmark(tmp_path / "domains", modalities=DOMAINS, train_per_modality=24, test_per_modality=12,
                               progress=False)  # fmt: skip
    answers, questions = {}, {}
    for name in DOMAINS:
        entry = manifest["modalities"][name]
        assert entry["modality"] == "image" and entry["datasets"] == {f"{name}-qa": "exact_match"}
        assert entry["samples"] == {"train": 24, "test": 12} and entry["caption_prompt"] is None
        rows = read_split(tmp_path / "domains", name, "train")
        assert {row["task"] for row in rows} == {"qa"} and {row["modality"] for row in rows} == {"image"}
        answers[name] = {row["answer"] for row in rows}
        questions[name] = {row["prompt"] for row in rows}
        # Within each question every answer is equally frequent: ignoring the picture gives chance, no better.
        for question in questions[name]:
            counts = Counter(row["answer"] for row in rows if row["prompt"] == question)
            assert max(counts.values()) - min(counts.values()) <= 1, (name, question, counts)
        assert entry["majority_baseline"]["test"] <= 0.5
    for name in DOMAINS:
        others = set().union(*(answers[other] | questions[other] for other in DOMAINS if other != name))
        assert not answers[name] & others, f"{name}'s answer words are its own"
        assert not questions[name] & others


@pytest.mark.slow
def test_mera_demo_domain_quick_runs_tasks_on_one_image_modality(tmp_path):
    command = [sys.executable, "-m", "recipes.cli", "demo", "--scenario", "domain", "--quick", "--out",
               str(tmp_path), "--methods", "fine_tuning,mr_lora"]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "domain"
    results = json.loads((out / "results.json").read_text())
    assert results["scenario"] == "domain" and set(results["methods"]) == {"fine_tuning", "mr_lora"}
    for summary in results["methods"].values():
        accuracy = summary["accuracy_matrix"]
        assert accuracy["datasets"] == [f"{name}-qa" for name in DOMAINS] and len(accuracy["matrix"]) == 4
        assert isinstance(accuracy["final_average"], float) and isinstance(accuracy["bwt"], float)
        assert summary["kind"] == "tasks" and summary["modalities"] == list(DOMAINS)
    scores = json.loads((out / "scores" / "mr_lora.json").read_text())
    assert [task["modality"] for task in scores["tasks"]] == ["image"] * 4 and len(scores["experts"]) == 4
    stage = json.loads(next(out.glob("runs/*/mr_lora/stage-4/stage.json")).read_text())
    assert stage["tasks"] == list(DOMAINS) and stage["modalities"] == ["image"]
    assert "skipped" in stage["log"]["pretrain"]
    assert (out / "accuracy.png").read_bytes().startswith(b"\x89PNG")
    # The console prints one comparison (the accuracy matrices themselves are in results.json and accuracy.png).
    assert all(column in result.stdout for column in ("final avg", "avg stages", "BWT", "forgetting"))
