"""Relative Gain (MERA), classic accuracy-matrix metrics, score-matrix validation and the `mera metrics` command."""

import copy
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.cli import main as cli_main
from trainers.evaluation.metrics import (
    ScoreMatrix,
    accuracy_matrix_metrics,
    backward_relative_gain,
    format_report,
    forward_relative_gain,
    mean_and_std,
    plot_progressive_relative_gain,
    relative_gain_matrix,
    summarize,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

MODALITIES = [
    {"name": "image", "datasets": ["MSCOCO", "OK-VQA"]},
    {"name": "video", "datasets": ["MSVD", "MSVD-QA"]},
    {"name": "audio", "datasets": ["AudioCaps", "Clotho-AQA"]},
    {"name": "point", "datasets": ["Cap3D", "Cap3D-QA"]},
]
EXPERTS = {
    "MSCOCO": 120.0, "OK-VQA": 0.5, "MSVD": 140.0, "MSVD-QA": 0.4,
    "AudioCaps": 60.0, "Clotho-AQA": 0.6, "Cap3D": 100.0, "Cap3D-QA": 0.8,
}  # fmt: skip


def paper_fine_tuning_example() -> dict:
    """PAPER.md's worked example (Fine-Tuning, sequential): per-stage BwRG 100, 51.08, 47.99, 39.97.

    Raw scores = expert x ratio; the comments give each modality's Relative Gain, the mean of its two ratios.
    """
    stages = [
        {"MSCOCO": 120.0, "OK-VQA": 0.5},  # image 100
        # image (0.541 + 0.4806) / 2 = 51.08; video (0.94 + 0.98) / 2 = 96
        {"MSCOCO": 64.92, "OK-VQA": 0.2403, "MSVD": 131.6, "MSVD-QA": 0.392},
        # image 40.10, video 55.88 -> BwRG 47.99; audio (0.90 + 0.86) / 2 = 88
        {"MSCOCO": 45.72, "OK-VQA": 0.2105, "MSVD": 84.0, "MSVD-QA": 0.20704, "AudioCaps": 54.0, "Clotho-AQA": 0.516},
        # image 30.55, video 45.00, audio 44.36 -> BwRG 39.97; point (0.95 + 0.93) / 2 = 94
        {
            "MSCOCO": 37.2,
            "OK-VQA": 0.1505,
            "MSVD": 65.8,
            "MSVD-QA": 0.172,
            "AudioCaps": 27.0,
            "Clotho-AQA": 0.26232,
            "Cap3D": 95.0,
            "Cap3D-QA": 0.744,
        },  # fmt: skip
    ]
    return copy.deepcopy({"method": "Fine-Tuning", "modalities": MODALITIES, "experts": EXPERTS, "stages": stages})


def mera_like_example() -> dict:
    """A second method that keeps more of the old modalities, for comparison tables and plots."""
    data = paper_fine_tuning_example()
    data["method"] = "MERA 10%"
    data["stages"] = [
        {name: min(EXPERTS[name], score * (1.8 if i > 0 else 1.0)) for name, score in stage.items()}
        for i, stage in enumerate(data["stages"])
    ]
    return data


def write(tmp_path: Path, name: str, data: dict) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_relative_gains_of_the_worked_example():
    matrix = ScoreMatrix.from_dict(paper_fine_tuning_example())
    backward = backward_relative_gain(matrix)
    assert backward == pytest.approx([100.0, 51.08, 47.99, 39.97], abs=1e-9)
    assert forward_relative_gain(matrix) == pytest.approx([100.0, 96.0, 88.0, 94.0], abs=1e-9)
    mean, std = mean_and_std(backward)
    assert mean == pytest.approx(59.76, abs=1e-9)
    assert std == pytest.approx(27.2321929586, abs=1e-9)  # sample std (n - 1), not population std (23.58)
    rg = relative_gain_matrix(matrix)
    assert rg[0] == pytest.approx([100.0, 51.08, 40.10, 30.55], abs=1e-9)
    assert rg[2][:2] == [None, None] and rg[2][2:] == pytest.approx([88.0, 44.36], abs=1e-9)


def test_stage_one_reports_relative_gain_of_the_first_modality():
    # EProj-like: modality 1 already below its expert at stage 1; the paper reports RelativeGain(1, 1) there.
    data = paper_fine_tuning_example()
    data["stages"][0] = {"MSCOCO": 108.0, "OK-VQA": 0.4}  # ratios 0.9 and 0.8
    matrix = ScoreMatrix.from_dict(data)
    assert backward_relative_gain(matrix)[0] == pytest.approx(85.0)
    assert forward_relative_gain(matrix)[0] == pytest.approx(85.0)


def test_classic_metrics_on_a_hand_computed_accuracy_matrix():
    accuracy = [
        [0.5, None, None],
        [0.9, 0.8, None],  # task 0 improves after stage 2: positive backward transfer
        [0.6, 0.7, 0.85],
    ]
    metrics = accuracy_matrix_metrics(accuracy)
    assert metrics["final_average"] == pytest.approx((0.6 + 0.7 + 0.85) / 3)
    assert metrics["average_accuracy"] == pytest.approx((0.5 + 0.85 + 2.15 / 3) / 3)
    assert metrics["bwt"] == pytest.approx(0.0)  # (+0.1 - 0.1) / 2
    assert metrics["forgetting"] == pytest.approx(0.2)  # ((0.9 - 0.6) + (0.8 - 0.7)) / 2
    assert metrics["per_task"]["bwt"] == pytest.approx([0.1, -0.1, None])
    assert metrics["per_task"]["forgetting"] == pytest.approx([0.3, 0.1, None])

    # Several tasks per stage (two datasets per modality).
    grouped = accuracy_matrix_metrics([[0.8, 0.6, None], [0.4, 0.5, 0.9]], learned_at=[0, 0, 1])
    assert grouped["bwt"] == pytest.approx(((0.4 - 0.8) + (0.5 - 0.6)) / 2)
    assert grouped["final_average"] == pytest.approx(0.6)

    single = accuracy_matrix_metrics([[0.7]])
    assert single["bwt"] is None and single["forgetting"] is None and single["final_average"] == 0.7
    with pytest.raises(ValueError, match=r"accuracy\[1\]\[0\] is missing"):
        accuracy_matrix_metrics([[0.5, None], [None, 0.6]])


def test_summary_has_every_metric():
    summary = summarize(ScoreMatrix.from_dict(paper_fine_tuning_example()))
    for key in ("backward_relative_gain", "forward_relative_gain", "backward_mean", "backward_std"):
        assert key in summary
    # FwRG 100, 96, 88, 94: squared deviations from 94.5 sum to 75; sqrt(75 / 3) = 5.
    assert summary["forward_mean"] == pytest.approx(94.5) and summary["forward_std"] == pytest.approx(5.0)
    assert summary["relative_gain"]["video"][1] == pytest.approx(96.0)
    classic = summary["classic"]  # on the Relative-Gain matrix, tasks = modalities
    assert classic["final_average"] == pytest.approx((30.55 + 45.0 + 44.36 + 94.0) / 4)
    assert classic["bwt"] == pytest.approx(((30.55 - 100) + (45 - 96) + (44.36 - 88)) / 3)
    per_dataset = summary["classic_per_dataset"]
    assert per_dataset["MSCOCO"]["bwt"] == pytest.approx(37.2 - 120.0)
    assert per_dataset["Cap3D"]["bwt"] is None and per_dataset["Cap3D"]["final"] == 95.0


def test_a_run_in_progress_has_fewer_stages_than_modalities():
    data = paper_fine_tuning_example()
    data["stages"] = data["stages"][:2]
    summary = summarize(ScoreMatrix.from_dict(data))
    assert summary["backward_relative_gain"] == pytest.approx([100.0, 51.08])
    assert summary["modalities"] == ["image", "video"]


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda d: d["stages"][2].pop("MSVD-QA"), r"stage 3 lacks dataset\(s\) \['MSVD-QA'\]"),
        (lambda d: d["stages"][1].update({"VQAv2": 0.5}), r"stage 2 has dataset\(s\) \['VQAv2'\] that no modality"),
        (lambda d: d["stages"][0].update({"MSVD": 10.0}), r"stage 1 has dataset\(s\) \['MSVD'\] of a modality not"),
        (lambda d: d["experts"].pop("Cap3D"), r"'experts' lacks the expert score of dataset\(s\) \['Cap3D'\]"),
        (lambda d: d["experts"].update({"Cap3D": -1}), r"expert score of 'Cap3D' is -1; scores cannot be negative"),
        (lambda d: d["experts"].update({"Cap3D": 0, "Cap3D-QA": 0}), r"every expert score of modality '.*' is 0"),
        (lambda d: d["experts"].update({"VQAv2": 1.0}), r"'experts' has dataset\(s\) \['VQAv2'\]"),
        (lambda d: d["stages"][3].update({"MSCOCO": "high"}), r"stage 4: score of 'MSCOCO' must be a finite number"),
        (lambda d: d["stages"].append(dict(d["stages"][-1])), r"5 stages but only 4 modalities"),
        (lambda d: d.update({"stage": []}), r"unknown key\(s\) \['stage'\]"),
    ],
)
def test_inconsistent_score_matrices_name_file_stage_and_dataset(tmp_path, corrupt, message):
    data = paper_fine_tuning_example()
    corrupt(data)
    path = write(tmp_path, "broken.json", data)
    with pytest.raises(ValueError, match=message) as error:
        ScoreMatrix.from_json(path)
    assert str(error.value).startswith(str(path))


