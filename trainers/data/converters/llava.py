"""LLaVA-style JSON as MLLM-CL (and CoIN) publish their tasks: conversations for training, question lists for test."""

import re
from collections import Counter
from pathlib import Path

from ..samples import LLAVA_MODALITY_KEYS
from .core import ConversionPlan, Group, optional_source_file, read_json, sample, source_dir, source_file

LLAVA_FORMAT = (
    'LLaVA JSON list: training rows {"id", "image", "conversations": [{"from": "human", "value"}, {"from": "gpt", '
    '"value"}, ...]}; test rows the same, or MLLM-CL/CoIN\'s {"question_id", "image", "text", "answer"}'
)
PLACEHOLDER = re.compile(r"\s*<(?:" + "|".join(LLAVA_MODALITY_KEYS) + r")>\s*")


def _turns(row: dict, path: Path, index: int) -> list[tuple[str, str]]:
    """(question, answer) pairs of a row: every human turn with the assistant turn that follows it."""
    if "conversations" in row:
        pairs, question = [], None
        for turn in row["conversations"]:
            if not isinstance(turn, dict) or "value" not in turn or "from" not in turn:
                raise ValueError(
                    f"{path}, item {index}: each turn needs 'from' and 'value', got {turn!r}; {LLAVA_FORMAT}"
                )
            if turn["from"] in ("human", "user"):
                question = turn["value"]
            elif turn["from"] in ("gpt", "assistant") and question is not None:
                pairs.append((question, turn["value"]))
                question = None
        return pairs
    if "text" in row and "answer" in row:
        return [(row["text"], row["answer"])]
    raise ValueError(
        f"{path}, item {index}: neither 'conversations' nor 'text' + 'answer' (found {sorted(row)}); "
        f"expected {LLAVA_FORMAT}"
    )


def _llava_groups(path: Path, media_root: Path, modality: str | None, dataset: str, task: str, name: str):
    def groups(counts: Counter):
        rows = read_json(path, dataset, LLAVA_FORMAT)
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of rows; {dataset} expects {LLAVA_FORMAT}")
        counts["rows"] += len(rows)
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise ValueError(f"{path}, item {index}: expected a JSON object; {dataset} expects {LLAVA_FORMAT}")
            key = next((key for key in LLAVA_MODALITY_KEYS if row.get(key)), None)
            if key is None:
                counts["rows without a media file (dropped)"] += 1
                continue
            media = row[key][0] if isinstance(row[key], list) else row[key]
            row_id = str(row.get("id", row.get("question_id", index)))
            items = [
                sample(
                    f"{name}-{row_id}-{turn}",
                    modality or key,
                    media_root / media,
                    PLACEHOLDER.sub(" ", question).strip(),
                    str(answer).strip(),
                    task,
                    dataset,
                )
                for turn, (question, answer) in enumerate(_turns(row, path, index))
            ]
            if not items:
                counts["rows without a question-answer pair (dropped)"] += 1
                continue
            counts["question-answer pairs"] += len(items)
            # A multi-turn conversation trains on every turn; as a test sample it is asked its first question.
            yield Group(key=row_id, train=items, test={**items[0], "id": f"{name}-{row_id}"})

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
    LLaVA conversation JSON (MLLM-CL's train.json / test.json, CoIN's instructions): one sample per human/assistant
    turn pair; test rows may also be {"question_id", "image", "text", "answer"}. The whole test file is kept (no
    subset) unless there is none, then 1K rows are held out of `train`.

    Files: `train` / `test` (default test.json if present); media paths are relative to `media_root` (relative to the
    data root). `modality` overrides the row's key (image / video / audio / point_cloud), `dataset` names the scored
    data set (default: the data root's folder name), `task` is "qa" or "caption". LLaVA's "<image>" markers are
    dropped from prompts: the processor places each modality's own placeholder.
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
