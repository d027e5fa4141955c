"""
Publishing a continual run on the Hugging Face Hub: one model repo per run, one branch per stage (each stage's
model card: `trainers.hub.card`).

    org/name
      stage-1   θ1, complete by itself: model.safetensors, config.json (with auto_map), the modeling_mera code,
      stage-2   tokenizer and processor files (processor_config.json, chat_template.jinja), stage.json,
      ...       scores.json (the score matrix up to this stage) and README.md, the model card rendered from the
                top-level model_card.md
      main      follows the latest stage pushed

A stage branch starts from the previous stage's branch, so its history follows the training. Each push commits the
stage folder as it is (files the folder no longer holds are deleted from the branch), through `HfApi.create_commit`;
the Hub skips files whose content did not change. A stage's branch points at that stage's commit or does not exist:
a branch created for a commit that then fails is deleted, and every commit is verified (the branch's files against
the stage's hashes) once it landed.

What is not published:
- `replay/`, the stage's replay samples. They are rows of the training sets (captions, questions, answers) with the
  local paths of their media files: publishing them would redistribute data-set text and disclose local paths, and
  a later stage could not use them anyway without the media. A later stage trained from a Hub checkpoint needs
  the run folder, or the same training data to draw the replay sample again (the draw is seeded, see
  `trainers.data.replay`). `include_replay=True` (`mera push --include-replay`) publishes them as they are, for runs
  whose data lives at the same paths wherever the stage is continued.
- `eval/` predictions: the card and scores.json carry the scores.

Guard (like open-r1's `check_hub_revision_exists`): a stage branch that already holds other weights is never
overwritten unless `force=True`; the same weights with a newer card or scores are updated. The check compares the
branch's content with the local stage (file hashes); a branch holding another stage of the same run (left by a push
whose commit failed and whose branch could not be deleted, e.g. during an outage) is overwritten. Every push is
recorded in the run folder (`pushed.json`): a branch whose head is still the recorded commit of the same files is
skipped, everything else is pushed, so `mera push` after any partial failure converges.

Failures: transient errors (connection errors, HTTP 408/429/5xx) are retried with exponential backoff; nothing in the
run folder is ever modified except `pushed.json`. Tokens are handled by huggingface_hub (`HF_TOKEN`, `hf auth login`,
or `token=`), never printed or written.
"""

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import validate_repo_id

from ..checkpoint import STAGE_INFO, is_finished_stage
from .card import (
    _read_json,
    _stage_files,
    finished_stages,
    render_model_card,
    stage_score_matrix,
)

__all__ = [
    "PUSH_RECORD",
    "read_push_record",
    "HubPushError",
    "HubRevisionExistsError",
    "StageUpload",
    "plan_stage_upload",
    "push_run",
]

logger = logging.getLogger(__name__)

PUSH_RECORD = "pushed.json"
WEIGHT_SUFFIXES = (".safetensors",)
KEPT_REMOTE_FILES = {".gitattributes"}  # written by the Hub when the repo is created


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


def _blob_matches(entry, local_sha256: str, content: Path | bytes) -> bool:
    """Whether a file of the branch (a tree entry) has the content of a local file."""
    if getattr(entry, "lfs", None) is not None:
        return entry.lfs.sha256 == local_sha256
    return entry.blob_id == _git_blob_id(content)


def _stage_holding(remote: dict[str, object], run_dir: Path) -> int | None:
    """The stage of the local run whose `stage.json` the branch holds (a leftover of a push that failed after
    its branch was created from that stage), or `None`."""
    entry = remote.get(STAGE_INFO)
    if entry is None:
        return None
    for stage in finished_stages(run_dir):
        if entry.blob_id == _git_blob_id(run_dir / f"stage-{stage}" / STAGE_INFO):
            return stage
    return None


