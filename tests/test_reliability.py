"""
Nothing lost, nothing silent (issue 17): settings and data are checked before anything is written, a run folder
holds one process and one run, damaged checkpoints are named, user errors end in one message with exit code 2,
and nothing secret or local leaks into what is saved or published.

The Hub cases are in test_hub.py (against tests/local_hub.py), the judge cases in test_judges.py (against the local
OpenAI-compatible server). Each test here reproduces a defect the old code had; its comment says which.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, tiny_clip_config, tiny_processor, toy_samples, write_tiny_run
from datasets import Dataset
from transformers import CLIPVisionModel

from modeling_mera import MeraForCausalLM
from recipes.cli import main as mera
from trainers.checkpoint import CheckpointError, clean_finished_stage, load_stage, save_stage
from trainers.continual import build_processor_from_dict, build_stage_plan, open_run, run_continual
from trainers.data.replay import ReplayBuffer
from trainers.errors import UserError
from trainers.run_lock import RunLock, RunLockedError
from trainers.safety import REDACTED, confined_path, feature_processor_class, find_secrets, redact_secrets
from trainers.settings import ContinualConfig
from trainers.validation import RESUMABLE_SETTINGS, validate_run

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def tiny_config(folder: Path, **overrides) -> ContinualConfig:
    settings = yaml.safe_load(write_tiny_run(folder).read_text())
    return ContinualConfig(**{**settings, **overrides})


def recipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600, env=ENV, cwd=ROOT)


# --- 3. settings that poison a run -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, expected",
    [
        ({"method": "mera_"}, "unknown method 'mera_'"),
        ({"replay_ratio": 150}, "replay_ratio must be a percentage in (0, 100], got 150"),
        ({"replay_ratio": 0}, "replay_ratio must be a percentage in (0, 100], got 0"),
        ({"method": "mera", "realign_ratio": 10}, "'mera' already realigns"),
        ({"method_args": {"router_samples": 3}}, "method_args ['router_samples'] are not settings of method"),
        ({"judge": "gpt4"}, "judge: 'gpt4' is not a judge"),
        ({"test_limit": 0}, "test_limit: a positive whole number"),
        ({"finetune_args": {"num_epochs": 3}}, "finetune_args: ['num_epochs'] are not MeraSFTConfig"),
        ({"dtype": "float33"}, "dtype: 'float33' is not a torch dtype"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_is_written(tmp_path, overrides, expected):
    # The old code wrote run_config.json first: the corrected command was then refused ("other settings"), and
    # `--replay_ratio 0` with MERA failed only after stage 1 had trained.
    config = tiny_config(tmp_path, **overrides)
    with pytest.raises(UserError) as raised:
        run_continual(config)
    assert expected in str(raised.value)
    assert not Path(config.output_dir).exists(), "nothing is written"

    corrected = tiny_config(tmp_path)  # the same folder, the typo fixed: accepted
    with open_run(corrected, build_stage_plan(corrected)) as run_dir:
        assert (run_dir / "run_config.json").is_file()


def test_missing_language_model_and_secret_settings_are_named(tmp_path):
    config = tiny_config(
        tmp_path, language_model=str(tmp_path / "no-such-lm"), finetune_args={"hub_token": "hf_abcdef"}
    )
    problems = validate_run(config, build_stage_plan(config))["settings_problems"]
    assert any(p.startswith(f"language_model: '{tmp_path / 'no-such-lm'}' is neither a folder") for p in problems)
    assert any(p.startswith("finetune_args.hub_token: looks like a credential") for p in problems)


def test_scoring_settings_cannot_change_on_resume(tmp_path):
    # The old code let --judge and --test_limit change on resume: one score matrix then mixed judges or subsets.
    config = tiny_config(tmp_path)
    plan = build_stage_plan(config)
    with open_run(config, plan):
        pass
    assert "judge" not in RESUMABLE_SETTINGS and "test_limit" not in RESUMABLE_SETTINGS
    for name, value in (("judge", "auto"), ("test_limit", 2), ("max_new_tokens", 8), ("seed", 1)):
        with pytest.raises(UserError, match=rf"holds a run with other settings \(\['{name}'\]"):
            with open_run(replace(config, **{name: value}), plan):
                pass
    with open_run(replace(config, eval_batch_size=2, train_experts=False), plan):
        pass  # what may change: how evaluation batches, whether experts are trained, where things are


def test_stage_recipe_refuses_to_write_another_method_into_a_run(tmp_path):
    # The old recipes/stage.py wrote a fine_tuning stage into a MERA run, which was then reported as MERA.
    from recipes.stage import StageArguments, main

    config = tiny_config(tmp_path)
    with open_run(config, build_stage_plan(config)):
        pass
    other = replace(config, method="fine_tuning", replay_ratio=50)
    with pytest.raises(UserError, match=r"holds a run with other settings \(\['method', 'replay_ratio'\]"):
        main(other, StageArguments(stage=3))
    assert sorted(path.name for path in Path(config.output_dir).iterdir()) == [".mera.lock", "run_config.json"]


def test_damaged_run_config_is_named(tmp_path):
    config = tiny_config(tmp_path)
    plan = build_stage_plan(config)
    with open_run(config, plan) as run_dir:
        pass
    saved = run_dir / "run_config.json"
    saved.write_text(saved.read_text()[:40])
    with pytest.raises(UserError, match=f"{saved} is damaged"):
        with open_run(config, plan):
            pass


def test_a_second_process_is_refused_naming_the_holder_and_a_killed_holder_leaves_no_stale_lock(tmp_path):
    # The old code had no lock: two runs on one folder removed each other's temporary folders.
    config = tiny_config(tmp_path)
    run_dir = Path(config.output_dir)
    code = "import sys, time; from trainers.run_lock import RunLock; RunLock(sys.argv[1]).acquire(); print('locked')"
    code += "; sys.stdout.flush(); time.sleep(600)"
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, env=ENV, cwd=ROOT)
    try:
        assert holder.stdout.readline() == b"locked\n"
        with pytest.raises(RunLockedError, match=rf"in use by process {holder.pid} on {socket.gethostname()}"):
            RunLock(run_dir).acquire()
        with pytest.raises(RunLockedError, match=f"process {holder.pid}"):
            run_continual(config)  # the whole run: refused after validation, before run_config.json is written
        assert not (run_dir / "run_config.json").exists()
    finally:
        holder.kill()  # SIGKILL: the holder runs no clean-up
        holder.wait()
    with RunLock(run_dir) as lock:  # the operating system released the dead holder's lock
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()


# --- 4. validation comes first ----------------------------------------------------------------------------------
def test_bad_data_of_a_later_stage_is_reported_by_the_dry_run_and_stops_the_run_before_stage_1(tmp_path):
    # The old code read each stage's data when the stage started (stage 3's bad file stopped the run after stages
    # 1-2 trained), checked only that media existed (a corrupt image failed at the first batch), and crashed in
    # --dry_run and `mera data check` on a malformed JSONL line.
    config_file = write_tiny_run(tmp_path)
    data = tmp_path / "data"
    with open(data / "point_cloud" / "train.jsonl", "a") as file:
        file.write('{"id": "cut", "modality": "point_cloud", "media": "tr\n')
    image = sorted((data / "image" / "test").glob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:60])  # a truncated PNG: it opens, but does not decode

    result = recipe("recipes/continual.py", "--config", str(config_file), "--dry_run")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "BAD 1 row(s)" in result.stdout and f"{data / 'point_cloud' / 'train.jsonl'}, line 9" in result.stdout
    assert f"{image} (sample image-0-c" in result.stdout and "cannot be read as image" in result.stdout
    assert "Traceback" not in result.stderr

    result = recipe("recipes/continual.py", "--config", str(config_file))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the run was not started, nothing was written" in result.stderr
    assert "cannot be read as image" in result.stderr
    assert not (tmp_path / "run").exists()

    assert mera(["data", "check", "--data-root", str(data), "point_cloud/train.jsonl"]) == 1

    (data / "audio" / "test.jsonl").unlink()
    config = ContinualConfig(**yaml.safe_load(config_file.read_text()))
    report = validate_run(config, build_stage_plan(config))
    assert report["stages"][1]["test"]["missing_files"] == [str(data / "audio" / "test.jsonl")]


def test_validation_reads_conversations_and_task_stages(tmp_path):
    # Issue 15's data and stages through issue 17's check: multi-turn and text-only rows are samples (no "no media"
    # problem), a malformed conversation is a bad row named by its line, and a task stage on a learnt modality is
    # checked against the method before anything is written.
    data = tmp_path / "data"
    first = data / "a.jsonl"
    first.parent.mkdir(parents=True)
    first.write_text("".join(json.dumps(row) + "\n" for row in toy_samples(data / "a", "image", 2)))
    image = str(data / "a" / "image-0.png")
    three_turns = [{"from": "human", "value": "<image>\nwhat color is it ?"}, {"from": "gpt", "value": "red"},
                   {"from": "human", "value": "is it large ?"}, {"from": "gpt", "value": "yes"}]  # fmt: skip
    text_only = [{"role": "user", "content": "one and one ?"}, {"role": "assistant", "content": "two"}]
    rows = [
        {"id": "multi", "image": image, "conversations": three_turns, "dataset": "b"},
        {"id": "text", "messages": text_only},
        {"id": "turns", "messages": text_only[::-1]},  # the assistant first: not a conversation
    ]
    second = data / "b.jsonl"
    second.write_text("".join(json.dumps(row) + "\n" for row in rows))
    stages = [{"name": "image", "task": task, "train": f"{task}.jsonl", "test": f"{task}.jsonl"} for task in "ab"]

    config = ContinualConfig(method="mr_lora", modalities=stages, data_root=str(data), output_dir=str(tmp_path / "r"))
    report = validate_run(config, build_stage_plan(config))
    task_stage = report["stages"][1]
    assert task_stage["modality"] == "image" and task_stage["train"]["samples"] == 2
    assert task_stage["missing_media"] == 0 and task_stage["bad_rows"] == 2  # the bad row, in train and in test
    assert task_stage["missing_examples"][0].startswith(f"BAD ROW {second}, line 3: a conversation is")
    assert report["stages"][0]["bad_rows"] == 0 and report["stages"][0]["train"]["samples"] == 4
    assert not any("cannot add a task" in problem for problem in report["settings_problems"])

    eproj = replace(config, method="eproj")
    problems = validate_run(eproj, build_stage_plan(eproj))["settings_problems"]
    assert any("cannot add a task on a modality learnt before (stage 2: task 'b' on 'image')" in p for p in problems)


# --- 5. messages with a name -------------------------------------------------------------------------------------
def saved_stage(folder: Path) -> Path:
    """A real stage checkpoint (model, processor, replay) without training: save_stage of a tiny model."""
    model = build_tiny_model(("image",))
    samples = toy_samples(folder / "media", "image", count=2)
    replay = ReplayBuffer()
    replay.add_stage(1, Dataset.from_list(samples), replay_ratio=50, seed=0)
    info = {"stage": 1, "modality": "image", "settings": {"finetune": {"hub_token": "hf_secret_value"}}}
    save_stage(model, tiny_processor(model), replay, info, folder / "stage-1")
    return folder / "stage-1"


def test_damaged_checkpoint_and_replay_files_are_named(tmp_path):
    # The old code raised library errors naming no file, and used a replay file with lines removed silently.
    stage = saved_stage(tmp_path)
    load_stage(stage)
    weights = stage / "model.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(CheckpointError, match=rf"{stage} is damaged: model.safetensors has \d+ bytes, \d+ were saved"):
        load_stage(stage)
    weights.write_bytes(original)

    replay_file = stage / "replay" / "stage-1.jsonl"
    lines = replay_file.read_text().splitlines()
    assert len(lines) == 2
    replay_file.write_text(lines[0] + "\n" + lines[1][:20] + "\n")
    with pytest.raises(UserError, match=rf"{replay_file}, line 2: damaged"):
        ReplayBuffer.load(stage / "replay")
    replay_file.write_text(lines[0] + "\n")
    with pytest.raises(UserError, match=r"holds 1 replay samples but replay.json records 2"):
        ReplayBuffer.load(stage / "replay")

    info = stage / "stage.json"
    info.write_text(info.read_text()[:30])
    with pytest.raises(CheckpointError, match=f"{info} is damaged or unreadable"):
        load_stage(stage)


def test_user_errors_end_in_one_message_and_exit_code_2(tmp_path, capsys):
    # The old `mera info /nonexistent` said "Repo id must use alphanumeric chars"; the recipes printed tracebacks.
    assert mera(["info", str(tmp_path / "nonexistent")]) == 2
    message = f"mera: error: {tmp_path / 'nonexistent'} does not exist (and is not a Hub repo id like org/name)"
    assert capsys.readouterr().err.strip() == message

    config_file = write_tiny_run(tmp_path)
    settings = yaml.safe_load(config_file.read_text())
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump({**settings, "replay_ration": 5}))
    result = recipe("recipes/continual.py", "--config", str(tmp_path / "typo.yaml"), "--dry_run")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("recipes/continual.py: error:") and "replay_ration" in result.stderr
    result = recipe("recipes/continual.py", "--config", str(tmp_path / "typo.yaml"), "--dry_run", "--debug")
    assert result.returncode != 0 and "Traceback" in result.stderr, "--debug shows the traceback"


# --- 6. safety ---------------------------------------------------------------------------------------------------
def test_secrets_are_refused_by_validation_and_redacted_in_saved_files(tmp_path):
    # The old code wrote a hub_token from a phase's arguments in plain text to run_config.json and stage.json.
    stage = saved_stage(tmp_path)
    saved = json.loads((stage / "stage.json").read_text())
    assert saved["settings"]["finetune"]["hub_token"] == REDACTED
    assert "hf_secret_value" not in "".join(p.read_text(errors="ignore") for p in stage.rglob("*.json"))
    settings = {"finetune_args": {"hub_token": "x", "pad_token": "<pad>"}, "judge": {"api_key": "sk"}, "key": ""}
    assert find_secrets(settings) == ["finetune_args.hub_token", "judge.api_key"]
    assert redact_secrets(settings)["finetune_args"] == {"hub_token": REDACTED, "pad_token": "<pad>"}


def test_written_paths_stay_inside_their_root(tmp_path):
    assert confined_path(tmp_path, "mscoco") == (tmp_path / "mscoco").resolve()
    for name in ("../../x", "/etc", "a/../../b"):
        with pytest.raises(UserError, match="leads outside"):
            confined_path(tmp_path, name, what="output name")


def test_config_named_classes_come_from_an_allow_list():
    # The old code called getattr(transformers, name)(...) for any name a YAML file gave.
    assert feature_processor_class("CLIPImageProcessorPil").__name__ == "CLIPImageProcessorPil"
    assert feature_processor_class("WhisperFeatureExtractor").__name__ == "WhisperFeatureExtractor"
    for name in ("pipeline", "AutoModel", "PreTrainedModel", "logging", None):
        with pytest.raises(UserError, match="is not a transformers image processor or feature extractor"):
            build_processor_from_dict({"processor_class": name, "task": "text-generation"})


def test_saved_config_and_card_carry_no_local_folder(tmp_path):
    # The old config.json held the folders the LLM and the encoders were loaded from.
    write_tiny_run(tmp_path, modalities=("image",))
    CLIPVisionModel(tiny_clip_config()).save_pretrained(tmp_path / "encoder")
    model = MeraForCausalLM.from_language_model(str(tmp_path / "lm"))
    model.add_modality("image", encoder_weights=str(tmp_path / "encoder"), feature_select_strategy="default")
    save_stage(model, tiny_processor(model), ReplayBuffer(), {"stage": 1, "modality": "image"}, tmp_path / "stage")
    published = [(tmp_path / "stage" / name).read_text() for name in ("config.json", "stage.json")]
    assert all(str(tmp_path) not in text for text in published)
    assert "clip_vision_model" in published[0], "the encoder's config is kept, only its folder is blanked"


def test_a_finished_stage_leaves_no_partial_copy_behind(tmp_path):
    # The old code left stage-i.partial when a kill landed between the final rename and the clean-up.
    stage = saved_stage(tmp_path)
    partial = tmp_path / "stage-1.partial" / "finetuned"
    shutil.copytree(stage, partial)
    (tmp_path / ".stage-1.saving").mkdir()
    clean_finished_stage(stage)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["media", "stage-1"]
