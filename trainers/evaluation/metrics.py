"""Continual-learning metrics over a score matrix: Relative Gain (MERA) and the classic accuracy-matrix metrics.

A score matrix holds, for one method, the score of every test set after every stage, plus the scores of the
single-modality experts. As JSON:

```json
{"method": "Fine-Tuning",
 "modalities": [{"name": "image", "datasets": ["MSCOCO", "OK-VQA"]},
                {"name": "video", "datasets": ["MSVD", "MSVD-QA"]}],
 "experts": {"MSCOCO": 100.76, "OK-VQA": 0.358, "MSVD": 138.39, "MSVD-QA": 0.46},
 "stages": [{"MSCOCO": 100.76, "OK-VQA": 0.358},
            {"MSCOCO": 54.52, "OK-VQA": 0.172, "MSVD": 130.22, "MSVD-QA": 0.555}]}
```

Modalities are listed in training order; `stages[i]` holds the scores after stage i+1, i.e. of every dataset of
modalities 1..i+1. A run still in progress may list fewer stages than modalities.

In MLLM-CL's setting a stage learns a task (a domain or an ability) on a modality already learnt: the matrix then
lists `"tasks"` instead of `"modalities"`, each `{"name": "RS", "modality": "image", "datasets": ["RS"]}`, one per
stage, and `experts` may be left out (`{}`): the accuracy-matrix metrics need no expert, Relative Gain does.

Definitions (paper, section "Metrics"; j = modality, i = stage, k = dataset of modality j, all in %):

- `RelativeGain(j, i) = mean_k S(j, k, i) / S_expert(j, k)`
- `BwRG(i) = mean_{j < i} RelativeGain(j, i)`, and `BwRG(1) = RelativeGain(1, 1)` (no earlier modality)
- `FwRG(i) = RelativeGain(i, i)`
- tables report the mean and the sample standard deviation (n - 1) of BwRG and FwRG over the stages.

The classic metrics (as in MLLM-CL and GEM) read an accuracy matrix `a[i][j]`, the score of task j after stage i:
final average accuracy, average (incremental) accuracy, backward transfer (BWT) and forgetting. `summarize` gives
them on the Relative-Gain matrix (tasks = modalities, % of the expert) when experts exist, and always on the raw
per-dataset scores (`accuracy_matrix`: each dataset is a task, learnt at its stage), which is MLLM-CL's table.
"""

import json
import math
import os
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "Modality",
    "ScoreMatrix",
    "relative_gain_matrix",
    "backward_relative_gain",
    "forward_relative_gain",
    "mean_and_std",
    "accuracy_matrix_metrics",
    "summarize",
    "format_report",
    "plot_accuracy_matrix",
    "plot_progressive_relative_gain",
]


@dataclass(frozen=True)
class Modality:
    """What one stage learns and the test sets it is scored on: a modality (`Modality("image", ("MSCOCO",
    "OK-VQA"))`), or a task on a modality (`Modality("RS", ("RS",), modality="image")`)."""

    name: str
    datasets: tuple[str, ...]
    modality: str | None = None


