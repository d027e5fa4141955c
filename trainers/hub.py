"""
Publishing a continual run on the Hugging Face Hub: one model repo per run, one branch per stage.

    org/name
      stage-1   θ1, complete by itself: model.safetensors, config.json (with auto_map), the modeling_mera code,
      stage-2   tokenizer and processor files (processors/<modality>/), stage.json, scores.json (the score matrix
      ...       up to this stage) and README.md, the model card rendered from the top-level model_card.md
      main      follows the latest stage pushed

A stage branch starts from the previous stage's branch, so its history follows the training. Each push commits the
stage folder as it is (files the folder no longer holds are deleted from the branch), through `HfApi.create_commit`;
the Hub skips files whose content did not change.

What is not published:
- `replay/`, the stage's replay samples. They are rows of the training sets (captions, questions, answers) with the
  local paths of their media files: publishing them would redistribute data-set text and disclose local paths, and
  a later stage could not use them anyway without the media. A later stage trained from a Hub checkpoint needs
  the run folder, or the same training data to draw the replay sample again (the draw is seeded, see
  `trainers.replay`). `include_replay=True` (`mera push --include-replay`) publishes them as they are, for runs
  whose data lives at the same paths wherever the stage is continued.
- `eval/` predictions: the card and scores.json carry the scores.

Guard (like open-r1's `check_hub_revision_exists`): a stage branch that already holds other weights is never
overwritten unless `force=True`; the same weights with a newer card or scores are updated. Every push is recorded in
the run folder (`pushed.json`), so pushing a run again pushes only what is missing or changed.

Failures: transient errors (connection errors, HTTP 408/429/5xx) are retried with exponential backoff; nothing in the
run folder is ever modified except `pushed.json`. Tokens are handled by huggingface_hub (`HF_TOKEN`, `hf auth login`,
or `token=`), never printed or written.
"""

import hashlib
import json
import logging
import os
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from huggingface_hub import (
    CommitOperationAdd,
    CommitOperationDelete,
    EvalResult,
    HfApi,
    ModelCard,
    ModelCardData,
)
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id

from .continual import REPLAY_DIR, STAGE_INFO, is_finished_stage
from .continual_metrics import ScoreMatrix, relative_gain_matrix, summarize

__all__ = [
    "PUSH_RECORD",
    "CARD_TEMPLATE_NAME",
    "card_template_path",
    "read_push_record",
    "HubPushError",
    "HubRevisionExistsError",
    "StageUpload",
    "finished_stages",
    "stage_score_matrix",
    "render_model_card",
    "plan_stage_upload",
    "push_run",
]

logger = logging.getLogger(__name__)

PUSH_RECORD = "pushed.json"
CARD_TEMPLATE_NAME = "model_card.md"
WEIGHT_SUFFIXES = (".safetensors",)
KEPT_REMOTE_FILES = {".gitattributes"}  # written by the Hub when the repo is created
PIPELINE_TAGS = {
    "image": "image-text-to-text",
    "video": "video-text-to-text",
    "audio": "audio-text-to-text",
    "point_cloud": "any-to-any",
}
METRIC_NAMES = {"cider": "CIDEr-D (x100)", "accuracy": "accuracy"}


class HubPushError(RuntimeError):
    """Some stages could not be pushed; their checkpoints are untouched in the run folder."""


class HubRevisionExistsError(ValueError):
    """The branch already holds a different checkpoint; pass `force=True` (`--force`) to overwrite it."""


@dataclass
class StageUpload:
    """What one commit puts on one branch: every file of the stage, by its path in the repo."""

    stage: int
    branch: str
    files: dict[str, Path | bytes]
    """Path in the repo -> a file of the stage folder, or generated content (README.md, scores.json)."""
    commit_message: str
    stage_dir: Path
    _fingerprint: dict[str, str] | None = field(default=None, repr=False)

    def fingerprint(self) -> dict[str, str]:
        """Path in the repo -> sha256 of the content: what `pushed.json` records and the guard compares."""
        if self._fingerprint is None:
            self._fingerprint = {path: _sha256(content) for path, content in sorted(self.files.items())}
        return self._fingerprint

    def operations(self) -> list[CommitOperationAdd]:
        return [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(c) if isinstance(c, Path) else c)
            for path, c in sorted(self.files.items())
        ]

    def on_branch(self, branch: str, commit_message: str) -> "StageUpload":
        """The same files, committed to another branch (`main` follows the latest stage)."""
        return StageUpload(self.stage, branch, self.files, commit_message, self.stage_dir, self._fingerprint)


