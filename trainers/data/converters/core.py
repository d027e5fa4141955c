"""
The machinery every converter shares: what a converter returns (`ConversionPlan`), readers that check files and
columns, seeded subsets, and the writer of `<out>/<name>/{train,test}.jsonl` plus `manifest.json`.

A converter reads a data set's own annotation files and yields `Group`s. A group is the unit that is never split
between train and test (an image, a video, an object, a question): it holds the training samples it contributes and
the one test sample it becomes when it is drawn for the test set (all reference captions or answers in
`references`). The writer streams the groups, so annotations are read twice at most and media are never loaded,
only checked for existence (and converted where a reader is missing, see `trainers.data.media`).
"""

import csv
import hashlib
import heapq
import json
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ...safety import confined_path
from ..media import MediaError

DEFAULT_QA_INSTRUCTION = "Answer the question using a single word or phrase."


@dataclass
class Group:
    """A unit kept whole by the train/test split: its training samples and the test sample it would become."""

    key: str
    train: list[dict] = field(default_factory=list)
    test: dict | None = None


@dataclass
class ConversionPlan:
    """
    What a converter returns: how to stream the data set's groups, plus what the manifest should say about them.

    `train_groups(counts)` and `test_groups(counts)` are re-iterable generator functions; they add filter counts
    ("rows read", "confidence == 'yes'") to `counts`. Without `test_groups` the test set is held out of the
    training groups. `media_step(path, out_root)` turns a source media file into one `trainers.data.read_media`
    can read (e.g. a .ply cloud into .npy) and returns the new path; it runs only for samples that are written.
    """

    dataset: str
    modality: str
    task: str
    format: str
    sources: dict[str, str]
    train_groups: Callable[[Counter], Iterator[Group]]
    test_groups: Callable[[Counter], Iterator[Group]] | None = None
    default_test_size: int | None = 1000
    default_train_size: int | None = None
    media_step: Callable[[str, Path], str] | None = None
    notes: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


# --- reading annotation files -------------------------------------------------------------------------------------
def source_file(root: Path, value: str | os.PathLike, dataset: str, what: str) -> Path:
    """`value` (absolute, or relative to the data set's root) as an existing file, or a message saying what it is."""
    path = Path(value) if os.path.isabs(value) else root / value
    if not path.is_file():
        raise FileNotFoundError(
            f"{dataset}: expected {what} at {path}, but there is no such file. Give the folder holding the data set's "
            f"files with --data-root, or this file's path with --option (see `mera data list`)."
        )
    return path


def optional_source_file(root: Path, value: str | None, candidates: Iterable[str]) -> str | None:
    """
    An optional file (e.g. a separate test split): an explicitly given one is returned for `source_file` to check;
    "none" turns it off; by default the first candidate that exists under `root`, if any.
    """
    if value is not None:
        return None if value.strip().lower() in ("", "none") else value
    return next((name for name in candidates if (root / name).is_file()), None)


def source_dir(root: Path, value: str) -> Path:
    return Path(value) if os.path.isabs(value) else root / value


def read_json(path: Path, dataset: str, expected: str) -> Any:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path}: not valid JSON ({error.msg} at line {error.lineno}); {dataset} expects {expected}"
        ) from error


def require_keys(item: Any, keys: Iterable[str], path: Path, where: str, dataset: str, expected: str) -> None:
    """Raise naming the first missing key, the file, the entry and the expected format."""
    if not isinstance(item, dict):
        raise ValueError(
            f"{path}, {where}: expected a JSON object, got {type(item).__name__}; {dataset} expects {expected}"
        )
    missing = [key for key in keys if key not in item]
    if missing:
        raise ValueError(
            f"{path}, {where}: missing field(s) {missing} (found {sorted(item)}); {dataset} expects {expected}"
        )


def read_csv_rows(
    path: Path, required: Iterable[str], dataset: str, expected: str, names: list[str] | None = None
) -> Iterator[dict]:
    """
    Stream a CSV file's rows as dicts, after checking that its header has every `required` column. With `names`,
    the file has no header and each row must have at least that many fields.
    """
    required = list(required)
    with open(path, encoding="utf-8-sig", newline="") as handle:
        if names is None:
            reader = csv.DictReader(handle)
            columns = [name.strip() for name in reader.fieldnames or []]
            missing = [column for column in required if column not in columns]
            if missing:
                raise ValueError(
                    f"{path}: column(s) {missing} not found (the header has {columns}); {dataset} expects {expected}"
                )
            reader.fieldnames = columns
            yield from reader
            return
        for number, fields in enumerate(csv.reader(handle), start=1):
            if not fields or not any(field.strip() for field in fields):
                continue
            if len(fields) < len(names):
                raise ValueError(
                    f"{path}, line {number}: expected {len(names)} columns ({', '.join(names)}), got {len(fields)}; "
                    f"{dataset} expects {expected}"
                )
            yield dict(zip(names, fields))


