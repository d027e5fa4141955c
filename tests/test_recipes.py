"""The recipes as a user runs them: dry run, a killed and resumed continual run, `accelerate launch` with 2 CPUs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import accelerate_launch_cpu, write_tiny_run

from trainers.continual import build_stage_plan
from trainers.settings import ContinualConfig

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def run_recipe(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, str(ROOT / "recipes" / script), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def test_dry_run_lists_stages_and_checks_media(tmp_path):
    config = write_tiny_run(tmp_path)
    result = run_recipe("continual.py", "--config", str(config), "--dry_run")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "stage 1: image" in result.stdout and "stage 3: point_cloud" in result.stdout
    assert "train        8 samples  (toy-audio-caption caption 4, toy-audio-qa qa 4)" in result.stdout
    assert "every setting, data and media file is usable" in result.stdout
    assert not (tmp_path / "run").exists(), "a dry run trains nothing and writes nothing"
    (tmp_path / "data" / "audio" / "test" / "audio-2.wav").unlink()
    result = run_recipe("continual.py", "--config", str(config), "--dry_run")
    assert result.returncode == 1 and "MISSING 1 media file(s)" in result.stdout
    assert str(tmp_path / "data" / "audio" / "test" / "audio-2.wav") in result.stdout


def test_dry_run_refuses_bad_method_settings_before_writing_anything(tmp_path):
    config = write_tiny_run(tmp_path)
    settings = yaml.safe_load(config.read_text())
    cases = [
        ({"method": "meera"}, "unknown method 'meera'"),
        ({"method": "ewc", "method_args": {"fisher_percent": -1}}, "fisher_percent in (0, 100]"),
        ({"method": "replay", "realign_ratio": 150}, "realign_ratio must be a percentage in (0, 100], got 150"),
    ]  # every refusal of check_method_settings: tests/test_methods.py
    for changes, message in cases:
        variant = tmp_path / "variant.yaml"
        variant.write_text(yaml.safe_dump({**settings, **changes}))
        result = run_recipe("continual.py", "--config", str(variant), "--dry_run")
        assert result.returncode == 2 and message in result.stderr, (changes, result.stderr[-2000:])
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_killed_continual_run_resumes_without_retraining_finished_stages(tmp_path):
    config = write_tiny_run(tmp_path)
    run = tmp_path / "run"
    command = [sys.executable, str(ROOT / "recipes" / "continual.py"), "--config", str(config)]
    log = tmp_path / "stderr.log"  # a file, not a pipe: a full pipe would block the run
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=stderr)
    # No clock here (CI machines are busy): the loop ends as soon as stage 3 has begun (its work folder exists; it
    # trains for longer than a poll), or fails if the run ends first.
    while not (run / "stage-3.partial").exists():
        assert process.poll() is None, log.read_text()[-2000:]
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run / "stage-3" / "stage.json").exists(), "the run was killed during stage 3"
    finished = {stage: (run / stage / "model.safetensors").stat().st_mtime_ns for stage in ("stage-1", "stage-2")}

    result = run_recipe("continual.py", "--config", str(config))
    assert result.returncode == 0, result.stderr[-3000:]
    assert {stage: (run / stage / "model.safetensors").stat().st_mtime_ns for stage in finished} == finished
    assert not list(run.glob("*.partial")) and not list(run.glob(".*.saving")), "no work folder is left behind"
    assert "judge failures: none (every QA sample got a verdict)" in result.stdout, "the printed report says so"
    info = json.loads((run / "stage-3" / "stage.json").read_text())
    assert info["modalities"] == ["image", "audio", "point_cloud"]
    scores = json.loads((run / "scores.json").read_text())
    assert len(scores["stages"]) == 3 and set(scores["stages"][2]) == {
        f"toy-{m}-{t}" for m in ("image", "audio", "point_cloud") for t in ("caption", "qa")
    }
    report = json.loads((run / "report.json").read_text())
    assert len(report["backward_relative_gain"]) == 3

    # A run directory holds one run: other settings are refused instead of mixing two runs.
    result = run_recipe("continual.py", "--config", str(config), "--method", "fine_tuning")
    assert result.returncode == 2 and "holds a run with other settings (['method']" in result.stderr
    assert "Traceback" not in result.stderr


def test_stage_recipe_under_accelerate_launch_with_two_cpu_processes(tmp_path):
    # `accelerate launch --cpu --num_processes 2` starts one process without MPI; this launches two (gloo).
    config = write_tiny_run(tmp_path, modalities=("image", "audio"))
    # With the feature cache: each process encodes its share of the items, both wait, both read all of them.
    settings = yaml.safe_load(config.read_text())
    config.write_text(yaml.safe_dump({**settings, "feature_cache": str(tmp_path / "features")}))
    for stage in ("1", "2"):
        result = accelerate_launch_cpu(2, ROOT / "recipes" / "stage.py", "--config", str(config), "--stage", stage)
        assert result.returncode == 0, result.stderr[-3000:]
        assert result.stdout.count(f"stage {stage} (") == 2, "both processes ran the stage"
    info = json.loads((tmp_path / "run" / "stage-2" / "stage.json").read_text())
    assert info["modalities"] == ["image", "audio"]
    assert not list((tmp_path / "run").glob(".*.saving")), "no half-written checkpoint is left behind"
    for modality in ("image", "audio"):
        rows = [json.loads(line) for line in (tmp_path / "data" / modality / "train.jsonl").read_text().splitlines()]
        (folder,) = (tmp_path / "features").glob(f"{modality}-*")  # one key: stage 2 reads what stage 1 stored
        assert len(list(folder.glob("*.pt"))) == len({row["media"] for row in rows})


def test_every_recipe_config_parses_and_plans_without_downloading():
    # demo*.yaml and bench.yaml are not ContinualConfigs: `mera demo` and `mera bench` generate their stages
    # (test_demo.py builds a plan).
    configs = sorted(
        p
        for p in (ROOT / "recipes" / "configs").glob("*.yaml")
        if not p.name.startswith("demo") and p.name != "bench.yaml"
    )
    assert {path.name for path in configs} >= {"paper_sequential.yaml", "paper_reverse.yaml"}
    for path in configs:
        settings = yaml.safe_load(path.read_text())
        config = ContinualConfig(**settings)
        plan = build_stage_plan(config)
        assert [step.stage for step in plan] == list(range(1, len(plan) + 1))
        assert all(step.train_files and step.test_files for step in plan)
    orders = {
        name: [
            step.spec.name
            for step in build_stage_plan(
                ContinualConfig(**yaml.safe_load((ROOT / "recipes" / "configs" / name).read_text()))
            )
        ]
        for name in ("paper_sequential.yaml", "paper_reverse.yaml")
    }
    assert orders["paper_sequential.yaml"] == ["image", "video", "audio", "point_cloud"]
    assert orders["paper_reverse.yaml"] == ["point_cloud", "audio", "video", "image"]
