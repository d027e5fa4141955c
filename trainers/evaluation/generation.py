"""Generation-based evaluation of a `MeraForCausalLM` on test sets: predictions, per-dataset scores, JSON.

A test set is a list of samples in the project's format (see `trainers.data`):

    {"id": "coco-1", "modality": "image", "media": "images/1.jpg", "prompt": "Describe the image.",
     "answer": ["A dog on a sofa.", "A brown dog lying on a couch."], "task": "caption", "dataset": "MSCOCO"}

`answer` may be a list: all reference captions for a caption sample, all acceptable answers for a QA sample.
Samples loaded with `trainers.data.load_samples` carry them all in `references`, which scoring prefers.

Under several processes (`accelerate launch`), generation is split across them: whole batches, formed exactly as
one process forms them, are dealt out in turn, so that every prediction equals the one-process prediction. The
predictions are gathered, scored once on the main process (a paid judge is asked once per answer) and the result is
shared with every process.

Scores follow the paper: CIDEr-D x 100 for caption sets, judged accuracy (a fraction) for QA sets. The per-dataset
`scores` of the result are exactly one entry of a score matrix's `stages` (see `trainers.evaluation.metrics`).

Example:

```python
>>> from trainers.evaluation.generation import evaluate_model
>>> result = evaluate_model(model, processor, samples, judge="match", output_file="runs/stage-2/eval.json")
>>> result["scores"]
{'MSCOCO': 54.52, 'OK-VQA': 0.172, 'MSVD': 130.22, 'MSVD-QA': 0.555}
```
"""

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from accelerate.utils import broadcast_object_list, gather_object

from .. import console
from ..data import TASKS, encode_samples
from ..distributed import process_state
from .cider_d import CiderD
from .judges import DEFAULT_MAX_FAILURE_RATE, Judge, check_failure_rate, get_judge
from .qa_judge import QaJudge

__all__ = ["generate_predictions", "score_predictions", "evaluate_model"]

REQUIRED_FIELDS = ("prompt", "answer", "task", "dataset")


def _check_samples(samples: Sequence[dict], modalities: Iterable[str] | None = None) -> None:
    known = set(modalities) if modalities is not None else None
    for index, sample in enumerate(samples):
        where = f"test sample {index} (id {sample.get('id', '?')!r})"
        missing = [key for key in REQUIRED_FIELDS if sample.get(key) in (None, "", [])]
        if missing:
            raise ValueError(f"{where}: missing field(s) {missing}; a test sample needs {list(REQUIRED_FIELDS)}.")
        if sample["task"] not in TASKS:
            raise ValueError(f"{where}: 'task' must be one of {TASKS}, got {sample['task']!r}.")
        if sample.get("media") is not None and not sample.get("modality"):
            raise ValueError(f"{where}: a sample with media needs its 'modality'.")
        if known is not None and sample.get("media") is not None and sample["modality"] not in known:
            raise ValueError(f"{where}: modality {sample['modality']!r} is not in the model (it has {sorted(known)}).")


def _as_list(answer) -> list[str]:
    return [str(answer)] if isinstance(answer, str | int | float) else [str(item) for item in answer]


