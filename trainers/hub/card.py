"""
The model card of a pushed stage, rendered from the top-level `model_card.md` with huggingface_hub's `ModelCard`:
the modality order, the training setup, and the scores up to the stage (score matrix, Relative Gain) as model-index
results. Publishing the card with the stage is `trainers.hub.push`.
"""

import json
import os
import sys
import sysconfig
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..checkpoint import REPLAY_DIR, STAGE_INFO, is_finished_stage
from ..evaluation.judges import format_judge_failures, judge_failures
from ..evaluation.metrics import ScoreMatrix, relative_gain_matrix, summarize
from ..safety import public_name

CARD_TEMPLATE_NAME = "model_card.md"
PIPELINE_TAGS = {
    "image": "image-text-to-text",
    "video": "video-text-to-text",
    "audio": "audio-text-to-text",
    "point_cloud": "any-to-any",
}
METRIC_NAMES = {"cider": "CIDEr-D (x100)", "accuracy": "accuracy"}


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def finished_stages(run_dir: str | os.PathLike) -> list[int]:
    """Indices of the finished stages of a run folder (`stage-<i>/` with a `stage.json`), in order."""
    stages = []
    for directory in Path(run_dir).glob("stage-*"):
        index = directory.name[len("stage-") :]
        if index.isdigit() and is_finished_stage(directory):
            stages.append(int(index))
    return sorted(stages)


# --- scores ------------------------------------------------------------------------------------------------------
def _expert_scores(run_dir: Path, run_config: dict, modalities: list[str]) -> dict[str, float]:
    """Expert scores known so far: from scores.json once the run is complete, else from the experts' eval files."""
    scores = _read_json(run_dir / "scores.json")
    if scores and scores.get("experts"):
        return dict(scores["experts"])
    configured = run_config.get("experts_dir")
    experts_dir = Path(configured) if configured and Path(configured).is_dir() else run_dir / "experts"
    experts = {}
    for modality in modalities:
        result = _read_json(experts_dir / "eval" / f"{modality}.json")
        if result:
            experts.update(result["scores"])
    return experts


def stage_score_matrix(run_dir: str | os.PathLike, stage: int) -> dict | None:
    """
    The score matrix of stages 1..`stage` (format of `trainers.evaluation.metrics`), from the run's `eval/` files.

    `experts` holds the single-modality experts' scores known so far (a complete run computes them after its last
    stage); Relative Gain needs all of them. `None` when a stage up to `stage` was not evaluated.
    """
    run_dir = Path(run_dir)
    evaluations = [_read_json(run_dir / "eval" / f"stage-{index}.json") for index in range(1, stage + 1)]
    if any(result is None for result in evaluations):
        return None
    info = json.loads((run_dir / f"stage-{stage}" / STAGE_INFO).read_text())
    details = evaluations[-1]["datasets"]
    tasks = info.get("tasks", info["modalities"])
    if tasks == info["modalities"]:  # MERA's setting: a modality per stage
        key, entries = "modalities", [
            {"name": name, "datasets": [d for d, detail in details.items() if detail["modality"] == name]}
            for name in info["modalities"]
        ]
    else:  # tasks on learnt modalities: stage j's task holds the test sets first scored after stage j
        key, entries, seen = "tasks", [], set()
        for name, result in zip(tasks, evaluations):
            new = [d for d in result["scores"] if d not in seen]
            seen.update(new)
            entries.append({"name": name, "modality": details[new[0]]["modality"] if new else None, "datasets": new})
    run_config = _read_json(run_dir / "run_config.json") or {}
    datasets = {d for m in entries for d in m["datasets"]}
    experts = _expert_scores(run_dir, run_config, tasks)
    return {
        "method": run_config.get("method") or "+".join(info.get("plugins", [])) or "fine_tuning",
        key: entries,
        "experts": {d: score for d, score in experts.items() if d in datasets},
        "stages": [result["scores"] for result in evaluations],
        **({"smoke_test": True} if run_config.get("smoke_test") else {}),
    }


def _complete_matrix(scores: dict | None, source: str) -> ScoreMatrix | None:
    """The validated matrix when every expert score is known (Relative Gain is defined), else `None`."""
    if scores is None:
        return None
    if any(d not in scores["experts"] for m in scores.get("tasks") or scores["modalities"] for d in m["datasets"]):
        return None
    return ScoreMatrix.from_dict(scores, source=source)