def _sha256(content: Path | bytes) -> str:
    if isinstance(content, bytes):
        return hashlib.sha256(content).hexdigest()
    digest = hashlib.sha256()
    with open(content, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    The score matrix of stages 1..`stage` (format of `trainers.continual_metrics`), from the run's `eval/` files.

    `experts` holds the single-modality experts' scores known so far (a complete run computes them after its last
    stage); Relative Gain needs all of them. `None` when a stage up to `stage` was not evaluated.
    """
    run_dir = Path(run_dir)
    evaluations = [_read_json(run_dir / "eval" / f"stage-{index}.json") for index in range(1, stage + 1)]
    if any(result is None for result in evaluations):
        return None
    info = json.loads((run_dir / f"stage-{stage}" / STAGE_INFO).read_text())
    details = evaluations[-1]["datasets"]
    modalities = [
        {"name": name, "datasets": [d for d, detail in details.items() if detail["modality"] == name]}
        for name in info["modalities"]
    ]
    run_config = _read_json(run_dir / "run_config.json") or {}
    datasets = {d for m in modalities for d in m["datasets"]}
    experts = _expert_scores(run_dir, run_config, info["modalities"])
    return {
        "method": run_config.get("method") or "+".join(info.get("plugins", [])) or "fine_tuning",
        "modalities": modalities,
        "experts": {d: score for d, score in experts.items() if d in datasets},
        "stages": [result["scores"] for result in evaluations],
    }


def _complete_matrix(scores: dict | None, source: str) -> ScoreMatrix | None:
    """The validated matrix when every expert score is known (Relative Gain is defined), else `None`."""
    if scores is None:
        return None
    if any(d not in scores["experts"] for m in scores["modalities"] for d in m["datasets"]):
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
        Path(__file__).resolve().parents[1] / CARD_TEMPLATE_NAME,
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
        source = getattr(encoder, "_name_or_path", "") or encoder.model_type
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
    language_model = run_config.get("language_model") or "–"
    plugins = ", ".join(f"`{name}`" for name in info.get("plugins", [])) or "none"
    lines = [
        f"- Language model: `{language_model}` (dtype {run_config.get('dtype', 'float32')}); encoders are frozen.",
        f"- Method: `{method}`, stage plug-ins: {plugins} "
        "(mera-mcl's stage loop: pre-train the new connector, fine-tune it with the LLM, then the plug-ins' steps).",
    ]
    if settings.get("use_lora", True):
        lora = settings.get("lora", {})
        lines.append(
            f"- LLM fine-tuned with LoRA: r={lora.get('r')}, alpha={lora.get('lora_alpha')}, "
            f"dropout={lora.get('lora_dropout')}, merged into the weights after each stage."
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
        arguments = settings.get(phase, {})
        if phase == "realign" and "realign" not in info.get("plugins", []):
            continue
        rows.append(
            [
                phase,
                arguments.get("num_train_epochs", "paper default"),
                arguments.get("per_device_train_batch_size", "paper default"),
                arguments.get("learning_rate", "paper default"),
                arguments.get("connector_learning_rate", "–"),
            ]
        )
    losses = {phase: info.get("log", {}).get(phase, {}).get("train_loss") for phase in ("pretrain", "finetune")}
    table = _markdown_table(["phase", "epochs", "batch per device", "learning rate", "connector learning rate"], rows)
    loss_line = ", ".join(f"{phase} {value:.4f}" for phase, value in losses.items() if value is not None)
    return "\n".join(lines) + "\n\n" + table + (f"\n\nTraining loss of this stage: {loss_line}." if loss_line else "")


def _results(
    scores: dict | None, matrix: ScoreMatrix | None, metrics: dict[str, str], stage: int, judge: str | None
) -> str:
    if scores is None:
        return (
            f"Stages 1..{stage} of this run were not all evaluated when this stage was pushed, so no scores are "
            "reported (`python recipes/continual.py` evaluates every stage)."
        )
    blocks = []
    modalities = scores["modalities"]
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
    for j, modality in enumerate(scores["modalities"]):
        task = PIPELINE_TAGS.get(kinds.get(modality["name"], ""), "any-to-any")
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


def _is_hub_id(name: str) -> bool:
    if not name or Path(name).exists() or name.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(name)
    except ValueError:
        return False
    return True


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

    from .methods import METHODS

    run_dir = Path(run_dir)
    stage_dir = run_dir / f"stage-{stage}"
    info = json.loads((stage_dir / STAGE_INFO).read_text())
    run_config = _read_json(run_dir / "run_config.json") or {}
    config = MeraConfig.from_pretrained(stage_dir)
    scores = stage_score_matrix(run_dir, stage)
    metrics = {}
    if scores is not None:
        evaluation = json.loads((run_dir / "eval" / f"stage-{stage}.json").read_text())
        metrics = {dataset: detail.get("metric") for dataset, detail in evaluation["datasets"].items()}
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
        base_model=language_model if _is_hub_id(language_model) else None,
        tags=["mera-mcl", "continual-learning", "modality-incremental", "multimodal", "custom_code", method, *kinds],
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
        results=_results(scores, matrix, metrics, stage, run_config.get("judge")),
        files=files,
    )


# --- upload plan -------------------------------------------------------------------------------------------------
def plan_stage_upload(
    run_dir: str | os.PathLike,
    stage: int,
    repo_id: str,
    include_replay: bool = False,
    card_template: str | os.PathLike | None = None,
) -> StageUpload:
    """The commit of stage `stage` to branch `stage-<stage>`: the stage folder, its score matrix and model card."""
    run_dir = Path(run_dir)
    stage_dir = run_dir / f"stage-{stage}"
    if not is_finished_stage(stage_dir):
        raise FileNotFoundError(
            f"{stage_dir} is not a finished stage (no {STAGE_INFO}); only finished stages are pushed"
        )
    files: dict[str, Path | bytes] = dict(_stage_files(stage_dir, include_replay))
    if not any(name.endswith(WEIGHT_SUFFIXES) for name in files):
        raise FileNotFoundError(f"{stage_dir} holds no safetensors weights; only safetensors checkpoints are pushed")
    scores = stage_score_matrix(run_dir, stage)
    if scores is not None:
        files["scores.json"] = (json.dumps(scores, indent=2) + "\n").encode()
    card = render_model_card(run_dir, stage, repo_id, card_template, published_files=[*files, "README.md"])
    files["README.md"] = str(card).encode()
    info = json.loads((stage_dir / STAGE_INFO).read_text())
    message = f"Stage {stage}: {' → '.join(info['modalities'])} (learnt {info['modality']})"
    return StageUpload(stage, f"stage-{stage}", files, message, stage_dir)


# --- pushing -----------------------------------------------------------------------------------------------------
def _is_transient(error: Exception) -> bool:
    """Worth retrying: connection failures, timeouts, rate limits and server errors; never 4xx answers."""
    if isinstance(error, HfHubHTTPError):
        status = error.response.status_code if error.response is not None else None
        return status is None or status in (408, 429) or status >= 500
    # The HTTP client's transport errors (httpx or httpx2, depending on the huggingface_hub version) are not
    # OSErrors; they all derive from a class named TransportError.
    return isinstance(error, (OSError, TimeoutError)) or any(
        cls.__name__ == "TransportError" for cls in type(error).__mro__
    )


def _with_retries(action: Callable, what: str, retries: int, backoff: float):
    for attempt in range(retries + 1):
        try:
            return action()
        except Exception as error:
            if attempt == retries or not _is_transient(error):
                raise
            wait = backoff * 2**attempt
            logger.warning(
                f"{what} failed ({type(error).__name__}: {error}); retry {attempt + 1}/{retries} in {wait:g}s"
            )
            time.sleep(wait)


def _remote_files(api: HfApi, repo_id: str, branch: str) -> dict[str, object]:
    return {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, revision=branch, recursive=True)
        if hasattr(entry, "blob_id")  # files, not folders
    }


def _git_blob_id(content: Path | bytes) -> str:
    data = content if isinstance(content, bytes) else content.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _differing_weights(upload: StageUpload, remote: dict[str, object]) -> list[str]:
    """Weight files whose content on the branch differs from the stage's, or that only one side holds."""
    local = upload.fingerprint()
    differing = []
    for path in sorted({p for p in (*remote, *local) if p.endswith(WEIGHT_SUFFIXES)}):
        entry = remote.get(path)
        if entry is None or path not in local:
            differing.append(path)
        elif entry.lfs is not None and entry.lfs.sha256 != local[path]:
            differing.append(path)
        elif entry.lfs is None and entry.blob_id != _git_blob_id(upload.files[path]):
            differing.append(path)
    return differing