@torch.no_grad()
def generate_predictions(
    model,
    processor,
    samples: Sequence[dict],
    batch_size: int = 8,
    max_new_tokens: int = 32,
    progress: bool = True,
    feature_cache=None,
    **generate_kwargs,
) -> list[str]:
    """Greedy answers of `model` to every sample, in the order of `samples`.

    Samples are batched per modality (one encoder per batch; text-only samples together), each is asked its
    conversation up to the last user turn, prompts are left-padded so that generation continues right after each
    prompt, and only the newly generated tokens are decoded. `generate_kwargs` go to `model.generate` (greedy
    decoding unless they say otherwise). Under several processes, each generates every n-th batch and every process
    returns all the predictions. With a `feature_cache` (`trainers.data.feature_cache.EncoderFeatureCache`), the
    frozen encoders' outputs are computed once for all the samples' media (a caption and a question about the same
    item share them) and read from the cache, exact, instead of encoding each prompt's media again.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    samples = list(samples)
    _check_samples(samples, model.config.modalities)
    batches = generation_batches(samples, batch_size)
    tokenizer = processor.tokenizer
    generate_kwargs = {"do_sample": False, "num_beams": 1, **generate_kwargs}
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generate_kwargs.setdefault("pad_token_id", pad_token_id)
    was_training = model.training
    model.eval()
    state = process_state()
    if feature_cache is not None and hasattr(model, "reset_routing"):
        feature_cache = None  # a routed model also feeds the media to its router: it reads them itself
    if feature_cache is not None:
        media_samples = [sample for sample in samples if sample.get("media") is not None]
        feature_cache.fill(model, processor, media_samples, state.process_index, state.num_processes)
        state.wait_for_everyone()  # each process encoded its share of the items
    # Whole batches are dealt out, so that each process pads and decodes exactly as a single process would.
    own_batches = batches[state.process_index :: state.num_processes]
    own_predictions: list[tuple[int, str]] = []
    try:
        for batch_indices in console.progress(
            own_batches, phase="evaluate", unit="batch", disable=not (progress and state.is_main_process)
        ):
            batch_samples = [samples[i] for i in batch_indices]
            batch = encode_samples(
                processor, batch_samples, "left", for_generation=True, feature_cache=feature_cache
            ).to(model.device)
            output = model.generate(**batch, max_new_tokens=max_new_tokens, **generate_kwargs)
            new_tokens = output[:, batch["input_ids"].shape[1] :]
            texts = processor.batch_decode(new_tokens, skip_special_tokens=True)
            own_predictions.extend((index, text.strip()) for index, text in zip(batch_indices, texts))
    finally:
        model.train(was_training)
    gathered = gather_object(own_predictions) if state.num_processes > 1 else own_predictions
    predictions: list[str | None] = [None] * len(samples)
    for index, text in gathered:
        predictions[index] = text
    return predictions


def generation_batches(samples: Sequence[dict], batch_size: int) -> list[list[int]]:
    """The sample indices of each generation batch: samples grouped by modality (text-only ones together)."""
    by_modality: dict[str | None, list[int]] = {}
    for index, sample in enumerate(samples):
        by_modality.setdefault(sample["modality"] if sample.get("media") is not None else None, []).append(index)
    return [
        indices[start : start + batch_size]
        for indices in by_modality.values()
        for start in range(0, len(indices), batch_size)
    ]


def score_predictions(
    samples: Sequence[dict],
    predictions: Sequence[str],
    judge: Judge | str | None = None,
    max_judge_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
) -> dict:
    """Score predictions per dataset: CIDEr-D x 100 for caption sets, judged accuracy for QA sets.

    Args:
        samples: the test samples (each with `dataset`, `task`, `modality`, `prompt`, `answer`).
        predictions: one predicted text per sample.
        judge: a `Judge`, a judge name, or `None` for the default (`gpt` with `OPENAI_API_KEY`, else `match`).
        max_judge_failure_rate: the share of a QA set's verdicts that may fail; above it, every set is scored
            and then `JudgeFailureError` reports them all (see `trainers.evaluation.judges.check_failure_rate`).

    Returns:
        `{"scores": {dataset: score}, "datasets": {dataset: details}}`; the details hold the modality, task, metric,
        number of samples and, for QA sets, the judge and its failures (`num_failures`, `num_judged`).
    """
    samples = list(samples)
    if len(samples) != len(predictions):
        raise ValueError(f"got {len(samples)} samples but {len(predictions)} predictions; they must match.")
    _check_samples(samples)
    groups: dict[str, list[int]] = {}
    for index, sample in enumerate(samples):
        groups.setdefault(sample["dataset"], []).append(index)
    if judge is None or isinstance(judge, str):
        judge = get_judge(judge) if any(s["task"] == "qa" for s in samples) else None

    scores, details, judged = {}, {}, {}
    for dataset, indices in groups.items():
        tasks = {samples[i]["task"] for i in indices}
        modalities = {samples[i]["modality"] for i in indices if samples[i].get("media") is not None} or {None}
        if len(tasks) > 1 or len(modalities) > 1:
            raise ValueError(
                f"dataset {dataset!r} mixes tasks {sorted(tasks)} and/or modalities {sorted(modalities)}; one "
                "dataset is scored with one metric, so give each task and modality its own dataset name."
            )
        task = tasks.pop()
        answers = [_as_list(samples[i].get("references") or samples[i]["answer"]) for i in indices]
        dataset_predictions = [predictions[i] for i in indices]
        # The `evaluate` metric modules, so that `evaluate.load` on their files gives these very scores.
        if task == "caption":
            cider = CiderD(keep_in_memory=True).compute(predictions=dataset_predictions, references=answers)
            result = {"metric": "cider", "score": cider["cider_d"], "num_samples": len(indices)}
            per_sample = cider["per_sample"]
        else:
            questions = [samples[i]["prompt"] for i in indices]
            qa = QaJudge(keep_in_memory=True).compute(
                predictions=dataset_predictions, references=answers, questions=questions, judge=judge
            )
            judged[dataset] = dict(qa)
            per_sample = qa.pop("verdicts")
            result = {"metric": "accuracy", **qa, "score": qa["accuracy"]}
        details[dataset] = {"modality": modalities.pop(), "task": task, **result, "per_sample": per_sample}
        scores[dataset] = result["score"]
    check_failure_rate(judged, max_judge_failure_rate)
    return {"scores": scores, "datasets": details}


def evaluate_model(
    model,
    processor,
    samples: Sequence[dict],
    judge: Judge | str | None = None,
    batch_size: int = 8,
    max_new_tokens: int = 32,
    output_file: str | os.PathLike | None = None,
    progress: bool = True,
    max_judge_failure_rate: float = DEFAULT_MAX_FAILURE_RATE,
    feature_cache=None,
    **generate_kwargs,
) -> dict:
    """Generate an answer for every sample, score every dataset, and optionally write it all to `output_file`.

    Returns `{"scores": {dataset: score}, "datasets": {...}, "predictions": [{"id", "dataset", "prediction",
    "answer"}, ...]}`, plus `"routing"` for a model that routes inputs to experts (MR-LoRA's `routing_summary`:
    router accuracy, fallbacks, experts chosen). The JSON file is written atomically (temp file, then rename), and
    only when the scores are kept: a judge that failed on more than `max_judge_failure_rate` of a QA set raises
    `JudgeFailureError` instead, so a rerun judges again.

    Under several processes, generation is split across them (see `generate_predictions`), the main process scores
    and writes the file, and every process returns the same result.
    """
    samples = list(samples)
    state = process_state()
    if hasattr(model, "reset_routing"):
        model.reset_routing()
    predictions = generate_predictions(
        model,
        processor,
        samples,
        batch_size,
        max_new_tokens,
        progress=progress,
        feature_cache=feature_cache,
        **generate_kwargs,
    )
    if hasattr(model, "routing_summary") and state.num_processes > 1:
        model.routing_log = gather_object(model.routing_log)  # every process routed its own batches
    outcome = [None]
    if state.is_main_process:
        try:
            outcome[0] = _scored_result(
                model, samples, predictions, judge, output_file, batch_size, max_judge_failure_rate
            )
        except Exception as error:  # shared, so that no process waits forever for a result that never comes
            outcome[0] = error
    if state.num_processes > 1:
        broadcast_object_list(outcome)
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]


def _scored_result(
    model, samples: list[dict], predictions: list[str], judge, output_file, batch_size: int, max_judge_failure_rate
) -> dict:
    result = score_predictions(samples, predictions, judge, max_judge_failure_rate)
    if hasattr(model, "routing_summary"):
        # The routing log's order: each process's batches in turn (as gathered), each batch's samples in order.
        batches, processes = generation_batches(samples, batch_size), process_state().num_processes
        order = [index for rank in range(processes) for batch in batches[rank::processes] for index in batch]
        result["routing"] = model.routing_summary([model.expected_expert(samples[index]) for index in order])
    result["predictions"] = [
        {
            "id": sample.get("id", str(index)),
            "dataset": sample["dataset"],
            "modality": sample["modality"],
            "prediction": prediction,
            "answer": sample["answer"],
        }
        for index, (sample, prediction) in enumerate(zip(samples, predictions))
    ]
    if output_file is not None:
        path = Path(output_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".tmp")
        temporary.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(temporary, path)
    return result