@dataclass
class ScoreMatrix:
    """Scores of one method after every stage, with the experts' scores; see the module docstring for the format.

    `source` names where the matrix came from (a file path) and prefixes every validation error.
    """

    method: str
    modalities: list[Modality]
    experts: dict[str, float]
    stages: list[dict[str, float]]
    source: str = "<score matrix>"
    kind: str = "modalities"
    """'modalities' (MERA's setting: each stage learns a modality) or 'tasks' (MLLM-CL's: tasks on modalities)."""
    smoke_test: bool = False
    """A run that only checked that every step works: its figures are not meaningful (`mera demo --quick`)."""
    dataset_to_modality: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, data: dict, source: str = "<score matrix>") -> "ScoreMatrix":
        """Build and validate a matrix from its JSON form."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a score matrix must be a JSON object, got {type(data).__name__}.")
        key = "tasks" if "tasks" in data else "modalities"
        missing = [name for name in (key, "stages") if name not in data]
        if missing or ("tasks" in data and "modalities" in data):
            raise ValueError(
                f"{source}: missing key(s) {missing}; a score matrix needs 'modalities' (or 'tasks', not both) and "
                "'stages' (and optionally 'method' and 'experts')."
            )
        unknown = sorted(set(data) - {"method", key, "experts", "stages", "smoke_test"})
        if unknown:
            raise ValueError(
                f"{source}: unknown key(s) {unknown}; expected 'method', '{key}', 'experts', 'stages' (and optionally "
                "'smoke_test')."
            )
        modalities = []
        for index, entry in enumerate(data[key]):
            if not isinstance(entry, dict) or "name" not in entry or not isinstance(entry.get("datasets"), list):
                raise ValueError(
                    f'{source}: {key}[{index}] must look like {{"name": "image", "datasets": '
                    f'["MSCOCO", "OK-VQA"]}}, got {entry!r}.'
                )
            modality = entry.get("modality")
            modalities.append(Modality(str(entry["name"]), tuple(str(name) for name in entry["datasets"]),
                                       None if modality is None else str(modality)))  # fmt: skip
        experts = data.get("experts") or {}
        if not isinstance(experts, dict):
            raise ValueError(f"{source}: 'experts' must map dataset names to scores, got {data['experts']!r}.")
        if not isinstance(data["stages"], list) or not all(isinstance(stage, dict) for stage in data["stages"]):
            raise ValueError(f"{source}: 'stages' must be a list with one {{dataset: score}} object per stage.")
        method = str(data.get("method") or Path(source).stem)
        stages = [dict(stage) for stage in data["stages"]]
        return cls(method, modalities, dict(experts), stages, source, key, bool(data.get("smoke_test", False)))

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ScoreMatrix":
        """Read and validate a score-matrix JSON file."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ValueError(f"{path}: no such score-matrix file.") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
        return cls.from_dict(data, source=str(path))

    def to_dict(self) -> dict:
        entries = [
            {"name": m.name, **({"modality": m.modality} if m.modality else {}), "datasets": list(m.datasets)}
            for m in self.modalities
        ]
        return {
            "method": self.method,
            self.kind: entries,
            "experts": dict(self.experts),
            "stages": [dict(stage) for stage in self.stages],
            **({"smoke_test": True} if self.smoke_test else {}),
        }

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def has_experts(self) -> bool:
        """Whether expert scores were given: Relative Gain needs them, the accuracy-matrix metrics do not."""
        return bool(self.experts)

    def validate(self) -> None:
        """Raise a `ValueError` naming the source, the stage and the dataset(s) at the first inconsistency."""
        source = self.source
        if self.kind not in ("modalities", "tasks"):
            raise ValueError(f"{source}: kind must be 'modalities' or 'tasks', got {self.kind!r}.")
        noun = self.kind[:-1]
        if not self.modalities:
            raise ValueError(f"{source}: '{self.kind}' is empty; list the {self.kind} in training order.")
        names = [modality.name for modality in self.modalities]
        if len(set(names)) != len(names):
            raise ValueError(f"{source}: {noun} names repeat: {names}.")
        self.dataset_to_modality = {}
        for index, modality in enumerate(self.modalities):
            if not modality.datasets:
                raise ValueError(f"{source}: {noun} '{modality.name}' lists no datasets.")
            for dataset in modality.datasets:
                if dataset in self.dataset_to_modality:
                    other = self.modalities[self.dataset_to_modality[dataset]].name
                    raise ValueError(
                        f"{source}: dataset '{dataset}' is listed under both '{other}' and '{modality.name}'."
                    )
                self.dataset_to_modality[dataset] = index

        declared = set(self.dataset_to_modality)
        missing_experts = [dataset for dataset in self.dataset_to_modality if dataset not in self.experts]
        if missing_experts and self.has_experts:
            raise ValueError(f"{source}: 'experts' lacks the expert score of dataset(s) {missing_experts}.")
        extra_experts = sorted(set(self.experts) - declared)
        if extra_experts:
            raise ValueError(
                f"{source}: 'experts' has dataset(s) {extra_experts} that no modality declares; declared: "
                f"{sorted(declared)}."
            )
        for dataset, score in self.experts.items():
            _check_number(score, f"{source}: expert score of '{dataset}'")
            if score < 0:
                raise ValueError(f"{source}: expert score of '{dataset}' is {score}; scores cannot be negative.")
        for modality in self.modalities if self.has_experts else ():
            if not any(self.experts[dataset] > 0 for dataset in modality.datasets):
                raise ValueError(
                    f"{source}: every expert score of modality '{modality.name}' is 0 ({list(modality.datasets)}); "
                    "Relative Gain divides by them, so at least one must be > 0."
                )

        if not self.stages:
            raise ValueError(f"{source}: 'stages' is empty; it needs the scores after at least stage 1.")
        if len(self.stages) > len(self.modalities):
            raise ValueError(
                f"{source}: {len(self.stages)} stages but only {len(self.modalities)} {self.kind}; stage i learns "
                f"{noun} i, so there can be at most one stage per {noun}."
            )
        for stage_index, stage in enumerate(self.stages):
            stage_name = f"{source}: stage {stage_index + 1}"
            expected = [d for m in self.modalities[: stage_index + 1] for d in m.datasets]
            missing = [dataset for dataset in expected if dataset not in stage]
            if missing:
                raise ValueError(
                    f"{stage_name} lacks dataset(s) {missing}; after stage {stage_index + 1} every dataset of "
                    f"{names[: stage_index + 1]} must be scored."
                )
            undeclared = sorted(set(stage) - declared)
            if undeclared:
                raise ValueError(
                    f"{stage_name} has dataset(s) {undeclared} that no modality declares; declared: "
                    f"{sorted(declared)}."
                )
            unseen = sorted(set(stage) - set(expected))
            if unseen:
                raise ValueError(
                    f"{stage_name} has dataset(s) {unseen} of a modality not learnt yet; stage {stage_index + 1} "
                    f"covers {names[: stage_index + 1]} only."
                )
            for dataset, score in stage.items():
                _check_number(score, f"{stage_name}: score of '{dataset}'")

    def relative_gain(self, modality_index: int, stage_index: int) -> float:
        """RelativeGain in % of modality `modality_index` after stage `stage_index` (both 0-based)."""
        if not self.has_experts:
            raise ValueError(f"{self.source}: Relative Gain needs the experts' scores, and the matrix has none.")
        if not 0 <= modality_index <= stage_index < self.num_stages:
            raise ValueError(
                f"{self.source}: Relative Gain of modality {modality_index + 1} at stage {stage_index + 1} is "
                f"undefined; it needs modality <= stage <= {self.num_stages}."
            )
        datasets = self.rated_datasets(modality_index)
        stage = self.stages[stage_index]
        return 100.0 * sum(stage[d] / self.experts[d] for d in datasets) / len(datasets)

    def rated_datasets(self, modality_index: int) -> list[str]:
        """The modality's datasets whose expert score is > 0: a ratio to a zero expert is undefined, so a dataset
        whose expert scored 0 is left out of the Relative Gain (and listed in `summarize`'s `excluded_datasets`)."""
        return [d for d in self.modalities[modality_index].datasets if self.experts[d] > 0]

    @property
    def excluded_datasets(self) -> list[str]:
        return [d for m in self.modalities for d in m.datasets if self.has_experts and self.experts[d] == 0]