# --- model card --------------------------------------------------------------------------------------------------
def card_template_path(template: str | os.PathLike | None = None) -> Path:
    """
    The model card template: `template` if given, else `model_card.md` of the source tree (a checkout or an editable
    install), else the copy a wheel install puts under `<prefix>/share/mera-mcl/`.
    """
    if template is not None:
        return Path(template)
    candidates = [
        Path(__file__).resolve().parents[2] / CARD_TEMPLATE_NAME,
        Path(sysconfig.get_path("data")) / "share" / "mera-mcl" / CARD_TEMPLATE_NAME,
        Path(sys.prefix) / "share" / "mera-mcl" / CARD_TEMPLATE_NAME,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"no model card template found (looked at {[str(p) for p in candidates]}); pass one with --card-template"
    )


def _markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join("–" if cell is None else str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 2) -> str | None:
    return None if value is None else f"{value:.{digits}f}"


def _modalities_table(config, stage_of: dict[str, int]) -> str:
    rows = []
    for name, modality in config.modalities.items():
        encoder = config.modality(name).encoder
        source = public_name(getattr(encoder, "_name_or_path", "")) or encoder.model_type
        rows.append(
            [
                stage_of.get(name, "–"),
                f"`{name}`",
                modality["kind"],
                f"`{source}`",
                modality["connector"]["type"],
                modality["num_tokens"],
                f"`{modality['placeholder']}`",
            ]
        )
    header = ["stage", "modality", "kind", "encoder (frozen)", "connector", "tokens per item", "placeholder"]
    return _markdown_table(header, rows)


def _training_setup(run_config: dict, info: dict, method: str) -> str:
    settings = info.get("settings", {})
    language_model = public_name(run_config.get("language_model")) or "a local checkpoint"
    plugins = ", ".join(f"`{name}`" for name in info.get("plugins", [])) or "none"
    lines = [
        f"- Language model: `{language_model}` (dtype {run_config.get('dtype', 'float32')}); encoders are frozen.",
        f"- Method: `{method}`, stage plug-ins: {plugins} "
        "(mera-mcl's stage loop: pre-train the new connector, fine-tune it with the LLM, then the plug-ins' steps).",
    ]
    if settings.get("use_lora", True):
        lora = settings.get("lora") or {  # the first: older stage.json
            "r": settings.get("lora_r"), "lora_alpha": settings.get("lora_alpha"),
            "lora_dropout": settings.get("lora_dropout"),
        }  # fmt: skip
        quantized = " (QLoRA: the LLM held in 4 bits while training)" if settings.get("load_in_4bit") else ""
        lines.append(
            f"- LLM fine-tuned with LoRA{quantized}: r={lora.get('r')}, alpha={lora.get('lora_alpha')}, "
            f"dropout={lora.get('lora_dropout')}, merged into the full-precision weights after each stage."
        )
    else:
        lines.append("- LLM fully fine-tuned (no LoRA).")
    lines.append(f"- Replay ratio r = {settings.get('replay_ratio')}% of each stage's training data.")
    lines.append(
        f"- Stage {info['stage']} trained on {info.get('train_samples', '–')} samples of `{info['modality']}`, "
        f"seed {settings.get('seed')}."
    )
    rows = []
    for phase in ("pretrain", "finetune", "realign"):
        # What the phase trained with (stage.json's log); the settings of an older stage.json otherwise.
        arguments = info.get("log", {}).get(phase) or settings.get(f"{phase}_args") or settings.get(phase) or {}
        if phase == "realign" and "realign" not in info.get("plugins", []):
            continue
        rows.append(
            [
                phase,
                arguments.get("num_train_epochs", "paper default"),
                arguments.get("per_device_train_batch_size", "paper default"),
                arguments.get("learning_rate", "paper default"),
                arguments.get("connector_learning_rate") or "–",
            ]
        )
    losses = {phase: info.get("log", {}).get(phase, {}).get("train_loss") for phase in ("pretrain", "finetune")}
    table = _markdown_table(["phase", "epochs", "batch per device", "learning rate", "connector learning rate"], rows)
    loss_line = ", ".join(f"{phase} {value:.4f}" for phase, value in losses.items() if value is not None)
    return "\n".join(lines) + "\n\n" + table + (f"\n\nTraining loss of this stage: {loss_line}." if loss_line else "")


