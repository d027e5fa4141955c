"""
One check of a whole continual run before anything is written or trained: every setting, and the data and media
of every stage.

`validate_run(config, plan)` returns the dry-run report (`trainers.converters.dry_run_report`: per stage and split,
the samples per data set, every missing data file, bad row and missing or undecodable media file) with the
settings' problems added under `settings_problems`, and `ok`. `--dry_run` prints that report; a run calls
`check_run`, which raises one `UserError` listing every problem, so that a typo in the method name, an impossible
ratio, a corrupt image in stage 4's test set or a malformed line of stage 3's training file stops the run before
stage 1 starts and before the run folder holds anything.

Each setting check is a function `check(config, plan) -> list[str]` in `SETTING_CHECKS`; a check that another
module owns (e.g. a method's own argument rules) plugs in by appending to that list.
"""

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

from .errors import UserError
from .safety import feature_processor_class, find_secrets, is_hub_id

__all__ = [
    "SETTING_CHECKS",
    "RESUMABLE_SETTINGS",
    "check_method_fits_plan",
    "validate_settings",
    "validate_run",
    "check_run",
]

RESUMABLE_SETTINGS = (
    "output_dir",
    "experts_dir",
    "data_root",
    "eval_batch_size",
    "train_experts",
    "push_to_hub",
    "hub_model_id",
    "hub_private_repo",
    "max_judge_failure_rate",
    "validate_media",
    "feature_cache",
    "feature_cache_gb",
)
"""The settings a resumed run may change: where things are, how fast evaluation batches and training reads its
inputs (the feature cache is exact), what is published. Every
other setting - training, method, and scoring (judge, test_limit, max_new_tokens) - must stay as the run began, or
one score matrix would mix two runs."""

SettingCheck = Callable[[object, list], list[str]]


def _check_method(config, plan) -> list[str]:
    """The method's settings (`trainers.methods.check_method_settings`: its name, `method_args` and ratios), and
    whether it can run every stage of the plan."""
    from .methods import check_method_settings

    try:
        check_method_settings(config)
        check_method_fits_plan(config, plan)
    except (ValueError, TypeError) as error:
        return [str(error)]
    return []


def check_method_fits_plan(config, plan: list):
    """The method exists, takes its `method_args`, and can run every stage of the plan (a stage that adds a task on
    a modality learnt before is refused by methods that isolate per modality, e.g. EProj)."""
    from .methods import get_method_plugins

    plugins = get_method_plugins(config.method, config)
    repeated = [step for step in plan if step.spec.name in {s.spec.name for s in plan if s.stage < step.stage}]
    refusing = [plugin.name for plugin in plugins if not plugin.supports_task_stages]
    if repeated and refusing:
        raise UserError(
            f"method {config.method!r} cannot add a task on a modality learnt before (stage {repeated[0].stage}: "
            f"task {repeated[0].spec.task_name!r} on {repeated[0].spec.name!r}); its plug-ins {refusing} isolate "
            "what each modality learns. MR-LoRA isolates per task."
        )


def _check_runtime(config, plan) -> list[str]:
    """The stage loop's own check: per-phase `MeraSFTConfig` fields, and what the machine must offer (4-bit)."""
    from .stage import check_runtime

    try:
        check_runtime(config)
    except (ValueError, ImportError, RuntimeError) as error:
        return [str(error)]
    return []


def _check_scoring(config, plan) -> list[str]:
    from .evaluation.judges import JUDGES

    problems = []
    if config.judge not in (*JUDGES, "auto"):
        problems.append(f"judge: {config.judge!r} is not a judge; choose one of {sorted(JUDGES)} or 'auto'")
    elif config.judge == "gpt" and importlib.util.find_spec("openai") is None:
        problems.append("judge: 'gpt' needs the openai package: pip install 'mera-mcl[eval]' (or judge 'match')")
    if not 0 <= config.max_judge_failure_rate <= 1:
        problems.append(
            f"max_judge_failure_rate: a fraction in [0, 1] is expected, got {config.max_judge_failure_rate}"
        )
    for name in ("eval_batch_size", "max_new_tokens"):
        if not isinstance(getattr(config, name), int) or getattr(config, name) < 1:
            problems.append(f"{name}: a positive whole number is expected, got {getattr(config, name)!r}")
    if config.test_limit is not None and (not isinstance(config.test_limit, int) or config.test_limit < 1):
        problems.append(f"test_limit: a positive whole number (or unset) is expected, got {config.test_limit!r}")
    return problems


