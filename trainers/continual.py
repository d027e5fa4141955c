"""
A whole continual run: every stage of one method in one modality order (`trainers.stage.run_stage` each),
evaluated after every stage, resumable. Its settings are `trainers.settings.ContinualConfig`.

    output_dir/
      run_config.json        the resolved settings; a later call must not contradict them
      stage-1/ ... stage-N/  stage checkpoints (model, processor, replay samples, stage.json)
      eval/stage-i.json      predictions and scores of every modality learnt so far
      scores.json            the score matrix (see `trainers.evaluation.metrics`)
      report.json, report.txt
      pushed.json            what was pushed to the Hub (push_to_hub, `mera push`; see trainers.hub)
    experts_dir/<modality>/  single-modality experts (the Relative Gain's upper bounds), shared between methods
"""

import json
import logging
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import concatenate_datasets
from transformers import AutoTokenizer

from modeling_mera import MeraForCausalLM, MeraProcessor

from . import console
from .checkpoint import STAGE_INFO, clean_finished_stage, is_finished_stage, load_stage
from .data import load_samples
from .data.feature_cache import EncoderFeatureCache
from .data.samples import read_sample_file
from .distributed import process_state
from .errors import UserError
from .evaluation.generation import evaluate_model
from .evaluation.judges import format_judge_failures, get_judge, judge_failures
from .evaluation.metrics import ScoreMatrix, format_report, summarize
from .methods import get_method_plugins
from .run_lock import RunLock
from .safety import feature_processor_class, redact_secrets
from .settings import MODALITY_KEYS, ContinualConfig, ModalitySpec
from .stage import run_stage
from .validation import RESUMABLE_SETTINGS, check_run

logger = logging.getLogger(__name__)


@dataclass
class StagePlan:
    stage: int
    spec: ModalitySpec
    train_files: list[Path]
    test_files: list[Path]


def build_stage_plan(config: ContinualConfig) -> list[StagePlan]:
    """The stages in training order, with resolved data paths; loads no model and no data."""
    if not config.modalities:
        raise UserError("the config lists no modalities")
    modalities = list(config.modalities)
    if config.order == "reverse":
        modalities.reverse()
    names = [modality.get("task") or modality["name"] for modality in modalities]
    if len(set(names)) != len(names):
        raise UserError(f"the stages' tasks (a stage's modality when it names no task) must differ, got {names}")
    root = Path(config.data_root)
    plan = []
    for stage, modality in enumerate(modalities, start=1):
        spec = ModalitySpec(**{key: value for key, value in modality.items() if key in MODALITY_KEYS})
        if isinstance(spec.feature_processor, dict):
            spec.feature_processor = build_processor_from_dict(spec.feature_processor)
        files = {split: [root / name for name in _as_list(modality[split])] for split in ("train", "test")}
        plan.append(StagePlan(stage, spec, files["train"], files["test"]))
    return plan


def build_processor_from_dict(settings: dict):
    """A transformers processor from `{"processor_class": "CLIPImageProcessorPil", ...its arguments}`; the class
    must be one of transformers' image processors or feature extractors (`trainers.safety`)."""
    settings = dict(settings)
    return feature_processor_class(settings.pop("processor_class", None))(**settings)


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def load_stage_data(files: list[Path], limit: int | None = None, seed: int = 0):
    """The samples of `files` (media checked now, so that a missing file stops the run before training)."""
    missing = [str(path) for path in files if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"data file(s) not found: {missing} (paths are relative to data_root)")
    datasets = [load_samples(path) for path in files]
    if limit is not None:
        datasets = [d.shuffle(seed=seed).select(range(min(limit, len(d)))) for d in datasets]
    return concatenate_datasets(datasets) if len(datasets) > 1 else datasets[0]


def dataset_names(files: list[Path]) -> list[str]:
    """The data sets the files' samples are scored in, in order of first appearance (a file's name without one)."""
    names = []
    for path in files:
        rows = read_sample_file(path)
        for name in rows["dataset"] if "dataset" in rows.column_names else [None]:
            if (name or path.stem) not in names:
                names.append(name or path.stem)
    return names