def _results(
    scores: dict | None,
    matrix: ScoreMatrix | None,
    metrics: dict[str, str],
    stage: int,
    judge: str | None,
    failures: dict[str, dict] | None = None,
) -> str:
    if scores is None:
        return (
            f"Stages 1..{stage} of this run were not all evaluated when this stage was pushed, so no scores are "
            "reported (`python recipes/continual.py` evaluates every stage)."
        )
    blocks = []
    modalities = scores.get("tasks") or scores["modalities"]
    if matrix is not None:
        summary = summarize(matrix)
        rg = relative_gain_matrix(matrix)
        header = ["modality"] + [f"after stage {i + 1}" for i in range(stage)]
        rows = [[m["name"]] + [_fmt(rg[j][i]) for i in range(stage)] for j, m in enumerate(modalities)]
        rows.append(["**Backward RG**"] + [_fmt(v) for v in summary["backward_relative_gain"]])
        rows.append(["**Forward RG**"] + [_fmt(v) for v in summary["forward_relative_gain"]])
        blocks.append(
            "Relative Gain (%) of each modality: its scores divided by those of an expert trained on that modality "
            "alone, averaged over its test sets (100 = no loss). Backward RG averages the earlier modalities (stage "
            "1 reports its own); Forward RG is the modality just learnt.\n\n" + _markdown_table(header, rows)
        )
        blocks.append(
            f"Mean over stages 1..{stage}: Backward RG {summary['backward_mean']:.2f}%, Forward RG "
            f"{summary['forward_mean']:.2f}%."
        )
    else:
        blocks.append(
            "Relative Gain needs the scores of the single-modality experts, which a run computes after its last "
            "stage; pushing the run again then updates this card (the continual recipe does it itself). Raw scores:"
        )
    header = ["test set", "modality", "metric"] + [f"after stage {i + 1}" for i in range(stage)]
    if matrix is not None:
        header.append("expert")
    rows = []
    for m in modalities:
        for dataset in m["datasets"]:
            row = [dataset, m["name"], METRIC_NAMES.get(metrics.get(dataset), "score")]
            row += [_fmt(s.get(dataset), 4) for s in scores["stages"]]
            if matrix is not None:
                row.append(_fmt(scores["experts"][dataset], 4))
            rows.append(row)
    blocks.append(_markdown_table(header, rows))
    blocks.append(
        f"Captions are scored with CIDEr-D x 100, questions with judged accuracy (judge: `{judge or 'match'}`). "
        "`scores.json` on this branch holds the score matrix; `mera metrics scores.json` prints its tables."
    )
    blocks.append(f"After stage {stage}, {format_judge_failures(failures or {})}.")
    return "\n\n".join(blocks)


def _eval_results(
    scores: dict | None, matrix: ScoreMatrix | None, metrics: dict[str, str], kinds: dict[str, str]
) -> list[EvalResult]:
    """model-index entries: every test set's score after this stage, and each modality's Relative Gain."""
    if scores is None:
        return []
    last = scores["stages"][-1]
    results = []
    rg = relative_gain_matrix(matrix) if matrix is not None else None
    for j, modality in enumerate(scores.get("tasks") or scores["modalities"]):
        task = PIPELINE_TAGS.get(kinds.get(modality.get("modality") or modality["name"], ""), "any-to-any")
        for dataset in modality["datasets"]:
            metric = metrics.get(dataset) or "score"
            results.append(
                EvalResult(
                    task_type=task,
                    dataset_type=dataset,
                    dataset_name=dataset,
                    dataset_split="test",
                    metric_type=metric,
                    metric_name=METRIC_NAMES.get(metric, metric),
                    metric_value=round(float(last[dataset]), 4),
                )
            )
        if rg is not None:
            results.append(
                EvalResult(
                    task_type=task,
                    dataset_type=f"mera-mcl/{modality['name']}",
                    dataset_name=f"{modality['name']} test sets ({', '.join(modality['datasets'])})",
                    dataset_split="test",
                    metric_type="relative_gain",
                    metric_name="Relative Gain (%)",
                    metric_value=round(rg[j][-1], 2),
                )
            )
    return results


