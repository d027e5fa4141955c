"""`mera study`: the grid, stage fingerprints, reuse across cells, resuming a killed study, and its report."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import write_tiny_run

from trainers.continual import build_stage_plan
from trainers.settings import ContinualConfig
from trainers.study import Study, build_grid, stage_fingerprints
from trainers.study.grid import FINGERPRINTS

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def tiny_config(folder: Path) -> ContinualConfig:
    return ContinualConfig(**yaml.safe_load(write_tiny_run(folder).read_text()))


def keys(config: ContinualConfig, **changes) -> list[str]:
    config = replace(config, **changes)
    return [entry["stage"] for entry in stage_fingerprints(config, build_stage_plan(config))]


def test_fingerprints_tell_which_stages_are_the_same(tmp_path):
    config = tiny_config(tmp_path)
    fine_tuning, mera = keys(config, method="fine_tuning"), keys(config, method="mera")
    # Stage 1 of MERA neither merges nor realigns: it is Fine-Tuning's stage 1, and so is an expert's.
    assert mera[0] == fine_tuning[0]
    expert = stage_fingerprints(config, build_stage_plan(config)[:1], plugins=[])[0]["stage"]
    assert expert == fine_tuning[0]
    assert mera[1] != fine_tuning[1] and mera[2] != fine_tuning[2]
    # Adding a realign after Replay changes nothing at stage 1 (nothing to realign) as long as the buffer is the same
    # (it keeps the larger of the two ratios, 25% here).
    assert keys(config, method="replay", realign_ratio=25)[0] == keys(config, method="replay")[0] != (
        keys(config, method="replay", replay_ratio=1)[0]  # a 1% buffer is another stage-1 checkpoint
    )
    assert keys(config, method="replay", replay_ratio=1, realign_ratio=25)[0] == fine_tuning[0]
    assert keys(config, method="replay", replay_ratio=1, realign_ratio=25.0)[0] == fine_tuning[0]  # 25 == 25.0
    # Anything that trains differently changes every stage from there on.
    assert keys(config, method="mera", seed=1)[0] != mera[0]
    assert keys(config, method="mera", finetune_learning_rate=1e-3)[0] != mera[0]
    assert keys(config, method="mera", order="reverse")[0] != mera[0]
    train = Path(config.data_root) / config.modalities[1]["train"]
    train.write_text(train.read_text().replace("tone", "beep", 1))
    changed = keys(config, method="mera")
    assert changed[0] == mera[0] and changed[1] != mera[1] and changed[2] != mera[2]


def test_the_table5_grid_pairs_every_method_with_its_realign(tmp_path):
    config = tiny_config(tmp_path)
    study = Study(tmp_path / "study", ["fine_tuning", "replay", "mera"], ["sequential"], [0], lambda seed: None,
                  replay_ratios=[1, 10], realign=[10])  # fmt: skip
    cells, notes = build_grid(study, config, {})
    assert [cell.label for cell in cells] == [
        "Fine-Tuning",
        "Fine-Tuning + Realign (10%)",
        "Replay (1%)",
        "Replay (1%) + Realign (10%)",
        "Replay (10%)",
        "Replay (10%) + Realign (10%)",
        "MERA (1%)",
        "MERA (10%)",
    ]
    assert len(notes) == 1 and "no 'MERA + Realign (10%)' cells" in notes[0] and "already realigns" in notes[0]
    for wrong, message in (({"methods": ["meera"]}, "unknown"), ({"orders": ["random"]}, "orders"),
                           ({"seeds": [0, 0]}, "seeds")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            build_grid(replace(study, **wrong), config, {})


def study_command(config: Path, out: Path) -> list[str]:
    grid = ["--methods", "fine_tuning,mera", "--orders", "sequential", "--seeds", "0", "--latency-samples", "2"]
    return [sys.executable, str(ROOT / "recipes" / "study.py"), "--benchmark", str(config), "--out", str(out), *grid]


def stage_times(out: Path) -> dict[str, int]:
    files = list(out.glob("experts-*/*/model.safetensors")) + list(out.glob("runs/*/*/stage-*/model.safetensors"))
    return {str(path.relative_to(out)): path.stat().st_mtime_ns for path in files if not path.parent.is_symlink()}


def comparable(report: dict) -> dict:
    """The report's scores and Relative Gains (times, memory and latency are measurements of this call)."""
    return {
        cell["variant"]: {"scores": cell["scores"], "backward": cell["summary"]["backward_relative_gain"]}
        for cell in report["cells"]
    }


