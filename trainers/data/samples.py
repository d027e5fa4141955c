"""
The multimodal sample format and its loaders (media readers: `trainers.data.media`; the collator that feeds
`MeraForCausalLM`: `trainers.data.collator`).

A sample is one whole conversation (any number of turns) about zero or one media item:

    {"id": "coco-1", "modality": "image", "media": "images/1.jpg", "task": "qa", "dataset": "RS",
     "messages": [{"role": "user", "content": "How many planes?"}, {"role": "assistant", "content": "3"},
                  {"role": "user", "content": "Any ships?"}, {"role": "assistant", "content": "No"}]}

- `media` is a path (relative paths are resolved against `media_root`, by default the data file's folder) or an
  array (nested lists, as `datasets` stores them). Media are read lazily, batch by batch, in the collator. A row
  without media (no `media` and no modality key) is a text-only sample; `modality` is then None.
- The conversation may also be given as LLaVA writes it (`"conversations": [{"from": "human", "value":
  "<image>\nWhat is it?"}, {"from": "gpt", "value": "A dog."}, ...]`, the media under the modality's own key:
  "image", "video", "audio" or "point_cloud") or as one `prompt` / `answer` pair. A turn may name its placeholder
  (`"<image>\nDescribe the image."`); when none does, the placeholder goes in front of the first user turn, as in
  LLaVA. Training learns every assistant turn (`trainers.data.conversations`).
- `prompt` and `answer` hold the last user turn and the last assistant turn: evaluation asks the conversation up to
  its last user turn and scores the answer against `references` (every reference answer, e.g. COCO's five captions;
  a one-item list otherwise). An `answer` given as a list trains on its first item.
- `task` is "caption" or "qa" (default: "qa" for conversations, "caption" for a prompt/answer row); `dataset` names
  the data set the sample is scored in.
"""

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import datasets
from datasets import Dataset

from ..errors import UserError, UserFileNotFoundError
from .conversations import conversation_from_row
from .media import MediaError

TASKS = ("caption", "qa")
LLAVA_MODALITY_KEYS = ("image", "video", "audio", "point_cloud")


def _media_of(row: dict, where: str) -> tuple[str | None, Any]:
    """The row's modality and media item: `modality` + `media`, or LLaVA's modality key (a one-item list allowed)."""
    modality = row.get("modality")
    if "media" in row:
        return modality, row["media"]
    key = next((key for key in LLAVA_MODALITY_KEYS if row.get(key) is not None), None)
    if key is None:
        return modality, None
    media = row[key]
    if isinstance(media, list) and len(media) == 1 and isinstance(media[0], str):
        media = media[0]
    elif isinstance(media, list) and all(isinstance(item, str) for item in media):
        raise UserError(f"{where}: {len(media)} {key} files; a sample holds zero or one media item")
    return modality or key, media


def sample_from_row(row: dict, where: str, media_root: Path | None, defaults: dict) -> dict:
    """One raw row (project format, LLaVA conversation, text only) -> the project's sample dict."""
    given = {key: value for key, value in row.items() if value is not None}
    modality, media = _media_of(given, where)
    if media is None and modality is not None:
        raise UserError(
            f"{where}: the row names modality {modality!r} but has no 'media'; a text-only row has neither"
        )
    row = {**defaults, **given}
    messages = conversation_from_row(row, where)
    if media is None:
        modality = None
    else:
        modality = modality or defaults.get("modality")
        if modality in (None, ""):
            raise UserError(f"{where}: missing field 'modality'; a sample with media needs its modality")
    conversational = bool(given.get("messages") or given.get("conversations"))
    task = row.get("task", "qa" if conversational else "caption")
    if task not in TASKS:
        raise UserError(f"{where}: field 'task' must be one of {TASKS}, got {task!r}")
    if isinstance(media, str) and media_root is not None and not os.path.isabs(media):
        media = str(media_root / media)
    answer = messages[-1]["content"]
    given_answer = row.get("answer") if not conversational else None
    references = row.get("references") or (given_answer if isinstance(given_answer, list) else [answer])
    return {
        "id": str(row.get("id", where)),
        "modality": modality,
        "media": media,
        "messages": messages,
        "prompt": next(turn["content"] for turn in reversed(messages) if turn["role"] == "user"),
        "answer": answer,
        "references": [str(reference) for reference in references],
        "task": task,
        "dataset": row.get("dataset", ""),
    }


def read_sample_file(path: Path) -> Dataset:
    """A JSON list or JSON Lines file as a `Dataset`, through `datasets` (cached and memory-mapped)."""
    try:
        return datasets.load_dataset("json", data_files=str(path), split="train")
    except Exception as error:  # datasets wraps the parser's error; its cause says what is wrong
        cause = error.__cause__ or error
        raise UserError(
            f"{path}: cannot be read as sample rows, a JSON list or one JSON object per line "
            f"({type(cause).__name__}: {cause})"
        ) from error


def load_samples(
    source: str | os.PathLike | Dataset | Iterable[dict],
    media_root: str | os.PathLike | None = None,
    check_media: bool = True,
    **defaults,
) -> Dataset:
    """
    Load samples from a JSON/JSONL file, a `datasets.Dataset` or a list of dicts into a `Dataset` of the project's
    sample format. `defaults` fill fields that rows leave out (e.g. `modality="audio", dataset="AudioCaps"`).
    Every row becomes one sample: no turn and no row (text-only ones included) is dropped.

    With `check_media`, every media path is checked now, so that a missing file stops the run before training.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise UserFileNotFoundError(f"sample file not found: {path}")
        root = Path(media_root) if media_root is not None else path.parent
        raw = read_sample_file(path)
        if not len(raw):
            raise UserError(f"{path}: no samples")
        samples = raw.map(
            lambda row, index: sample_from_row(row, f"{path}, row {index + 1}", root, defaults),
            with_indices=True,
            remove_columns=raw.column_names,
            desc=f"reading {path.name}",
        )
        name = str(path)
    else:
        root = Path(media_root) if media_root is not None else None
        rows = [sample_from_row(dict(row), f"dataset, row {i + 1}", root, defaults) for i, row in enumerate(source)]
        if not rows:
            raise UserError("dataset: no samples")
        samples, name = Dataset.from_list(rows), "dataset"
    # Columns that are empty everywhere (no media: text-only rows) are typed as strings, so that they join others.
    nulls = {key: datasets.Value("string") for key, feature in samples.features.items()
             if key in ("modality", "media") and feature == datasets.Value("null")}  # fmt: skip
    if nulls:
        samples = samples.cast(datasets.Features({**samples.features, **nulls}))
    if check_media:
        check_media_files(samples, name)
    return samples


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
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise MediaError(f"{name}: {len(problems)} media file(s) missing or unreadable:\n  {shown}{more}")