def most_frequent(values: Iterable[str]) -> str:
    """The most frequent value; ties go to the one seen first."""
    return Counter(values).most_common(1)[0][0]


def qa_prompt(question: str, instruction: str) -> str:
    question = question.strip()
    return f"{question}\n{instruction}" if instruction else question


def sample(key: str, modality: str, media: Path | str, prompt: str, answer: str, task: str, dataset: str, **extra):
    return {
        "id": key,
        "modality": modality,
        "media": str(media),
        "prompt": prompt,
        "answer": answer,
        "task": task,
        "dataset": dataset,
        **extra,
    }


# --- seeded selection ---------------------------------------------------------------------------------------------
def rank(seed: int, name: str, key: str) -> int:
    """A seeded pseudo-random rank of `key`: independent of file order, Python's hash seed and the machine."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{name}\x00{key}".encode()).digest()[:8], "big")


class _Smallest:
    """The `size` distinct keys of lowest rank seen in a stream (all of them when `size` is None)."""

    def __init__(self, size: int | None):
        self.size = size
        self.heap: list[tuple[int, int, str, Any]] = []  # (-rank, -order, key, payload): a max-heap on rank
        self.keys: set[str] = set()
        self.order = 0

    def offer(self, rank_: int, key: str, payload: Any) -> None:
        if key in self.keys:
            return
        self.order += 1
        item = (-rank_, -self.order, key, payload)
        if self.size is None or len(self.heap) < self.size:
            heapq.heappush(self.heap, item)
            self.keys.add(key)
        elif item > self.heap[0]:
            self.keys.discard(heapq.heappushpop(self.heap, item)[2])
            self.keys.add(key)

    def in_stream_order(self) -> list[Any]:
        return [payload for *_, payload in sorted(self.heap, key=lambda item: -item[1])]


# --- writing ------------------------------------------------------------------------------------------------------
class _MediaCheck:
    """Existence checks of media files, remembered; missing ones either dropped (counted) or collected for an error."""

    def __init__(self, skip_missing: bool):
        self.skip_missing = skip_missing
        self.known: dict[str, bool] = {}
        self.missing: list[str] = []

    def group_ok(self, group: Group) -> bool:
        samples = group.train + ([group.test] if group.test else [])
        absent = []
        for item in samples:
            media = item["media"]
            if media is None:  # a text-only sample
                continue
            if media not in self.known:
                self.known[media] = os.path.isfile(media)
                if not self.known[media] and not self.skip_missing:
                    self.missing.append(f"{media} (sample {item['id']})")
            if not self.known[media]:
                absent.append(media)
        return not absent

    def raise_if_missing(self, dataset: str) -> None:
        if self.missing:
            shown = "\n  ".join(self.missing[:10])
            more = f"\n  ... and {len(self.missing) - 10} more" if len(self.missing) > 10 else ""
            raise MediaError(
                f"{dataset}: {len(self.missing)} media file(s) referenced by the annotations do not exist:\n  {shown}"
                f"{more}\nCheck the media folder options (`mera data list`), or pass --skip-missing-media to drop "
                f"those samples (e.g. YouTube clips that could not be downloaded); the manifest counts them."
            )


def _scan(groups: Iterator[Group], check: _MediaCheck, counts: Counter, label: str, progress: bool):
    for group in tqdm(groups, desc=label, unit=" groups", disable=not progress, leave=False):
        if not check.group_ok(group):
            counts["dropped: media file missing"] += 1
            continue
        yield group


def _resolve_size(size: int | str | None, default: int | None, option: str) -> int | None:
    if size is None:
        return default
    if isinstance(size, str):
        if size.lower() == "all":
            return None
        if not size.isdigit():
            raise ValueError(f"{option} must be a positive number or 'all', got {size!r}")
        size = int(size)
    if size < 1:
        raise ValueError(f"{option} must be a positive number or 'all', got {size}")
    return size


def _write_jsonl(path: Path, samples: Iterable[dict]) -> int:
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for item in samples:
            handle.write(json.dumps(item, ensure_ascii=False) + "\n")
            count += 1
    return count


def write_plan(
    plan: ConversionPlan,
    name: str,
    out: str | os.PathLike,
    seed: int = 0,
    test_size: int | str | None = None,
    train_size: int | str | None = None,
    skip_missing_media: bool = False,
    absolute_paths: bool = False,
    progress: bool = True,
) -> dict:
    """
    Write `<out>/<name>/train.jsonl`, `test.jsonl` and `manifest.json` from a plan; return the manifest.

    - The test set is the `test_size` groups of lowest seeded rank (from the plan's test source, or held out of the
      training groups); the training set is every remaining training sample, or the `train_size` of lowest rank.
    - Sizes: None takes the data set's default (the paper's), "all" keeps everything.
    - Media paths are written relative to `<out>/<name>/` (how `trainers.data.load_samples` resolves them) unless
      `absolute_paths`. Files are written under temporary names and renamed at the end, the manifest last.
    """
    test_size = _resolve_size(test_size, plan.default_test_size, "test size")
    train_size = _resolve_size(train_size, plan.default_train_size, "train size")
    confined_path(out, name, what="output name")  # `--name ../../x` must not write outside `--out`
    folder = Path(out) / name
    folder.mkdir(parents=True, exist_ok=True)
    check = _MediaCheck(skip_missing_media)
    test_counts, train_counts = Counter(), Counter()

    # Test set: the lowest-ranked groups of the test source, or of the training groups (then held out of them).
    source = plan.test_groups or plan.train_groups
    chosen = _Smallest(test_size)
    for group in _scan(source(test_counts), check, test_counts, f"{name}: test groups", progress):
        if group.test is not None:
            chosen.offer(rank(seed, name, group.key), group.key, group.test)
    check.raise_if_missing(plan.dataset)
    test_samples = chosen.in_stream_order()
    held_out = chosen.keys if plan.test_groups is None else set()
    if plan.test_groups is None:  # the same groups are counted again, as training groups, below
        test_counts = Counter({"groups held out of the training source": len(test_samples)})

    media_cache: dict[str, str] = {}

    def finish(item: dict) -> dict:
        media = item["media"]
        if media is None:
            return item
        if media not in media_cache:
            new = plan.media_step(media, Path(out)) if plan.media_step else media
            media_cache[media] = (
                os.path.abspath(new) if absolute_paths else Path(os.path.relpath(new, folder)).as_posix()
            )
        return {**item, "media": media_cache[media]}

    def training_samples() -> Iterator[dict]:
        for group in _scan(plan.train_groups(train_counts), check, train_counts, f"{name}: train groups", progress):
            if group.key in held_out:
                train_counts["held out for the test set"] += 1
                continue
            yield from group.train

    temporary = {split: folder / f".{split}.jsonl.partial" for split in ("train", "test", "manifest")}
    try:
        if train_size is None:
            train_count = _write_jsonl(temporary["train"], (finish(item) for item in training_samples()))
        else:
            subset = _Smallest(train_size)
            for item in training_samples():
                subset.offer(rank(seed, name, item["id"]), item["id"], item)
            train_count = _write_jsonl(temporary["train"], (finish(item) for item in subset.in_stream_order()))
        check.raise_if_missing(plan.dataset)
        test_count = _write_jsonl(temporary["test"], (finish(item) for item in test_samples))
        if train_count == 0:
            raise ValueError(
                f"{plan.dataset}: no training sample is left after filtering; see the counts {dict(train_counts)}"
            )
    except BaseException:
        for path in temporary.values():  # an earlier conversion's files stay as they were
            path.unlink(missing_ok=True)
        raise

    manifest = {
        "name": name,
        "dataset": plan.dataset,
        "modality": plan.modality,
        "task": plan.task,
        "format": plan.format,
        "sources": plan.sources,
        "options": plan.options,
        "seed": seed,
        "test_size": test_size,
        "train_size": train_size,
        "test_from": "the test source" if plan.test_groups else "held out of the training source (whole groups)",
        "counts": {"train": train_count, "test": test_count},
        "filters": {"train": dict(train_counts), "test": dict(test_counts)},
        "skip_missing_media": skip_missing_media,
        "media_paths": "absolute" if absolute_paths else "relative to this folder",
        "notes": plan.notes,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    temporary["manifest"].write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    for split, final in (("train", "train.jsonl"), ("test", "test.jsonl"), ("manifest", "manifest.json")):
        os.replace(temporary[split], folder / final)
    return manifest
