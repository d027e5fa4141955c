"""
The multimodal sample format and its loaders (media readers: `trainers.data.media`; the collator that feeds
`MeraForCausalLM`: `trainers.data.collator`).

A sample is one prompt/answer pair about one media item:

    {"id": "coco-1", "modality": "image", "media": "images/1.jpg", "prompt": "Describe the image.",
     "answer": "A dog on a sofa.", "task": "caption", "dataset": "MSCOCO"}

- `media` is a path (relative paths are resolved against `media_root`, by default the data file's folder) or an
  array (nested lists, as `datasets` stores them). Media are read lazily, batch by batch, in the collator.
- `prompt` may name its placeholder (`"<image>\\nDescribe the image."`); when it does not, the placeholder is put
  first, as in LLaVA.
- `task` is "caption" or "qa"; `dataset` names the data set the sample is scored in.
- `answer` may be a list of references (e.g. COCO's five captions): training uses the first, scoring uses all;
  `references` holds them (a one-item list when the answer is a single string).

LLaVA's conversation style is read too: `{"id", "image": "1.jpg", "conversations": [{"from": "human", "value":
"<image>\\nWhat is it?"}, {"from": "gpt", "value": "A dog."}]}`, the modality being whichever modality key the row
has ("image", "video", "audio", "point_cloud").
"""

import json
import os
from collections.abc import Iterable
from pathlib import Path

from datasets import Dataset

from ..errors import UserError, UserFileNotFoundError
from .media import MediaError

TASKS = ("caption", "qa")
LLAVA_MODALITY_KEYS = ("image", "video", "audio", "point_cloud")


def _normalize_row(row: dict, where: str, media_root: Path | None, defaults: dict) -> dict:
    """One raw row (project format or LLaVA conversation) -> the project's sample dict."""
    row = {**defaults, **{key: value for key, value in row.items() if value is not None}}
    if "conversations" in row:
        turns = row["conversations"]
        human = next((turn["value"] for turn in turns if turn.get("from") in ("human", "user")), None)
        answer = next((turn["value"] for turn in turns if turn.get("from") in ("gpt", "assistant")), None)
        if human is None or answer is None:
            raise UserError(f"{where}: 'conversations' needs a human turn and a gpt turn, got {turns!r}")
        modality = row.get("modality") or next((key for key in LLAVA_MODALITY_KEYS if key in row), None)
        row = {**row, "prompt": human, "answer": answer, "modality": modality, "media": row.get(modality)}
    missing = [key for key in ("modality", "prompt", "answer") if row.get(key) in (None, "")]
    if missing:
        raise UserError(f"{where}: missing field(s) {missing}; a sample needs modality, media, prompt and answer")
    task = row.get("task", "caption")
    if task not in TASKS:
        raise UserError(f"{where}: field 'task' must be one of {TASKS}, got {task!r}")
    media = row.get("media")
    if isinstance(media, str) and media_root is not None and not os.path.isabs(media):
        media = str(media_root / media)
    answer = row["answer"]
    references = list(answer) if isinstance(answer, list) else [answer]
    references = [str(reference) for reference in row.get("references") or references]
    return {
        "id": str(row.get("id", where)),
        "modality": row["modality"],
        "media": media,
        "prompt": row["prompt"],
        "answer": references[0] if isinstance(answer, list) else answer,
        "references": references,
        "task": task,
        "dataset": row.get("dataset", ""),
    }


def load_samples(
    source: str | os.PathLike | Dataset | Iterable[dict],
    media_root: str | os.PathLike | None = None,
    check_media: bool = True,
    **defaults,
) -> Dataset:
    """
    Load samples from a JSON/JSONL file, a `datasets.Dataset` or a list of dicts into a `Dataset` of the project's
    sample format. `defaults` fill fields that rows leave out (e.g. `modality="audio", dataset="AudioCaps"`).

    With `check_media`, every media path is checked now, so that a missing file stops the run before training.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise UserFileNotFoundError(f"sample file not found: {path}")
        media_root = Path(media_root) if media_root is not None else path.parent
        rows = _read_json_rows(path)
        name = str(path)
    else:
        media_root = Path(media_root) if media_root is not None else None
        rows = source
        name = "dataset"
    samples = [_normalize_row(dict(row), f"{name}, row {i + 1}", media_root, defaults) for i, row in enumerate(rows)]
    if not samples:
        raise UserError(f"{name}: no samples")
    if check_media:
        check_media_files(samples, name)
    return Dataset.from_list(samples)


def _read_json_rows(path: Path) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise UserError(f"{path}, line {number}: not valid JSON ({error.msg})") from error
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from error
    if not isinstance(data, list):
        raise UserError(f"{path}: expected a JSON list of samples (or a .jsonl file), got {type(data).__name__}")
    return data


def check_media_files(samples: Iterable[dict], name: str = "dataset"):
    """Raise `MediaError` naming every missing or unreadable media file (up to 10) and how many there are."""
    problems = []
    for sample in samples:
        media = sample["media"]
        if isinstance(media, str):
            if not os.path.isfile(media):
                problems.append(f"{media} (sample {sample['id']}): no such file")
            elif not os.access(media, os.R_OK) or os.path.getsize(media) == 0:
                problems.append(f"{media} (sample {sample['id']}): unreadable or empty")
        elif media is None:
            problems.append(f"sample {sample['id']}: no media")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise MediaError(f"{name}: {len(problems)} media file(s) missing or unreadable:\n  {shown}{more}")