def _push_branch(api: HfApi, repo_id: str, upload: StageUpload, force: bool, starting_point: str | None) -> str:
    """One commit that makes `upload.branch` hold exactly the upload's files; returns the commit id."""
    heads = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).branches}
    start = starting_point if starting_point in heads else "main"
    message = upload.commit_message
    if upload.branch not in heads:
        api.create_branch(repo_id, branch=upload.branch, revision=start, exist_ok=True)
    remote = _remote_files(api, repo_id, upload.branch)
    # A branch still at its starting point was created by a push whose commit failed: it holds no stage of its own.
    inherited = heads.get(upload.branch) == heads.get(start)
    holds_weights = any(path.endswith(WEIGHT_SUFFIXES) for path in remote)
    if upload.branch in heads and upload.branch != "main" and holds_weights and not inherited:
        differing = _differing_weights(upload, remote)
        if differing and not force:
            raise HubRevisionExistsError(
                f"{repo_id}@{upload.branch} already holds a different checkpoint ({', '.join(differing)} differ from "
                f"{upload.stage_dir}); pass --force (force=True) to overwrite it, or push to another repo"
            )
        message = f"{message}, overwriting other weights" if differing else f"Update {upload.branch}: same weights"
    stale = sorted(set(remote) - set(upload.files) - KEPT_REMOTE_FILES)
    operations = upload.operations() + [CommitOperationDelete(path_in_repo=path) for path in stale]
    return api.create_commit(repo_id, operations, commit_message=message, revision=upload.branch).oid