def _model_source_problem(name: str, where: str) -> str | None:
    """A local folder must exist with a config.json; a Hub id must read as one (and be cached when offline)."""
    if is_hub_id(name):
        from huggingface_hub import constants, try_to_load_from_cache

        if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, "config.json"), str):
            return f"{where}: {name!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
        return None
    path = Path(os.path.expanduser(name))
    if not path.is_dir():
        return f"{where}: {name!r} is neither a folder nor a Hub id (org/name)"
    if not any((path / file).is_file() for file in ("config.json", "preprocessor_config.json")):
        return f"{where}: {name} holds no config.json"
    return None


def _check_models(config, plan) -> list[str]:
    import torch

    problems = []
    if not config.language_model:
        problems.append("language_model: a Hub id or folder of a causal language model is required")
    elif problem := _model_source_problem(config.language_model, "language_model"):
        problems.append(problem)
    if not isinstance(getattr(torch, str(config.dtype), None), torch.dtype):
        problems.append(f"dtype: {config.dtype!r} is not a torch dtype (float32, bfloat16, float16)")
    # Encoder weights and a Q-Former's init_from: released single files (BEATs .pt, Point-BERT .pth) or folders.
    from .pretrained import missing_checkpoints, required_checkpoints

    fields = {"encoder": "encoder_weights", "connector init_from": "connector.init_from"}
    for entry in missing_checkpoints(required_checkpoints("", config.modalities or [])):
        problems.append(
            f"modalities ({entry['modality']!r}).{fields[entry['role']]}: {entry['kind']} {entry['path']} not found "
            "(docs/encoders.md says where to get the released checkpoints)"
        )
    for step in plan:
        spec, where = step.spec, f"modalities ({step.spec.name!r})"
        if isinstance(spec.feature_processor, str) and (
            problem := _model_source_problem(spec.feature_processor, f"{where}.feature_processor")
        ):
            problems.append(problem)
    for index, modality in enumerate(config.modalities or []):
        processor = modality.get("feature_processor")
        if isinstance(processor, dict):
            try:
                feature_processor_class(processor.get("processor_class"), f"modalities[{index}].feature_processor")
            except UserError as error:
                problems.append(str(error))
    return problems


def _check_secrets(config, plan) -> list[str]:
    from dataclasses import asdict

    return [
        f"{path}: looks like a credential; settings are saved with the run and published with its stages, so give "
        "credentials through the environment (HF_TOKEN, OPENAI_API_KEY) or `hf auth login` instead"
        for path in find_secrets(asdict(config))
    ]


SETTING_CHECKS: list[SettingCheck] = [
    _check_method,
    _check_runtime,
    _check_scoring,
    _check_models,
    _check_secrets,
]


def validate_settings(config, plan) -> list[str]:
    """Every setting's problem, as `"field: what is wrong and what is expected"` lines (empty when all is well)."""
    problems = []
    for check in SETTING_CHECKS:
        problems += check(config, plan)
    return problems


def validate_run(config, plan, decode_media: bool | None = None) -> dict:
    """The dry-run report of every stage's data and media plus every setting's problem; loads no model."""
    from .data.converters import dry_run_report

    if decode_media is None:
        decode_media = getattr(config, "validate_media", "decode") == "decode"
    stages = [
        {
            "stage": step.stage,
            "modality": step.spec.name,
            "kind": step.spec.kind or step.spec.name,
            # The plan's paths already start at data_root: absolute, so that the report does not join it again.
            "train": [os.path.abspath(path) for path in step.train_files],
            "test": [os.path.abspath(path) for path in step.test_files],
        }
        for step in plan
    ]
    report = dry_run_report(stages, config.data_root, decode_media=decode_media)
    report["settings_problems"] = validate_settings(config, plan)
    report["ok"] = report["ok"] and not report["settings_problems"]
    return report


def check_run(config, plan) -> dict:
    """`validate_run`, raising one `UserError` that lists every problem (see `format_dry_run_report`)."""
    from .data.converters import format_dry_run_report

    report = validate_run(config, plan)
    if not report["ok"]:
        raise UserError(
            "the run was not started, nothing was written:\n"
            + format_dry_run_report(report)
            + "\n(`--dry_run` prints this report without training)"
        )
    return report