def base_model_and_processor(config: ContinualConfig) -> tuple[MeraForCausalLM, MeraProcessor]:
    """The stage-0 model: the language model with no modality, and its processor."""
    dtype = getattr(torch, config.dtype)
    model = MeraForCausalLM.from_language_model(config.language_model, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(config.language_model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    processor = MeraProcessor(tokenizer, model.config, use_chat_template=config.use_chat_template, seed=config.seed)
    return model, processor


def _check_run_config(config: ContinualConfig, output_dir: Path):
    """
    A resumed run must be the same run: every setting but the few of `RESUMABLE_SETTINGS` (paths, evaluation batch
    size, publishing) as it began. The first call writes `run_config.json` (secrets redacted).
    """
    saved_file = output_dir / "run_config.json"
    current = redact_secrets(json.loads(json.dumps(asdict(config), default=str)))
    if saved_file.is_file():
        try:
            saved = json.loads(saved_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise UserError(
                f"{saved_file} is damaged ({error}); it records the run's settings: restore it, or use another "
                "output_dir to start anew"
            ) from None
        differing = sorted(k for k in current if k not in RESUMABLE_SETTINGS and saved.get(k) != current.get(k))
        if differing:
            changes = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differing)
            raise UserError(
                f"{output_dir} holds a run with other settings ({differing}; {changes}); only "
                f"{list(RESUMABLE_SETTINGS)} may change when a run resumes. Use another output_dir to start anew"
            )
    elif process_state().is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        _write_json(saved_file, current)


@contextmanager
def open_run(config: ContinualConfig, plan: list[StagePlan]):
    """
    Everything a run checks before it writes: every setting and every stage's data and media (`check_run`), then
    the run folder's lock (one process at a time), then `run_config.json` (the same run, or a new one).
    """
    check_run(config, plan)  # with the stage loop's check_runtime (e.g. load_in_4bit without CUDA)
    output_dir = Path(config.output_dir)
    with RunLock(output_dir) if process_state().is_main_process else nullcontext():
        _check_run_config(config, output_dir)
        yield output_dir


def _write_json(path: Path, data: Any):
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def evaluate_stage(config: ContinualConfig, stage_dir: Path, plan: list[StagePlan], output_file: Path) -> dict:
    """Scores of every modality the stage's model has learnt; cached in `output_file`."""
    if output_file.is_file():
        try:
            return json.loads(output_file.read_text())["scores"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            logger.warning(f"{output_file} is damaged; the stage is evaluated again")
    model, processor, _ = load_stage(stage_dir)
    model.to(process_state().device).eval()  # each process generates its share of the batches on its own device
    model.requires_grad_(False)  # nothing trains here; frozen encoders may be served from the feature cache
    stage = json.loads((stage_dir / STAGE_INFO).read_text()).get("stage", len(model.modalities))
    learnt = [step for step in plan if step.stage <= stage]
    samples = []
    for step in learnt:
        samples.extend(load_stage_data(step.test_files, config.test_limit, config.seed))
    output_file.parent.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    cache = None
    if config.feature_cache:  # exact: each test item is encoded once per run, not once per prompt and stage
        cache = EncoderFeatureCache(config.feature_cache, int(config.feature_cache_gb * 1024**3))
    result = evaluate_model(
        model,
        processor,
        samples,
        judge=get_judge(config.judge, **config.judge_args) if config.judge_args else config.judge,
        batch_size=config.eval_batch_size,
        max_new_tokens=config.max_new_tokens,
        output_file=output_file,
        max_judge_failure_rate=config.max_judge_failure_rate,
        feature_cache=cache,
    )
    if process_state().is_main_process:
        timed = {**json.loads(output_file.read_text()), "seconds": {"wall": round(time.perf_counter() - wall, 3)}}
        timed["seconds"]["cpu"] = round(time.process_time() - cpu, 3)
        _write_json(output_file, timed)
    return result["scores"]


def train_experts(config: ContinualConfig, plan: list[StagePlan]) -> dict[str, float]:
    """Each modality trained alone from the base LM (fine-tuning, no merge or realign) and scored on its tests."""
    experts_dir = Path(config.experts_dir or Path(config.output_dir) / "experts")
    # Experts kept apart from the run folder are shared between runs: one run at a time trains or scores them.
    inside_run = experts_dir.resolve().is_relative_to(Path(config.output_dir).resolve())  # under the run's lock
    shared = not inside_run and process_state().is_main_process
    with RunLock(experts_dir, wait=True) if shared else nullcontext():
        return _expert_scores(config, plan, experts_dir)


def _expert_scores(config: ContinualConfig, plan: list[StagePlan], experts_dir: Path) -> dict[str, float]:
    scores = {}
    for step in plan:
        # An expert learns its modality alone: its console lines name no stage ("video · fine-tune · expert").
        with console.context(stage=None, stages=None, modality=step.spec.name, method="expert"):
            task = step.spec.task_name
            expert_dir = experts_dir / task
            if not is_finished_stage(expert_dir):
                if not config.train_experts:
                    raise FileNotFoundError(f"no expert for {task!r} in {expert_dir} and train_experts is off")
                model, processor = base_model_and_processor(config)
                train = load_stage_data(step.train_files)
                run_stage(model, processor, step.spec, train, expert_dir, plugins=[], settings=config.stage_settings())
            expert_plan = [StagePlan(1, step.spec, step.train_files, step.test_files)]
            scores.update(evaluate_stage(config, expert_dir, expert_plan, experts_dir / "eval" / f"{task}.json"))
    return scores


def push_to_hub(config: ContinualConfig, output_dir: Path):
    """Push the finished stages that are not on the Hub yet; a failure is reported, and the run goes on."""
    from .hub import push_run  # huggingface_hub's upload machinery, only for runs that push

    try:
        push_run(output_dir, config.hub_model_id, private=config.hub_private_repo)
    except Exception as error:
        logger.warning(
            f"pushing {output_dir} to {config.hub_model_id} failed: {error}\nThe run goes on; the checkpoints stay in "
            f"{output_dir}; push them later with: mera push {output_dir} {config.hub_model_id}"
        )


def run_continual(config: ContinualConfig) -> dict:
    """
    Run (or resume) every stage; returns the summary of `trainers.evaluation.metrics.summarize`.

    Every setting and every stage's data and media are checked first, before anything is written (`open_run`).
    """
    plan = build_stage_plan(config)
    with open_run(config, plan) as output_dir:
        return _run_stages(config, plan, output_dir)


def run_stages(config: ContinualConfig, plan: list[StagePlan], output_dir: Path) -> list[dict]:
    """Train every stage of `plan` not finished in `output_dir` yet and evaluate each (`eval/stage-i.json`, cached):
    every stage's scores. The experts and the metrics are `run_continual`'s."""
    is_main = process_state().is_main_process
    stage_scores = []
    for step in plan:
        # Every line the stage prints says where the run is: "stage 2/4 · video · fine-tune · mera".
        with console.context(stage=step.stage, stages=len(plan), modality=step.spec.name, method=config.method):
            stage_dir = output_dir / f"stage-{step.stage}"
            if is_finished_stage(stage_dir):
                clean_finished_stage(stage_dir)
            else:
                if step.stage == 1:
                    previous, processor = base_model_and_processor(config)
                else:
                    previous, processor = output_dir / f"stage-{step.stage - 1}", None
                train = load_stage_data(step.train_files)
                plugins = get_method_plugins(config.method, config)
                settings = config.stage_settings()
                run_stage(previous, processor, step.spec, train, stage_dir, step.stage, plugins, settings)
            eval_file = output_dir / "eval" / f"stage-{step.stage}.json"
            stage_scores.append(evaluate_stage(config, stage_dir, plan, eval_file))
        if config.push_to_hub and is_main:
            push_to_hub(config, output_dir)
    return stage_scores


def _run_stages(config: ContinualConfig, plan: list[StagePlan], output_dir: Path) -> dict:
    is_main = process_state().is_main_process
    stage_scores = run_stages(config, plan, output_dir)
    experts = train_experts(config, plan)
    tasks = any(step.spec.task for step in plan)  # MLLM-CL's setting: the matrix lists each stage's task
    scores = {
        "method": config.method,
        "tasks" if tasks else "modalities": [
            {"name": s.spec.task_name, **({"modality": s.spec.name} if tasks else {}), "datasets": names}
            for s, names in ((s, dataset_names(s.test_files)) for s in plan)
        ],
        "experts": experts,
        "stages": stage_scores,
        **({"smoke_test": True} if config.smoke_test else {}),
    }
    # The raw scores are written first: they stay useful even where a Relative Gain cannot be computed.
    if is_main:
        _write_json(output_dir / "scores.json", scores)
    summary = summarize(ScoreMatrix.from_dict(scores, source=str(output_dir / "scores.json")))
    failures = {}
    for step in plan:
        evaluation = json.loads((output_dir / "eval" / f"stage-{step.stage}.json").read_text())
        failures[f"stage-{step.stage}"] = judge_failures(evaluation)
    summary["judge_failures"] = failures
    failures_line = format_judge_failures(
        {f"{stage} {dataset}": entry for stage, sets in failures.items() for dataset, entry in sets.items()}
    )
    if is_main:
        _write_json(output_dir / "report.json", summary)
        (output_dir / "report.txt").write_text(format_report([summary]) + "\n" + failures_line + "\n")
        if config.push_to_hub:  # the experts are scored now: every stage's card gets its Relative Gain table
            push_to_hub(config, output_dir)
    return summary
