"""LLaVA-style JSON as MLLM-CL (and CoIN) publish their tasks: conversations for training, question lists for test."""

import re
from collections import Counter
from pathlib import Path

from .core import ConversionPlan, Group, optional_source_file, read_json, source_dir, source_file

LLAVA_FORMAT = (
    'LLaVA JSON list: training rows {"id", "image", "conversations": [{"from": "human", "value"}, {"from": "gpt", '
    '"value"}, ...]}; test rows the same, or MLLM-CL/CoIN\'s {"question_id", "image", "text", "answer"}'
)


def _llava_groups(path: Path, media_root: Path, modality: str | None, dataset: str, task: str, name: str):
    """One group per row, its one sample the whole conversation (`trainers.data`'s reading of the row, so that a
    converted file and the LLaVA file loaded directly hold the same samples); rows without media are kept."""

    # Imported here: the samples module loads `datasets` and the model code, which `mera data --help` does not need.
    from ..samples import LLAVA_MODALITY_KEYS, sample_from_row

    def groups(counts: Counter):
        rows = read_json(path, dataset, LLAVA_FORMAT)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows; {dataset} expects {LLAVA_FORMAT}")
        counts["rows"] += len(rows)
        for index, row in enumerate(rows):
            where = f"{path}, item {index}"
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object; {dataset} expects {LLAVA_FORMAT}")
            if "conversations" not in row and "messages" not in row:
                if "text" not in row or "answer" not in row:
                    raise ValueError(
                        f"{where}: neither 'conversations' nor 'text' + 'answer' (found {sorted(row)}); expected "
                        f"{LLAVA_FORMAT}"
                    )
                row = {**row, "prompt": row["text"], "answer": row["answer"]}
            row_id = str(row.get("id", row.get("question_id", index)))
            has_media = any(row.get(key) is not None for key in ("media", *LLAVA_MODALITY_KEYS))
            if modality and has_media:
                row = {**row, "modality": modality}
            item = sample_from_row(
                {**row, "id": f"{name}-{row_id}"}, where, media_root, {"task": task, "dataset": dataset}
            )
            counts["samples (whole conversations)"] += 1
            counts["assistant turns"] += sum(turn["role"] == "assistant" for turn in item["messages"])
            if item["media"] is None:
                counts["text-only samples (kept)"] += 1
            yield Group(key=row_id, train=[item], test=item)

    return groups


def convert_llava(
    data_root: Path,
    train: str = "train.json",
    test: str | None = None,
    media_root: str = ".",
    modality: str | None = None,
    dataset: str | None = None,
    task: str = "qa",
) -> ConversionPlan:
    """
    LLaVA conversation JSON (MLLM-CL's train.json / test.json, CoIN's instructions, LLaVA's mix665k): one sample per
    row, the whole conversation with every turn, rows without media kept as text-only samples; test rows may also be
    {"question_id", "image", "text", "answer"}, and a test sample is scored on its last answer. The whole test file
    is kept (no subset) unless there is none, then 1K rows are held out of `train`.

    Files: `train` / `test` (default test.json if present); media paths are relative to `media_root` (relative to the
    data root). `modality` overrides the row's key (image / video / audio / point_cloud), `dataset` names the scored
    data set (default: the data root's folder name), `task` is "qa" or "caption". Turns are kept as written, LLaVA's
    "<image>" marker included: it is the placeholder of a modality named "image" (with none in a row, the placeholder
    goes in front of the first user turn).
    """
    dataset = dataset or Path(data_root).resolve().name
    prefix = re.sub(r"\W+", "_", dataset.lower())
    if task not in ("qa", "caption"):
        raise ValueError(f"llava: option task must be 'qa' or 'caption', got {task!r}")
    train_file = source_file(data_root, train, dataset, f"the training rows ({LLAVA_FORMAT})")
    media = source_dir(data_root, media_root)
    test_name = optional_source_file(data_root, test, ["test.json"])
    sources = {"train": str(train_file), "media_root": str(media)}
    test_groups = None
    if test_name:
        test_file = source_file(data_root, test_name, dataset, f"the test rows ({LLAVA_FORMAT})")
        sources["test"] = str(test_file)
        test_groups = _llava_groups(test_file, media, modality, dataset, task, f"{prefix}-test")
    return ConversionPlan(
        dataset=dataset,
        modality=modality or "(per row)",
        task=task,
        format=LLAVA_FORMAT,
        sources=sources,
        train_groups=_llava_groups(train_file, media, modality, dataset, task, prefix),
        test_groups=test_groups,
        default_test_size=None if test_groups else 1000,
        options={"modality": modality, "task": task},
    )