def read_push_record(run_dir: str | os.PathLike) -> dict:
    """`pushed.json`: repo id -> branch -> {"stage", "commit", "files": {path: sha256}}."""
    return _read_json(Path(run_dir) / PUSH_RECORD) or {}


def _write_push_record(run_dir: Path, record: dict):
    path = run_dir / PUSH_RECORD
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def push_run(
    run_dir: str | os.PathLike,
    repo_id: str,
    stages: list[int] | None = None,
    private: bool | None = None,
    force: bool = False,
    include_replay: bool = False,
    token: str | None = None,
    api: HfApi | None = None,
    retries: int = 3,
    backoff: float = 2.0,
    card_template: str | os.PathLike | None = None,
) -> list[dict]:
    """
    Push the finished stages of a run folder to the Hub repo `repo_id`: stage i to branch `stage-i`, and the latest
    stage on the Hub to `main` as well. Only stages whose files differ from what `pushed.json` records are pushed.

    Args:
        stages: the stage indices to push (default: every finished stage).
        private: create the repo private (`None`: the Hub's default). An existing repo keeps its visibility.
        force: overwrite branches that hold other weights, and push even what `pushed.json` says is there.
        include_replay: also publish `replay/` (see the module docstring).
        token: a Hub token; by default huggingface_hub's own (`HF_TOKEN`, or the one `hf auth login` saved).
        api: the `HfApi` to use (its endpoint and token); built from `token` when not given.
        retries, backoff: transient failures are retried `retries` times, after backoff·2^k seconds.

    Returns one entry per branch: `{"branch", "stage", "status": "pushed" | "unchanged", "commit"}`. Raises
    `HubPushError` naming the stages that failed after every retry (the others are pushed and recorded), and
    `HubRevisionExistsError` when a branch holds other weights and `force` is off.
    """
    run_dir = Path(run_dir)
    validate_repo_id(repo_id)
    finished = finished_stages(run_dir)
    if not finished:
        raise FileNotFoundError(f"{run_dir} holds no finished stage (stage-<i>/ with {STAGE_INFO})")
    stages = finished if stages is None else sorted(set(stages))
    unknown = [stage for stage in stages if stage not in finished]
    if unknown:
        raise ValueError(f"stage(s) {unknown} of {run_dir} are not finished; finished stages: {finished}")

    record = read_push_record(run_dir)
    pushed = record.setdefault(repo_id, {})
    uploads = {stage: plan_stage_upload(run_dir, stage, repo_id, include_replay, card_template) for stage in stages}
    on_hub = {entry["stage"] for branch, entry in pushed.items() if branch != "main"}
    latest = max(on_hub | set(stages))
    if latest not in uploads:
        uploads[latest] = plan_stage_upload(run_dir, latest, repo_id, include_replay, card_template)
    main = uploads[latest].on_branch("main", f"main follows stage-{latest}")
    plan = [uploads[stage] for stage in stages] + [main]

    todo = [upload for upload in plan if force or pushed.get(upload.branch, {}).get("files") != upload.fingerprint()]
    results = {
        upload.branch: {"branch": upload.branch, "stage": upload.stage, "status": "unchanged"} for upload in plan
    }
    if not todo:
        return list(results.values())
    api = api or HfApi(token=token)
    create = partial(api.create_repo, repo_id, private=private, exist_ok=True)
    failures = []
    try:
        _with_retries(create, f"creating {repo_id}", retries, backoff)
    except Exception as error:
        failures.append(f"the repo ({type(error).__name__}: {error})")
        todo = []
    for upload in todo:
        starting_point = f"stage-{upload.stage - 1}" if upload.branch != "main" else None
        push = partial(_push_branch, api, repo_id, upload, force, starting_point)
        try:
            commit = _with_retries(push, f"pushing {upload.branch} to {repo_id}", retries, backoff)
        except HubRevisionExistsError:
            raise
        except Exception as error:
            failures.append(f"{upload.branch} ({type(error).__name__}: {error})")
            continue
        pushed[upload.branch] = {"stage": upload.stage, "commit": commit, "files": upload.fingerprint()}
        _write_push_record(run_dir, record)
        results[upload.branch].update(status="pushed", commit=commit)
    if failures:
        raise HubPushError(
            f"could not push {'; '.join(failures)} to {repo_id}. The checkpoints are untouched in {run_dir}; push "
            f"them later with: mera push {run_dir} {repo_id}"
        )
    return list(results.values())
