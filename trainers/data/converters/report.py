"""Streaming reads of converted sample files and the dry-run report of a continual run's stages."""

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


def _file_report(path: Path, known: dict[str, bool], missing: list[str], limit: int) -> dict:
    datasets: dict[str, dict[str, int]] = {}
    samples = 0
    missing_count = 0
    for item in stream_samples(path):
        samples += 1
        counts = datasets.setdefault(item["dataset"] or path.parent.name, {})
        counts[item["task"]] = counts.get(item["task"], 0) + 1
        media = item["media"]
        if isinstance(media, str):
            media = os.path.normpath(media)  # two data sets reach one image through different relative paths
            if media not in known:
                known[media] = os.path.isfile(media) and os.path.getsize(media) > 0
                if not known[media]:
                    missing_count += 1
                    if len(missing) < limit:
                        missing.append(f"{media} (sample {item['id']}, {path})")
    return {"file": str(path), "samples": samples, "datasets": datasets, "missing_media": missing_count}


def dry_run_report(stages: Iterable[dict], data_root: str | os.PathLike, missing_limit: int = 20) -> dict:
    """
    Check a continual run's data without loading a model: per stage and split, the samples per data set and task,
    and every media file that does not exist (a data file that does not exist is reported too, never raised).

    `stages` are dicts `{"modality": "image", "train": ["mscoco/train.jsonl", ...], "test": [...]}` (optionally
    `"stage": 1`), file paths relative to `data_root` or absolute. Returns

        {"data_root": ..., "ok": bool, "stages": [{"stage": 1, "modality": "image",
           "train": {"samples": 83K, "datasets": {"MSCOCO": {"caption": 82783}, "OK-VQA": {"qa": 9009}},
                     "files": [{"file", "samples", "datasets", "missing_media"}], "missing_files": []},
           "test": {...}, "missing_media": 0, "missing_examples": [...]}]}

    Media are checked once each (the same image may serve two data sets); `missing_examples` lists up to
    `missing_limit` of the missing ones.
    """
    root = Path(data_root)
    known: dict[str, bool] = {}
    report = {"data_root": str(root), "ok": True, "stages": []}
    for index, stage in enumerate(stages, start=1):
        missing: list[str] = []
        entry = {"stage": stage.get("stage", index), "modality": stage.get("modality", stage.get("name", ""))}
        total_missing = 0
        for split in ("train", "test"):
            files, missing_files, datasets, samples = [], [], {}, 0
            for name in stage.get(split) or []:
                path = Path(name) if os.path.isabs(name) else root / name
                if not path.is_file():
                    missing_files.append(str(path))
                    continue
                result = _file_report(path, known, missing, missing_limit)
                files.append(result)
                samples += result["samples"]
                total_missing += result["missing_media"]
                for dataset, counts in result["datasets"].items():
                    merged = datasets.setdefault(dataset, {})
                    for task, count in counts.items():
                        merged[task] = merged.get(task, 0) + count
            entry[split] = {"samples": samples, "datasets": datasets, "files": files, "missing_files": missing_files}
            report["ok"] &= not missing_files
        entry["missing_media"] = total_missing
        entry["missing_examples"] = missing
        report["ok"] &= total_missing == 0
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
        if stage["missing_media"]:
            lines.append(f"  MISSING {stage['missing_media']} media file(s), e.g.:")
            lines += [f"    {example}" for example in stage["missing_examples"]]
    lines.append("every data file and media file exists" if report["ok"] else "some files are missing (see above)")
    return "\n".join(lines)