def _check_branch_content(upload: StageUpload, remote: dict[str, object], force: bool, repo_id: str) -> str:
    """
    Compare what the branch holds with the local stage; returns the commit message to use. A branch that holds
    other weights is refused (unless `force`), except when what it holds is another stage of this same run: then
    an earlier push created it and failed before its commit, and it is overwritten.
    """
    differing = _differing_weights(upload, remote)
    if not differing:
        return f"Update {upload.branch}: same weights" if remote else upload.commit_message
    if not any(path.endswith(WEIGHT_SUFFIXES) for path in remote):
        return upload.commit_message
    leftover = _stage_holding(remote, upload.stage_dir.parent)
    if leftover is not None and leftover != upload.stage:
        return f"{upload.commit_message} (the branch held stage {leftover} after an interrupted push)"
    if not force:
        raise HubRevisionExistsError(
            f"{repo_id}@{upload.branch} already holds a different checkpoint ({', '.join(differing)} differ from "
            f"{upload.stage_dir}); pass --force (force=True) to overwrite it, or push to another repo"
        )
    return f"{upload.commit_message}, overwriting other weights"


def _verify_branch(api: HfApi, repo_id: str, upload: StageUpload, commit: str):
    """After the commit: the branch holds exactly the upload's files, with their content."""
    remote = _remote_files(api, repo_id, commit)
    local = upload.fingerprint()
    wrong = sorted(
        path
        for path in (set(remote) | set(local)) - KEPT_REMOTE_FILES
        if path not in remote or path not in local or not _blob_matches(remote[path], local[path], upload.files[path])
    )
    if wrong:
        raise HubPushError(
            f"{repo_id}@{upload.branch} does not hold {upload.stage_dir} after commit {commit}: {wrong[:10]} differ"
        )


def _delete_branch(api: HfApi, repo_id: str, branch: str):
    """Remove a branch this push created, whose commit failed: it would hold another stage's files."""
    try:
        api.delete_branch(repo_id, branch=branch)
    except Exception as error:  # the Hub may still be down; the next push recognises the leftover by its content
        logger.warning(f"could not delete {repo_id}@{branch} after its failed commit: {type(error).__name__}: {error}")


def _push_branch(api: HfApi, repo_id: str, upload: StageUpload, force: bool, starting_point: str | None) -> str:
    """
    One commit that makes `upload.branch` hold exactly the upload's files, verified afterwards; returns its id.

    The branch points at this stage's commit or does not exist: a branch this call creates (at the head of
    `starting_point`, so that the history follows the training) is deleted again when its commit fails.
    """
    heads = {ref.name: ref.target_commit for ref in api.list_repo_refs(repo_id).branches}
    created = upload.branch not in heads
    if created:
        start = starting_point if starting_point in heads else "main"
        api.create_branch(repo_id, branch=upload.branch, revision=heads[start])
        message = upload.commit_message
    remote = _remote_files(api, repo_id, upload.branch)
    if not created:
        message = upload.commit_message
        if upload.branch != "main":
            message = _check_branch_content(upload, remote, force, repo_id)
    stale = sorted(set(remote) - set(upload.files) - KEPT_REMOTE_FILES)
    operations = upload.operations() + [CommitOperationDelete(path_in_repo=path) for path in stale]
    try:
        commit = api.create_commit(repo_id, operations, commit_message=message, revision=upload.branch).oid
    except Exception:
        if created:
            _delete_branch(api, repo_id, upload.branch)
        raise
    _verify_branch(api, repo_id, upload, commit)
    return commit


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

    results = {
        upload.branch: {"branch": upload.branch, "stage": upload.stage, "status": "unchanged"} for upload in plan
    }
    api = api or HfApi(token=token)
    create = partial(api.create_repo, repo_id, private=private, exist_ok=True)
    failures = []
    try:
        _with_retries(create, f"creating {repo_id}", retries, backoff)
        heads = _with_retries(partial(api.list_repo_refs, repo_id), f"listing {repo_id}'s branches", retries, backoff)
        heads = {ref.name: ref.target_commit for ref in heads.branches}
    except Exception as error:
        failures.append(f"the repo ({type(error).__name__}: {error})")
        plan = []

    def already_there(upload: StageUpload) -> bool:
        """Recorded with the same files, and the branch still points at the recorded commit (commit ids name
        their content)."""
        entry = pushed.get(upload.branch, {})
        return entry.get("files") == upload.fingerprint() and heads.get(upload.branch) == entry.get("commit")

    todo = [upload for upload in plan if force or not already_there(upload)]
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