@pytest.mark.slow
def test_a_killed_study_resumes_reuses_stages_and_ends_with_the_same_report(tmp_path):
    config = write_tiny_run(tmp_path, modalities=("image", "audio"))
    out = tmp_path / "study"
    process = subprocess.Popen(study_command(config, out), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    mera_cell = out / "runs" / "config-sequential-seed0" / "mera-r25"
    # Written as the last cell starts: kill it in its stage 2. A study that ends first fails the poll below.
    while not (mera_cell / FINGERPRINTS).is_file():
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        time.sleep(0.05)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (out / "report.json").exists()
    before = stage_times(out)

    result = subprocess.run(study_command(config, out), env=ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "[1/2] Fine-Tuning, sequential, seed 0: finished earlier" in result.stdout
    after = stage_times(out)
    assert {key: after[key] for key in before} == before, "a finished stage is never retrained"
    # Stage 1 of both cells is the image expert's; MERA's stage 1 was never trained on its own.
    for cell in ("fine_tuning", "mera-r25"):
        link = out / "runs" / "config-sequential-seed0" / cell / "stage-1"
        assert link.is_symlink() and link.resolve() == (out / "experts-seed0" / "image").resolve()
    report = json.loads((out / "report.json").read_text())
    assert "## Table 2: Backward / Forward Relative Gain (%)" in result.stdout
    assert "| MERA (25%) | ✓ | ✓ |" in (out / "report.md").read_text()  # Table 4 lists the ablation's two rows
    assert (out / "relative_gain_sequential.png").stat().st_size > 10_000

    again = subprocess.run(study_command(config, out), env=ENV, capture_output=True, text=True, timeout=400)
    assert again.returncode == 0 and stage_times(out) == after, "a second call retrains nothing"
    assert comparable(json.loads((out / "report.json").read_text())) == comparable(report)

    # The same grid, never killed, in another folder: the same scores.
    fresh = subprocess.run(study_command(config, tmp_path / "fresh"), env=ENV, capture_output=True, text=True,
                           timeout=400)  # fmt: skip
    assert fresh.returncode == 0, fresh.stdout[-3000:]
    assert comparable(json.loads((tmp_path / "fresh" / "report.json").read_text())) == comparable(report)


def fake_cell(study_dir: Path, cell, backward: float, expert_video: float = 50.0) -> tuple:
    """A finished cell folder with made-up scores (two modalities), stage infos and latency: the report's input."""
    from trainers.study.grid import COST

    folder = study_dir / "runs" / f"full-{cell.order}-seed{cell.seed}" / cell.variant
    scores = {
        "method": cell.method,
        "modalities": [{"name": "image", "datasets": ["img-cap"]}, {"name": "video", "datasets": ["vid-cap"]}],
        "experts": {"img-cap": 100.0, "vid-cap": expert_video},
        "stages": [{"img-cap": 100.0}, {"img-cap": backward, "vid-cap": 45.0}],
    }
    for stage in (1, 2):
        (folder / f"stage-{stage}").mkdir(parents=True)
        info = {"seconds": 10.0 * stage, "peak_memory_mb": 500.0 + stage, "memory_kind": "cpu resident"}
        (folder / f"stage-{stage}" / "stage.json").write_text(json.dumps(info))
    (folder / "scores.json").write_text(json.dumps(scores))
    (folder / COST).write_text(json.dumps({"ms_per_token": 5.0, "tokens": 10, "samples": 2}))
    return cell, folder


def test_the_report_lays_out_table5_and_lists_cells_without_relative_gain(tmp_path):
    from trainers.study import StudyCell, write_report

    cells = []
    for seed in (0, 1):
        for method, ratio, uses, realign, backward in (
            ("fine_tuning", 10, False, None, 40.0),
            ("fine_tuning", 10, False, 10, 60.0),
            ("replay", 1, True, None, 70.0),
            ("replay", 1, True, 10, 80.0 + seed),
            ("mera", 10, True, None, 90.0 + 2 * seed),
        ):
            cells.append(fake_cell(tmp_path, StudyCell(method, "sequential", seed, ratio, uses, realign), backward))
    cells.append(fake_cell(tmp_path, StudyCell("mera", "reverse", 0, 10, True), 95.0, expert_video=0.0))
    markdown = write_report(cells, tmp_path, {}, wall_seconds=1.0)
    # Table 2: per method, mean over seeds ± their std; in brackets the std over stages (BwRG 100, x).
    assert "| MERA (10%) | 95.50 ± 0.71 [6.36] |" in markdown
    # Table 5: without, with, and the gain paired by seed.
    assert "| Replay (1%) | + Realign (10%) | 85.00 ± 0.00 | 90.25 ± 0.35 | 5.25 ± 0.35 |" in markdown
    assert "| Fine-Tuning | + Realign (10%) | 70.00 ± 0.00 | 80.00 ± 0.00 | 10.00 ± 0.00 |" in markdown
    # Table 6: time relative to Fine-Tuning (30 s each), the larger stage peak, latency.
    assert "| Replay (1%) + Realign (10%) | 30 ± 0 | 1.00× | 502 | 5.0 ± 0.0 |" in markdown
    # A cell whose expert scored 0 on every video dataset has no Relative Gain; it is listed, and its raw scores kept.
    assert "- MERA (10%), reverse, seed 0: " in markdown and "every expert score of modality 'video' is 0" in markdown
    assert "## Table 12: raw scores after each stage, reverse order" in markdown
    report = json.loads((tmp_path / "report.json").read_text())
    assert [row["variant"] for row in report["tables"]["table5"]] == ["fine_tuning+realign10", "replay-r1+realign10"]
    assert (tmp_path / "relative_gain_sequential.png").is_file()
