"""
The shipped recipe configs: every one parses and validates; the tiny one runs offline as the README says; every
setting can be set from the command line and lands in stage.json; contradicting or unknown settings are refused.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recipes.continual import make_parser as continual_parser
from recipes.stage import make_parser as stage_parser
from trainers.continual import build_stage_plan
from trainers.demo.runs import demo_settings
from trainers.settings import ContinualConfig
from trainers.sft import phase_config
from trainers.stage import check_runtime

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
TINY = CONFIGS / "tiny.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}  # fmt: skip


def parse(*argv: str, parser=None) -> ContinualConfig:
    config, _ = (parser or continual_parser(prog="continual.py")).parse_args_and_config(list(argv))
    return config


def test_every_shipped_config_parses_validates_and_plans():
    shipped = sorted(path.name for path in CONFIGS.glob("*.yaml"))
    assert shipped == [
        "bench.yaml", "demo.yaml", "demo_domain.yaml", "paper_reverse.yaml", "paper_sequential.yaml", "tiny.yaml"
    ]  # fmt: skip
    for name in shipped:
        if name.startswith("demo") or name == "bench.yaml":  # `mera demo`'s and `mera bench`'s: ContinualConfig fields
            for quick in (False, True):
                settings = demo_settings(CONFIGS / name, quick)["settings"]
                settings.pop("bench", None)  # the bench's own section (methods, repetitions)
                ContinualConfig(**settings)
            continue
        for parser in (continual_parser(prog="continual.py"), stage_parser(prog="stage.py")):
            config = parse("--config", str(CONFIGS / name), parser=parser)
            plan = build_stage_plan(config)
            assert [step.stage for step in plan] == list(range(1, len(plan) + 1)) and len(plan) == 4
            for phase in ("pretrain", "finetune", "realign"):
                assert phase_config(config, phase, Path("unused")).learning_rate > 0
    paper = parse("--config", str(CONFIGS / "paper_sequential.yaml"))
    finetune = phase_config(paper, "finetune", Path("unused"))
    assert (finetune.learning_rate, finetune.connector_learning_rate, finetune.per_device_train_batch_size) == (
        2e-4, 2e-5, 16,
    )  # fmt: skip
    assert (paper.lora_r, paper.lora_alpha, paper.lora_dropout, paper.load_in_4bit) == (128, 128, 0.05, False)
    # The data path off the training process, and realign's mixed-modality batches grouped by length: the values
    # the phases' TrainingArguments end up with.
    for phase in ("pretrain", "finetune", "realign"):
        args = phase_config(paper, phase, Path("unused"))
        assert (args.dataloader_num_workers, args.dataloader_persistent_workers) == (8, True), phase
        grouped = "group_by_length" if phase == "realign" else "random"
        assert args.train_sampling_strategy == grouped, phase


def test_accelerate_configs_load_with_accelerate():
    from accelerate.commands.config.config_args import load_config_from_file

    configs = {
        path.stem: load_config_from_file(str(path)) for path in (ROOT / "recipes" / "accelerate").glob("*.yaml")
    }
    assert sorted(configs) == ["fsdp", "zero2", "zero3"]
    assert configs["zero2"].distributed_type == "DEEPSPEED" and configs["zero2"].deepspeed_config["zero_stage"] == 2
    assert configs["zero3"].deepspeed_config["zero_stage"] == 3
    assert configs["zero3"].deepspeed_config["zero3_init_flag"] is False
    assert configs["fsdp"].distributed_type == "FSDP" and configs["fsdp"].fsdp_config["fsdp_version"] == 2
    assert all(config.mixed_precision == "bf16" for config in configs.values())


def test_every_setting_is_a_command_line_flag_and_reaches_the_phase():
    config = parse(
        "--config", str(TINY),
        "--finetune_learning_rate", "1e-4",
        "--finetune_per_device_train_batch_size", "2",
        "--finetune_num_train_epochs", "3",
        "--realign_learning_rate", "5e-5",
        "--pretrain_gradient_accumulation_steps", "4",
        "--finetune_args", '{"warmup_steps": 0.1, "weight_decay": 0.01}',
        "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
        "--push_to_hub", "true", "--hub_model_id", "org/tiny",
    )  # fmt: skip
    finetune = phase_config(config, "finetune", Path("unused"))
    assert (finetune.learning_rate, finetune.per_device_train_batch_size, finetune.num_train_epochs) == (1e-4, 2, 3)
    assert (finetune.warmup_steps, finetune.weight_decay) == (0.1, 0.01)
    assert finetune.connector_learning_rate == 3e-3, "untouched settings keep the YAML's value"
    assert phase_config(config, "realign", Path("unused")).learning_rate == 5e-5
    assert phase_config(config, "pretrain", Path("unused")).gradient_accumulation_steps == 4
    assert (config.lora_r, config.lora_alpha, config.lora_target_modules) == (4, 8, ["q_proj", "v_proj"])
    assert config.push_to_hub is True and config.hub_model_id == "org/tiny"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--finetune_args", '{"learning_rate": 1e-4}'],
            r"finetune_args sets \['learning_rate'\].*finetune_learning_rate",
        ),
        (["--pretrain_args", "[1, 2]"], r"pretrain_args must be a dict"),
        (["--load_in_4bit", "true", "--use_lora", "false"], r"load_in_4bit: true contradicts use_lora: false"),
        (["--push_to_hub", "true"], r"push_to_hub: true needs hub_model_id"),
        (["--hub_model_id", "not a repo"], r"hub_model_id must be a Hub repo id"),
        (["--lora_r", "0"], r"lora_r >= 1"),
    ],
)
def test_a_contradicting_or_unknown_setting_is_an_error_naming_it(argv, message):
    with pytest.raises(ValueError, match=message):
        parse("--config", str(TINY), *argv)


def test_an_unknown_phase_field_is_refused_before_anything_loads():
    config = parse("--config", str(TINY), "--realign_args", '{"warmpu_ratio": 0.1}')
    with pytest.raises(ValueError, match=r"realign_args: \['warmpu_ratio'\] are not MeraSFTConfig"):
        check_runtime(config)


def test_unknown_flags_and_keys_and_the_old_push_to_hub_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"not used by the HfArgumentParser: \['--finetune_lr'"):
        parse("--config", str(TINY), "--finetune_lr", "1e-4")
    old = yaml.safe_load(TINY.read_text())
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**old, "lora": {"r": 8}}))
    with pytest.raises(ValueError, match=r"Unknown arguments from config file: \['--lora'"):
        parse("--config", str(tmp_path / "old.yaml"))
    # The repo id that push_to_hub used to take: argparse refuses it in a YAML file, the dataclass in Python.
    (tmp_path / "hub.yaml").write_text(yaml.safe_dump({**old, "push_to_hub": "org/tiny"}))
    with pytest.raises(SystemExit):
        parse("--config", str(tmp_path / "hub.yaml"))
    assert "--push_to_hub/--push-to-hub: Truthy value expected: got org/tiny" in capsys.readouterr().err
    with pytest.raises(ValueError, match=r"push_to_hub is a boolean.*give the repo id as hub_model_id"):
        ContinualConfig(push_to_hub="org/tiny")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the refusal cannot show")
@pytest.mark.parametrize("script", ["stage.py", "continual.py"])
def test_load_in_4bit_without_cuda_stops_before_anything_loads_or_trains(tmp_path, script):
    command = [sys.executable, str(ROOT / "recipes" / script), "--config", str(TINY), "--load_in_4bit", "true",
               "--output_dir", str(tmp_path / "run"), "--data_root", str(tmp_path / "no-data")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=ENV, cwd=tmp_path)
    assert result.returncode != 0
    assert "load_in_4bit: 4-bit (QLoRA) fine-tuning needs a CUDA GPU" in result.stderr
    assert not (tmp_path / "run").exists(), "nothing is written"


@pytest.mark.slow
def test_tiny_recipe_runs_offline_as_the_readme_says_and_overrides_reach_stage_json(tmp_path):
    """The README's commands, run from a fresh folder: write the data, one stage with `accelerate launch`, the rest."""

    def run(*command: str) -> subprocess.CompletedProcess:
        result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=ENV, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        return result

    (tmp_path / "recipes").symlink_to(ROOT / "recipes")  # the README runs from the repository root
    run(sys.executable, "-m", "recipes.cli", "data", "demo", "--out", "data/tiny", "--quiet")
    overrides = ["--finetune_learning_rate", "1e-4", "--lora_r", "4", "--realign_num_train_epochs", "2"]
    run("accelerate", "launch", "recipes/stage.py", "--config", "recipes/configs/tiny.yaml", "--stage", "1",
        "--output_dir", "runs/tiny", *overrides)  # fmt: skip
    info = json.loads((tmp_path / "runs/tiny/stage-1/stage.json").read_text())
    assert info["settings"]["finetune_learning_rate"] == 1e-4 and info["settings"]["lora_r"] == 4
    assert info["log"]["finetune"]["learning_rate"] == 1e-4, "the override is what fine-tuning trained with"
    assert info["log"]["finetune"]["lora_r"] == 4 and info["log"]["finetune"]["lora_alpha"] == 16
    assert info["log"]["pretrain"]["learning_rate"] == 3e-3, "the YAML's value where nothing overrides it"
    assert "realign" not in info["log"], "nothing to realign with one modality (the paper's stage 1)"

    result = run(sys.executable, "recipes/continual.py", "--config", "recipes/configs/tiny.yaml",
                 "--output_dir", "runs/tiny", *overrides)  # fmt: skip
    assert "mean Backward Relative Gain" in result.stdout
    scores = json.loads((tmp_path / "runs/tiny/scores.json").read_text())
    assert len(scores["stages"]) == 4 and len(scores["stages"][3]) == 8 and len(scores["experts"]) == 8
    last = json.loads((tmp_path / "runs/tiny/stage-4/stage.json").read_text())
    assert last["modalities"] == ["image", "video", "audio", "point_cloud"]
    assert last["log"]["finetune"]["learning_rate"] == 1e-4
    assert last["log"]["realign"]["num_train_epochs"] == 2, "the realign override reaches the stages that realign"