def _stage_files(stage_dir: Path, include_replay: bool) -> dict[str, Path]:
    """The files of a stage folder to publish, by their path in the repo (hidden files and replay/ left out)."""
    files = {}
    for path in sorted(stage_dir.rglob("*")):
        parts = path.relative_to(stage_dir).parts
        if path.is_file() and not any(part.startswith(".") for part in parts):
            if parts[0] != REPLAY_DIR or include_replay:
                files["/".join(parts)] = path
    return files


def render_model_card(
    run_dir: str | os.PathLike,
    stage: int,
    repo_id: str,
    template: str | os.PathLike | None = None,
    published_files: list[str] | None = None,
) -> ModelCard:
    """
    The model card of stage `stage` for branch `stage-<stage>` of `repo_id`, rendered from the template (see
    `card_template_path`) with huggingface_hub's `ModelCard`; its metadata holds the scores as model-index results.
    `published_files` lists the branch's files (default: the stage folder without replay/, plus the card and scores).
    """
    from modeling_mera import MeraConfig

    from ..methods import METHODS

    run_dir = Path(run_dir)
    stage_dir = run_dir / f"stage-{stage}"
    info = json.loads((stage_dir / STAGE_INFO).read_text())
    run_config = _read_json(run_dir / "run_config.json") or {}
    config = MeraConfig.from_pretrained(stage_dir)
    scores = stage_score_matrix(run_dir, stage)
    metrics, failures = {}, {}
    if scores is not None:
        evaluation = json.loads((run_dir / "eval" / f"stage-{stage}.json").read_text())
        metrics = {dataset: detail.get("metric") for dataset, detail in evaluation["datasets"].items()}
        failures = judge_failures(evaluation)
    matrix = _complete_matrix(scores, str(run_dir / "eval"))
    method = run_config.get("method") or (scores or {}).get("method") or "+".join(info.get("plugins", []))
    factory = METHODS.get(method)
    method_description = (factory.__doc__ or "").strip().split("\n")[0].rstrip(".") if factory else "a custom method"
    order = [m["name"] for m in (run_config.get("modalities") or [])]
    if run_config.get("order") == "reverse":
        order.reverse()
    order = order or info["modalities"]
    kinds = {name: m["kind"] for name, m in config.modalities.items()}
    modality = info["modality"]
    repo_name = repo_id.split("/")[-1]
    language_model = run_config.get("language_model", "")
    if published_files is None:
        published_files = [*_stage_files(stage_dir, include_replay=False), "README.md"]
        published_files += ["scores.json"] if scores is not None else []
    files = "\n".join(f"- `{name}`" for name in sorted(published_files))
    if not any(name.startswith(f"{REPLAY_DIR}/") for name in published_files):
        files += (
            "\n\nThe stage's replay samples (`replay/`) are not published: they are rows of the training sets with "
            "local media paths. Continuing the run from this checkpoint needs the run folder or the same training "
            "data."
        )

    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=PIPELINE_TAGS.get(kinds[modality]) if len(set(kinds.values())) == 1 else "any-to-any",
        base_model=public_name(language_model) or None,
        tags=["mera-mcl", "continual-learning", "modality-incremental", "multimodal", "custom_code", method, *kinds]
        + (["smoke-test"] if run_config.get("smoke_test") else []),
        model_name=f"{repo_name} (stage {stage})",
        eval_results=_eval_results(scores, matrix, metrics, kinds) or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(card_template_path(template)),
        model_name=f"{repo_name}: stage {stage} ({modality})",
        method=method,
        method_description=method_description,
        modality_order=" → ".join(order),
        modality=modality,
        stage=stage,
        num_stages=max(len(order), stage),
        repo_id=repo_id,
        revision=f"stage-{stage}",
        example_prompt=f"{config.modalities[modality]['placeholder']} Describe the {modality.replace('_', ' ')}.",
        modalities_table=_modalities_table(config, {name: i + 1 for i, name in enumerate(info["modalities"])}),
        training_setup=_training_setup(run_config, info, method),
        results=_results(scores, matrix, metrics, stage, run_config.get("judge"), failures),
        files=files,
        smoke_test=bool(run_config.get("smoke_test")),
    )