def _check_number(value, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number, got {value!r}.")


def relative_gain_matrix(matrix: ScoreMatrix) -> list[list[float | None]]:
    """`rg[j][i]`: Relative Gain (%) of modality j after stage i, `None` where modality j is not learnt yet."""
    return [
        [matrix.relative_gain(j, i) if j <= i else None for i in range(matrix.num_stages)]
        for j in range(len(matrix.modalities))
    ]


def backward_relative_gain(matrix: ScoreMatrix) -> list[float]:
    """BwRG (%) per stage: mean Relative Gain of the earlier modalities; stage 1 reports RelativeGain(1, 1)."""
    values = [matrix.relative_gain(0, 0)]
    for i in range(1, matrix.num_stages):
        values.append(sum(matrix.relative_gain(j, i) for j in range(i)) / i)
    return values


def forward_relative_gain(matrix: ScoreMatrix) -> list[float]:
    """FwRG (%) per stage: Relative Gain of the modality learnt at that stage."""
    return [matrix.relative_gain(i, i) for i in range(matrix.num_stages)]


def mean_and_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1); the deviation is `None` for a single value."""
    if not values:
        raise ValueError("mean_and_std needs at least one value.")
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def accuracy_matrix_metrics(
    accuracy: Sequence[Sequence[float | None]], learned_at: Sequence[int] | None = None
) -> dict:
    """Classic continual-learning metrics of an accuracy matrix.

    Args:
        accuracy: `accuracy[i][j]` is the score of task j after stage i (0-based). Entries before a task is learnt
            are ignored and may be `None`.
        learned_at: the stage at which each task is learnt; default `j` for task j (a square matrix).

    Returns:
        A dict with, over the T stages given:
        - `final_average`: mean over tasks of `a[T-1][j]`;
        - `average_accuracy`: mean over stages i of the mean over tasks learnt by then of `a[i][j]`;
        - `bwt`: backward transfer, mean over tasks learnt before the last stage of `a[T-1][j] - a[learned_at[j]][j]`;
        - `forgetting`: mean over the same tasks of `max_{learned_at[j] <= l < T-1} a[l][j] - a[T-1][j]`;
        - `per_task`: the per-task `final`, `bwt` and `forgetting` lists (`None` for tasks of the last stage).
        `bwt` and `forgetting` are `None` when no task was learnt before the last stage.
    """
    num_stages = len(accuracy)
    if num_stages == 0:
        raise ValueError("accuracy_matrix_metrics needs at least one stage.")
    num_tasks = len(accuracy[-1])
    learned_at = list(range(num_tasks)) if learned_at is None else list(learned_at)
    if len(learned_at) != num_tasks:
        raise ValueError(f"learned_at has {len(learned_at)} entries for {num_tasks} tasks.")
    for task, stage in enumerate(learned_at):
        if not 0 <= stage < num_stages:
            raise ValueError(f"task {task} is learnt at stage {stage}, outside the {num_stages} stages given.")
        for i in range(stage, num_stages):
            if len(accuracy[i]) <= task or accuracy[i][task] is None:
                raise ValueError(
                    f"accuracy[{i}][{task}] is missing; task {task} is learnt at stage {stage}, so every stage from "
                    "then on must score it."
                )

    last = num_stages - 1
    final = [accuracy[last][j] for j in range(num_tasks)]
    per_task_bwt = [accuracy[last][j] - accuracy[s][j] if s < last else None for j, s in enumerate(learned_at)]
    per_task_forgetting = [
        max(accuracy[stage][j] for stage in range(s, last)) - accuracy[last][j] if s < last else None
        for j, s in enumerate(learned_at)
    ]
    stage_averages = []
    for i in range(num_stages):
        seen = [accuracy[i][j] for j, s in enumerate(learned_at) if s <= i]
        if seen:
            stage_averages.append(sum(seen) / len(seen))
    old_bwt = [value for value in per_task_bwt if value is not None]
    old_forgetting = [value for value in per_task_forgetting if value is not None]
    return {
        "final_average": sum(final) / num_tasks,
        "average_accuracy": sum(stage_averages) / len(stage_averages),
        "bwt": sum(old_bwt) / len(old_bwt) if old_bwt else None,
        "forgetting": sum(old_forgetting) / len(old_forgetting) if old_forgetting else None,
        "per_task": {"final": final, "bwt": per_task_bwt, "forgetting": per_task_forgetting},
    }


def summarize(matrix: ScoreMatrix) -> dict:
    """Every metric of one method, JSON-ready.

    `accuracy_matrix` applies `accuracy_matrix_metrics` to the raw scores, one task per dataset (learnt at its
    stage), in each dataset's own unit: the matrix itself, final average, average over stages, BWT and forgetting,
    as MLLM-CL reports them, plus the experts' mean (`expert_average`) when experts exist.

    With experts, `classic` applies `accuracy_matrix_metrics` to the Relative-Gain matrix (tasks = what each stage
    learns, in % of the expert), so datasets on different scales (CIDEr, accuracy) can be averaged; without them
    every Relative-Gain field is `None`.
    """
    seen = range(matrix.num_stages)  # what the stages so far learnt
    datasets = [d for j in seen for d in matrix.modalities[j].datasets]
    raw = accuracy_matrix_metrics(
        [[stage.get(d) for d in datasets] for stage in matrix.stages],
        learned_at=[matrix.dataset_to_modality[d] for d in datasets],
    )
    per_task = raw.pop("per_task")
    accuracy = {
        "datasets": datasets,
        "matrix": [
            [stage.get(d) if matrix.dataset_to_modality[d] <= i else None for d in datasets]
            for i, stage in enumerate(matrix.stages)
        ],  # fmt: skip
        **raw,
        "expert_average": statistics.fmean(matrix.experts[d] for d in datasets) if matrix.has_experts else None,
    }
    summary = {
        "method": matrix.method,
        "source": matrix.source,
        "kind": matrix.kind,
        "modalities": [m.name for m in matrix.modalities[: matrix.num_stages]],
        "accuracy_matrix": accuracy,
        "classic_per_dataset": {
            dataset: {key: per_task[key][index] for key in ("final", "bwt", "forgetting")}
            for index, dataset in enumerate(datasets)
        },
        "excluded_datasets": matrix.excluded_datasets,
        "smoke_test": matrix.smoke_test,
    }
    if not matrix.has_experts:
        for key in ("backward_relative_gain", "forward_relative_gain", "backward_mean", "backward_std",
                    "forward_mean", "forward_std", "relative_gain", "classic"):  # fmt: skip
            summary[key] = None
        return summary
    backward = backward_relative_gain(matrix)
    forward = forward_relative_gain(matrix)
    rg = relative_gain_matrix(matrix)
    classic = accuracy_matrix_metrics([[rg[j][i] for j in seen] for i in seen])
    classic.pop("per_task")
    (backward_mean, backward_std), (forward_mean, forward_std) = mean_and_std(backward), mean_and_std(forward)
    return {
        **summary,
        "backward_relative_gain": backward,
        "forward_relative_gain": forward,
        "backward_mean": backward_mean,
        "backward_std": backward_std,
        "forward_mean": forward_mean,
        "forward_std": forward_std,
        "relative_gain": {matrix.modalities[j].name: rg[j] for j in seen},
        "classic": classic,
    }


SMOKE_TEST_NOTE = "smoke test — figures are not meaningful"


def _fmt(value: float | None, width: int) -> str:
    return f"{'-' if value is None else f'{value:.2f}':>{width}}"


def _accuracy_lines(summary: dict) -> list[str]:
    """The accuracy matrix (rows: after stage i; columns: datasets) and MLLM-CL's summary figures."""
    accuracy = summary["accuracy_matrix"]
    width = max(9, *(len(name) + 2 for name in accuracy["datasets"]))
    lines = ["Accuracy matrix (score of each test set after each stage, in its own unit):",
             f"{'':<12}" + "".join(f"{name:>{width}}" for name in accuracy["datasets"])]  # fmt: skip
    for index, row in enumerate(accuracy["matrix"]):
        lines.append(f"{f'stage {index + 1}':<12}" + "".join(_fmt(value, width) for value in row))
    expert = accuracy["expert_average"]
    lines.append(
        f"final average {_fmt(accuracy['final_average'], 0)}, average over stages "
        f"{_fmt(accuracy['average_accuracy'], 0)}, BWT {_fmt(accuracy['bwt'], 0)}, forgetting "
        f"{_fmt(accuracy['forgetting'], 0)}" + (f", experts' average {_fmt(expert, 0)}" if expert is not None else "")
    )
    return lines