def test_a_dataset_whose_expert_scored_zero_is_left_out_of_the_relative_gain():
    data = paper_fine_tuning_example()
    data["experts"]["Cap3D"] = 0
    matrix = ScoreMatrix.from_dict(data)
    last = len(matrix.modalities) - 1
    expected = 100.0 * data["stages"][last]["Cap3D-QA"] / data["experts"]["Cap3D-QA"]
    assert matrix.relative_gain(last, last) == pytest.approx(expected)
    assert summarize(matrix)["excluded_datasets"] == ["Cap3D"]


def test_cli_prints_the_worked_example(tmp_path, capsys):
    path = write(tmp_path, "finetune.json", paper_fine_tuning_example())
    assert cli_main(["metrics", str(path)]) == 0
    output = capsys.readouterr().out
    backward_line = next(line for line in output.splitlines() if line.startswith("Backward Relative Gain"))
    assert backward_line.split()[-6:] == ["100.00", "51.08", "47.99", "39.97", "59.76", "27.23"]
    assert "Fine-Tuning" in output and "Forward Relative Gain" in output


def test_cli_as_a_subprocess(tmp_path):
    path = write(tmp_path, "finetune.json", paper_fine_tuning_example())
    out_json = tmp_path / "out" / "summary.json"
    # The `mera` console script exists after `pip install -e .`; otherwise run the same entry point as a module.
    command = ["mera"] if shutil.which("mera") else [sys.executable, "-m", "recipes.cli"]
    run = subprocess.run(
        [*command, "metrics", str(path), "--json", str(out_json)], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert run.returncode == 0, run.stderr
    assert "59.76" in run.stdout and "27.23" in run.stdout
    summary = json.loads(out_json.read_text())["methods"][0]
    assert summary["backward_mean"] == pytest.approx(59.76) and summary["backward_std"] == pytest.approx(27.2321929586)
    assert summary["backward_relative_gain"] == pytest.approx([100.0, 51.08, 47.99, 39.97])

    to_stdout = subprocess.run(
        [*command, "metrics", str(path), "--json", "-"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert json.loads(to_stdout.stdout)["methods"][0]["forward_mean"] == pytest.approx(94.5)

    broken = paper_fine_tuning_example()
    del broken["stages"][1]["OK-VQA"]
    bad_path = write(tmp_path, "broken.json", broken)
    failed = subprocess.run([*command, "metrics", str(bad_path)], capture_output=True, text=True, cwd=REPO_ROOT)
    assert failed.returncode == 2
    assert f"{bad_path}: stage 2 lacks dataset(s) ['OK-VQA']" in failed.stderr


def test_cli_refuses_to_overwrite_an_input(tmp_path, capsys):
    path = write(tmp_path, "finetune.json", paper_fine_tuning_example())
    assert cli_main(["metrics", str(path), "--json", str(path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert json.loads(path.read_text())["method"] == "Fine-Tuning"


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    return struct.unpack(">II", header[16:24])


def test_cli_compares_two_methods_in_a_table_and_a_plot(tmp_path, capsys):
    finetune = write(tmp_path, "finetune.json", paper_fine_tuning_example())
    mera = write(tmp_path, "mera.json", mera_like_example())
    plot = tmp_path / "relative_gain.png"
    assert cli_main(["metrics", str(finetune), str(mera), "--plot", str(plot)]) == 0
    output = capsys.readouterr().out
    comparison = output.split("\n\n")[-1]
    assert "BwRG mean" in comparison and "Fine-Tuning" in comparison and "MERA 10%" in comparison

    width, height = png_size(plot)
    assert 800 <= width <= 2000 and 300 <= height <= 1200
    assert plot.stat().st_size > 20_000  # two panels with lines, ticks and legends, not a blank canvas


def test_a_smoke_test_is_marked_in_the_matrix_the_tables_and_the_plot(tmp_path):
    data = {**mera_like_example(), "smoke_test": True}
    matrix = ScoreMatrix.from_dict(data)
    assert matrix.smoke_test and matrix.to_dict()["smoke_test"] is True
    assert "smoke_test" not in ScoreMatrix.from_dict(mera_like_example()).to_dict()
    smoke, real = summarize(matrix), summarize(ScoreMatrix.from_dict(paper_fine_tuning_example()))
    assert smoke["smoke_test"] and not real["smoke_test"]

    report = format_report([smoke, real])
    assert report.count("smoke test — figures are not meaningful") == 1  # above the smoke test's own table
    assert "SMOKE TEST — FIGURES ARE NOT MEANINGFUL" in report.split("\n\n")[-1]  # and above the comparison
    assert "smoke test" not in format_report([real]).lower()
    assert format_report([smoke], compare_only=True).splitlines()[0] == "SMOKE TEST — FIGURES ARE NOT MEANINGFUL"

    plot = plot_progressive_relative_gain([smoke, real], tmp_path / "smoke.png")
    assert b"smoke test \xe2\x80\x94 figures are not meaningful" in plot.read_bytes()  # PNG title metadata
    clean = plot_progressive_relative_gain([real], tmp_path / "real.png")
    assert b"smoke test" not in clean.read_bytes()
