"""Streaming reads of converted sample files and the dry-run report of a continual run's stages."""

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path


def stream_samples(path: str | os.PathLike, media_root: str | os.PathLike | None = None) -> Iterator[dict]:
    """
    The samples of a JSONL (or JSON list) file one at a time, normalised as `trainers.data.load_samples` does
    (relative media resolved against `media_root`, by default the file's folder) but never all in memory: the file
    is streamed by `datasets` (`load_dataset("json", streaming=True)`), as `load_samples` reads it whole.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sample file not found: {path}")
    root = Path(media_root) if media_root is not None else path.parent
    # Imported here: `mera data --help` lists the converters without loading `datasets` or the model code.
    import datasets

    from ..samples import sample_from_row

    rows = iter(datasets.load_dataset("json", data_files=str(path), split="train", streaming=True))
    number = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as error:  # the JSON reader's error, wrapped by datasets
            cause = error.__cause__ or error
            raise ValueError(f"{path}: cannot be read as sample rows ({type(cause).__name__}: {cause})") from error
        number += 1
        yield sample_from_row(row, f"{path}, row {number}", root, {})


MEDIA_KINDS = ("image", "video", "audio", "point_cloud")


def _raw_rows(path: Path) -> Iterator[tuple[str, dict | Exception]]:
    """`(where, row)` for every row of a JSONL (or JSON list) file, or `(where, error)` for a row that cannot be
    read, so that a check reports every bad line instead of stopping at the first."""
    if path.suffix != ".jsonl":
        try:
            with open(path, encoding="utf-8") as handle:
                rows = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            yield f"{path}", ValueError(f"{path}: not valid JSON ({error})")
            return
        if not isinstance(rows, list):
            yield f"{path}", ValueError(f"{path}: expected a JSON list of samples (or a .jsonl file)")
            return
        for number, row in enumerate(rows, start=1):
            yield f"{path}, row {number}", row
        return
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as error:
                yield where, ValueError(f"{where}: not valid JSON ({error.msg})")


def _media_problem(media: str, kind: str | None, decode: bool) -> str | None:
    """Why `media` cannot be used (missing, empty, or - with `decode` - not readable as `kind`), or `None`."""
    if not os.path.isfile(media):
        return "no such file"
    if os.path.getsize(media) == 0:
        return "empty file"
    if decode and kind in MEDIA_KINDS:
        from ..media import read_media

        try:
            read_media(media, kind)
        except Exception as error:  # noqa: BLE001 - any decoder failure is what this check reports
            return f"cannot be read as {kind} ({str(error).split(chr(10))[0][:200]})"
    return None


def _file_report(
    path: Path, known: dict[str, str | None], problems: list[str], limit: int, kind: str | None, decode: bool
) -> dict:
    from ..samples import sample_from_row  # imported here, as in `stream_samples`: `mera data --help` stays light

    datasets: dict[str, dict[str, int]] = {}
    samples = bad_rows = missing_count = 0
    for where, row in _raw_rows(path):
        if isinstance(row, Exception):
            item_error = row
        else:
            try:
                item = sample_from_row(dict(row), where, path.parent, {})
                item_error = None
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                item_error = ValueError(f"{where}: {error}" if where not in str(error) else str(error))
        if item_error is not None:
            bad_rows += 1
            if len(problems) < limit:
                problems.append(f"BAD ROW {item_error}")
            continue
        samples += 1
        counts = datasets.setdefault(item["dataset"] or path.parent.name, {})
        counts[item["task"]] = counts.get(item["task"], 0) + 1
        media = item["media"]
        if isinstance(media, str):
            media = os.path.normpath(media)  # two data sets reach one image through different relative paths
            if media not in known:
                known[media] = _media_problem(media, kind or item["modality"], decode)
                if known[media] is not None:
                    missing_count += 1
                    if len(problems) < limit:
                        problems.append(f"{media} (sample {item['id']}, {path}): {known[media]}")
    return {
        "file": str(path),
        "samples": samples,
        "datasets": datasets,
        "missing_media": missing_count,
        "bad_rows": bad_rows,
    }


def dry_run_report(
    stages: Iterable[dict], data_root: str | os.PathLike, missing_limit: int = 20, decode_media: bool = True
) -> dict:
    """
    Check a continual run's data without loading a model: per stage and split, the samples per data set and task,
    every data file that does not exist, every row that cannot be read (bad JSON, missing fields), and every media
    file that does not exist or - with `decode_media` - cannot be decoded (a corrupt image, a truncated WAV).
    Nothing is raised: everything is reported.

    `stages` are dicts `{"modality": "image", "train": ["mscoco/train.jsonl", ...], "test": [...]}` (optionally
    `"stage": 1`, and `"kind"`: the media kind the files are decoded as, by default each sample's modality), file
    paths relative to `data_root` or absolute. Returns

        {"data_root": ..., "ok": bool, "stages": [{"stage": 1, "modality": "image",
           "train": {"samples": 83K, "datasets": {"MSCOCO": {"caption": 82783}, "OK-VQA": {"qa": 9009}},
                     "files": [{"file", "samples", "datasets", "missing_media", "bad_rows"}], "missing_files": []},
           "test": {...}, "missing_media": 0, "bad_rows": 0, "missing_examples": [...]}]}

    Media are checked once each (the same image may serve two data sets); `missing_examples` lists up to
    `missing_limit` of the problems (bad rows, missing or unreadable media).
    """
    root = Path(data_root)
    known: dict[str, str | None] = {}
    report = {"data_root": str(root), "ok": True, "stages": []}
    for index, stage in enumerate(stages, start=1):
        problems: list[str] = []
        entry = {"stage": stage.get("stage", index), "modality": stage.get("modality", stage.get("name", ""))}
        total_missing = total_bad = 0
        for split in ("train", "test"):
            files, missing_files, datasets, samples = [], [], {}, 0
            for name in stage.get(split) or []:
                path = Path(name) if os.path.isabs(name) else root / name
                if not path.is_file():
                    missing_files.append(str(path))
                    continue
                result = _file_report(path, known, problems, missing_limit, stage.get("kind"), decode_media)
                files.append(result)
                samples += result["samples"]
                total_missing += result["missing_media"]
                total_bad += result["bad_rows"]
                for dataset, counts in result["datasets"].items():
                    merged = datasets.setdefault(dataset, {})
                    for task, count in counts.items():
                        merged[task] = merged.get(task, 0) + count
            entry[split] = {"samples": samples, "datasets": datasets, "files": files, "missing_files": missing_files}
            report["ok"] &= not missing_files
        entry["missing_media"] = total_missing
        entry["bad_rows"] = total_bad
        entry["missing_examples"] = problems
        report["ok"] &= total_missing == 0 and total_bad == 0
        report["stages"].append(entry)
    return report


def format_dry_run_report(report: dict) -> str:
    """The report as lines a person reads: per stage and split, the counts; then what is missing."""
    lines = [f"data root: {report['data_root']}"]
    for stage in report["stages"]:
        lines.append(f"stage {stage['stage']}: {stage['modality']}")
        for split in ("train", "test"):
            part = stage[split]
            datasets = ", ".join(
                f"{dataset} {task} {count}"
                for dataset, tasks in part["datasets"].items()
                for task, count in tasks.items()
            )
            lines.append(f"  {split:<5} {part['samples']:>8} samples  ({datasets or 'none'})")
            lines += [f"  {split:<5} MISSING data file {path}" for path in part["missing_files"]]
        if stage.get("bad_rows"):
            lines.append(f"  BAD {stage['bad_rows']} row(s) that cannot be read as samples")
        if stage["missing_media"]:
            lines.append(f"  MISSING {stage['missing_media']} media file(s) missing or unreadable")
        if stage["missing_examples"]:
            lines.append("  e.g.:")
            lines += [f"    {example}" for example in stage["missing_examples"]]
    for problem in report.get("settings_problems", []):
        lines.append(f"SETTING {problem}")
    checked = "every data and media file"
    checked = f"every setting, {checked.removeprefix('every ')}" if "settings_problems" in report else checked
    lines.append(f"{checked} is usable" if report["ok"] else "some problems were found (see above)")
    return "\n".join(lines)
