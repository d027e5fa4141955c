"""MLLM-CL's accuracy-matrix metrics over tasks (domains, abilities), with and without experts, in `mera metrics`."""

import json

import pytest

from recipes.cli import main as cli_main
from trainers.evaluation.metrics import ScoreMatrix, format_report, plot_accuracy_matrix, summarize

TASKS = [
    {"name": "RS", "modality": "image", "datasets": ["RS"]},
    {"name": "Med", "modality": "image", "datasets": ["Med"]},
    {"name": "AD", "modality": "image", "datasets": ["AD"]},
]
STAGES = [{"RS": 0.9}, {"RS": 0.5, "Med": 0.8}, {"RS": 0.3, "Med": 0.6, "AD": 0.7}]


def test_accuracy_matrix_figures_by_hand_without_experts():
    summary = summarize(ScoreMatrix.from_dict({"method": "Fine-Tuning", "tasks": TASKS, "stages": STAGES}))
    accuracy = summary["accuracy_matrix"]
    assert accuracy["datasets"] == ["RS", "Med", "AD"]
    assert accuracy["matrix"] == [[0.9, None, None], [0.5, 0.8, None], [0.3, 0.6, 0.7]]
    assert accuracy["final_average"] == pytest.approx((0.3 + 0.6 + 0.7) / 3)
    assert accuracy["average_accuracy"] == pytest.approx((0.9 + (0.5 + 0.8) / 2 + (0.3 + 0.6 + 0.7) / 3) / 3)
    assert accuracy["bwt"] == pytest.approx(((0.3 - 0.9) + (0.6 - 0.8)) / 2)
    assert accuracy["forgetting"] == pytest.approx(((0.9 - 0.3) + (0.8 - 0.6)) / 2)
    assert accuracy["expert_average"] is None
    assert summary["kind"] == "tasks" and summary["modalities"] == ["RS", "Med", "AD"]
    assert summary["backward_relative_gain"] is None and summary["classic"] is None
    report = format_report([summary])
    assert "Accuracy matrix" in report and "Relative Gain" not in report
    assert "final average 0.53, average over stages 0.69, BWT -0.40, forgetting 0.40" in report


def test_relative_gain_beside_the_accuracy_matrix_when_experts_exist():
    data = {"method": "MR-LoRA", "tasks": TASKS, "experts": {"RS": 1.0, "Med": 0.8, "AD": 0.7}, "stages": STAGES}
    summary = summarize(ScoreMatrix.from_dict(data))
    assert summary["accuracy_matrix"]["expert_average"] == pytest.approx(2.5 / 3)
    assert summary["forward_relative_gain"] == pytest.approx([90.0, 100.0, 100.0])
    assert summary["relative_gain"]["RS"] == pytest.approx([90.0, 50.0, 30.0])
    assert ScoreMatrix.from_dict(data).to_dict()["tasks"] == TASKS


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(modalities=d["tasks"]), "not both"),
        (lambda d: d["tasks"].append(dict(d["tasks"][0])), "task names repeat"),
        (lambda d: d.update(experts={"RS": 1.0}), r"'experts' lacks the expert score of dataset\(s\) \['Med', 'AD'\]"),
        (lambda d: d["stages"].append({}), "4 stages but only 3 tasks"),
    ],
)
def test_task_matrices_are_validated(change, message):
    data = json.loads(json.dumps({"tasks": TASKS, "stages": STAGES}))
    change(data)
    with pytest.raises(ValueError, match=message):
        ScoreMatrix.from_dict(data)


def test_mera_metrics_prints_and_plots_a_task_matrix(tmp_path, capsys):
    path = tmp_path / "ft.json"
    path.write_text(json.dumps({"method": "Fine-Tuning", "tasks": TASKS, "stages": STAGES}))
    other = tmp_path / "replay.json"
    other.write_text(
        json.dumps(
            {
                "method": "Replay",
                "tasks": TASKS,
                "stages": [{"RS": 0.9}, {"RS": 0.8, "Med": 0.8}, {"RS": 0.7, "Med": 0.7, "AD": 0.7}],
            }
        )
    )
    assert cli_main(["metrics", str(path), str(other), "--json", str(tmp_path / "all.json")]) == 0
    printed = capsys.readouterr().out
    assert "Accuracy matrix" in printed and "avg stages" in printed
    methods = json.loads((tmp_path / "all.json").read_text())["methods"]
    assert [m["accuracy_matrix"]["final_average"] for m in methods] == pytest.approx([1.6 / 3, 0.7])
    png = plot_accuracy_matrix([summarize(ScoreMatrix.from_json(p)) for p in (path, other)], tmp_path / "acc.png")
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 10_000


def test_a_task_runs_stage_score_matrix_for_its_model_card(tmp_path):
    """The Hub card reads a run's eval files: in a task run, stage j's task holds the test sets first scored then."""
    from trainers.hub import stage_score_matrix

    for index, scores in enumerate(STAGES, start=1):
        stage = tmp_path / f"stage-{index}"
        stage.mkdir()
        tasks = [task["name"] for task in TASKS[:index]]
        (stage / "stage.json").write_text(json.dumps({"stage": index, "modalities": ["image"], "tasks": tasks}))
        details = {name: {"modality": "image", "task": "qa"} for name in scores}
        (tmp_path / "eval").mkdir(exist_ok=True)
        (tmp_path / "eval" / f"stage-{index}.json").write_text(json.dumps({"scores": scores, "datasets": details}))
    (tmp_path / "run_config.json").write_text(json.dumps({"method": "fine_tuning"}))
    matrix = stage_score_matrix(tmp_path, 3)
    assert matrix["tasks"] == TASKS and matrix["stages"] == STAGES and matrix["experts"] == {}
    summary = summarize(ScoreMatrix.from_dict(matrix))
    assert summary["accuracy_matrix"]["final_average"] == pytest.approx(1.6 / 3)
