"""`mera demo --quick`: every step of the demo end to end, checking the files and their fields (not the figures)."""

import json
import os
import subprocess
import sys

import pytest

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
def test_mera_demo_quick_writes_results_scores_and_plot(tmp_path):
    out = tmp_path / "demo"
    command = [
        sys.executable,
        "-m",
        "recipes.cli",
        "demo",
        "--quick",
        "--out",
        str(out),
        "--methods",
        "fine_tuning,mera",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"fine_tuning", "mera"}
    for summary in results["methods"].values():
        for key in ("backward_relative_gain", "forward_relative_gain"):
            assert len(summary[key]) == 4
        for key in ("backward_mean", "backward_std", "forward_mean", "forward_std"):
            assert isinstance(summary[key], float)
        assert summary["modalities"] == ["image", "video", "audio", "point_cloud"]
    for method in ("fine_tuning", "mera"):
        scores = json.loads((out / "scores" / f"{method}.json").read_text())
        assert scores["method"] == method and len(scores["stages"]) == 4 and len(scores["experts"]) == 8
    png = (out / "relative_gain.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    assert "Backward Relative Gain" in result.stdout

    # A second call reuses everything: no stage, expert or language model is trained again.
    stage_files = sorted(out.glob("runs/*/*/stage-*/model.safetensors"))
    mtimes = [path.stat().st_mtime_ns for path in stage_files]
    again = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ENV)
    assert again.returncode == 0, again.stderr[-3000:]
    assert [path.stat().st_mtime_ns for path in stage_files] == mtimes