def format_report(summaries: Sequence[dict], compare_only: bool = False) -> str:
    """Plain-text tables: per method, the per-stage metrics with mean and std; then a comparison of the methods
    (alone with `compare_only`, then also for a single method). Smoke tests are marked so above every table."""
    blocks = []
    for summary in [] if compare_only else summaries:
        title = f"{summary['method']}  ({summary['source']})"
        lines = [f"{title}  [{SMOKE_TEST_NOTE}]" if summary.get("smoke_test") else title]
        modalities = summary["modalities"]
        if summary["backward_relative_gain"] is not None:
            width = max(9, *(len(name) + 2 for name in modalities))
            label_width = max(28, *(len(f"Relative Gain {name} (%)") + 2 for name in modalities))
            header = " " * label_width + "".join(f"{f'stage {i + 1}':>{width}}" for i in range(len(modalities)))
            lines += [
                header + f"{'mean':>9}{'std':>9}",
                " " * label_width + "".join(f"{n:>{width}}" for n in modalities),
            ]
            for label, key in (("Backward Relative Gain (%)", "backward"), ("Forward Relative Gain (%)", "forward")):
                values = summary[f"{key}_relative_gain"]
                lines.append(
                    f"{label:<{label_width}}"
                    + "".join(_fmt(v, width) for v in values)
                    + _fmt(summary[f"{key}_mean"], 9)
                    + _fmt(summary[f"{key}_std"], 9)
                )
            for name, values in summary["relative_gain"].items():
                lines.append(f"{f'Relative Gain {name} (%)':<{label_width}}" + "".join(_fmt(v, width) for v in values))
            classic = summary["classic"]
            lines.append(
                f"Classic, tasks = {summary['kind']}, % of expert: final average {_fmt(classic['final_average'], 0)}, "
                f"average accuracy {_fmt(classic['average_accuracy'], 0)}, BWT {_fmt(classic['bwt'], 0)}, "
                f"forgetting {_fmt(classic['forgetting'], 0)}"
            )
        lines += _accuracy_lines(summary)
        if summary.get("excluded_datasets"):
            excluded = ", ".join(summary["excluded_datasets"])
            lines.append(f"Left out of Relative Gain (their expert scored 0): {excluded}")
        blocks.append("\n".join(lines))

    if len(summaries) > 1 or compare_only:
        method_width = max(8, *(len(s["method"]) + 2 for s in summaries))
        columns = ["BwRG mean", "BwRG std", "FwRG mean", "FwRG std", "final avg", "avg stages", "BWT", "forgetting"]
        lines = [f"{'method':<{method_width}}" + "".join(f"{c:>12}" for c in columns)]
        for s in summaries:
            values = [s["backward_mean"], s["backward_std"], s["forward_mean"], s["forward_std"]]
            accuracy = s["accuracy_matrix"]
            values += [accuracy[key] for key in ("final_average", "average_accuracy", "bwt", "forgetting")]
            lines.append(f"{s['method']:<{method_width}}" + "".join(_fmt(v, 12) for v in values))
        experts = {s["accuracy_matrix"]["expert_average"] for s in summaries} - {None}
        if len(experts) == 1:
            lines.append(f"{'experts':<{method_width}}" + " " * 48 + _fmt(experts.pop(), 12))
        lines.insert(0, "(comparison: accuracy columns in the test sets' own units)")
        if any(s.get("smoke_test") for s in summaries):
            lines.insert(0, SMOKE_TEST_NOTE.upper())
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def plot_progressive_relative_gain(summaries: Sequence[dict], path: str | os.PathLike) -> Path:
    """Two panels, Backward and Forward Relative Gain (%) per stage, one line per method (paper Figures 3 and 4).

    Returns the path of the written image; its format follows the file extension (PNG, PDF, SVG).
    """
    # The object-oriented API renders through Agg without touching pyplot's global backend or figure list.
    from matplotlib.figure import Figure

    if not summaries:
        raise ValueError("plot_progressive_relative_gain needs at least one method.")
    num_stages = max(len(s["backward_relative_gain"]) for s in summaries)
    orders = {tuple(s["modalities"]) for s in summaries}
    # Name the modality under each stage when every method learnt them in the same order.
    longest = max(summaries, key=lambda s: len(s["modalities"]))["modalities"]
    same_order = all(order == tuple(longest[: len(order)]) for order in orders)
    tick_labels = [f"{i + 1}\n{longest[i]}" if same_order else str(i + 1) for i in range(num_stages)]

    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2, sharey=True)
    markers = "osD^v<>ph*"
    panels = (("backward_relative_gain", "Backward Relative Gain"), ("forward_relative_gain", "Forward Relative Gain"))
    for axis, (key, title) in zip(axes, panels):
        axis.axhline(100, color="0.6", linestyle="--", linewidth=1, zorder=0)
        for index, summary in enumerate(summaries):
            values = summary[key]
            mean = summary[key.replace("relative_gain", "mean")]
            axis.plot(
                range(1, len(values) + 1),
                values,
                marker=markers[index % len(markers)],
                linewidth=2,
                label=f"{summary['method']} (mean {mean:.2f})",
            )
        axis.set_title(title)
        axis.set_xlabel("stage")
        axis.set_xticks(range(1, num_stages + 1), tick_labels)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("% of expert")
    axes[1].tick_params(labelleft=True)
    axes[0].legend(loc="best", fontsize=9)
    axes[1].legend(loc="best", fontsize=9)
    return _save_figure(figure, path, "Progressive Relative Gain", summaries)


def _save_figure(figure, path: str | os.PathLike, title: str, summaries: Sequence[dict]) -> Path:
    """Save a metrics figure; smoke-test summaries get a red banner. The title goes into the file's metadata (PNG
    text, PDF/SVG title), where tools can read it."""
    if any(s.get("smoke_test") for s in summaries):
        title += f" ({SMOKE_TEST_NOTE})"
        figure.suptitle(SMOKE_TEST_NOTE.capitalize(), color="tab:red", fontweight="bold")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, metadata={"Title": title})
    return path


def plot_accuracy_matrix(summaries: Sequence[dict], path: str | os.PathLike) -> Path:
    """Two panels: the mean score over the test sets learnt so far after each stage (one line per method), and the
    final score of every test set (one bar per method)."""
    from matplotlib.figure import Figure

    if not summaries:
        raise ValueError("plot_accuracy_matrix needs at least one method.")
    figure = Figure(figsize=(11, 4.2))
    over_stages, final = figure.subplots(1, 2)
    markers = "osD^v<>ph*"
    datasets = max((s["accuracy_matrix"]["datasets"] for s in summaries), key=len)
    bar = 0.8 / len(summaries)
    for index, summary in enumerate(summaries):
        accuracy = summary["accuracy_matrix"]
        means = [statistics.fmean(v for v in row if v is not None) for row in accuracy["matrix"]]
        over_stages.plot(range(1, len(means) + 1), means, marker=markers[index % len(markers)], linewidth=2,
                         label=f"{summary['method']} (final {accuracy['final_average']:.2f})")  # fmt: skip
        last = dict(zip(accuracy["datasets"], accuracy["matrix"][-1]))
        positions = [j + (index - (len(summaries) - 1) / 2) * bar for j in range(len(datasets))]
        final.bar(positions, [last.get(d) or 0 for d in datasets], width=bar, label=summary["method"])
    over_stages.set_title("Mean over the test sets learnt so far")
    over_stages.set_xlabel("after stage")
    over_stages.set_xticks(range(1, max(len(s["accuracy_matrix"]["matrix"]) for s in summaries) + 1))
    over_stages.grid(alpha=0.3)
    over_stages.legend(loc="best", fontsize=9)
    final.set_title("After the last stage")
    final.set_xticks(range(len(datasets)), datasets, rotation=20)
    final.grid(alpha=0.3, axis="y")
    final.legend(loc="best", fontsize=9)
    return _save_figure(figure, path, "Accuracy matrix", summaries)
