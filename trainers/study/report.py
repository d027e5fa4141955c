"""
The report of a study: the paper's tables and figures from the finished cells, averaged over seeds.

Every figure of a cell comes from `trainers.continual_metrics.summarize` of its score matrix; this module only
averages them over seeds (mean ± sample standard deviation) and lays them out:

- Table 2: Backward and Forward Relative Gain per method and order.
- Table 4: the ablation (Fine-Tuning, + merge, + realign, MERA), where those methods ran.
- Table 5: each method with and without a realign step, and the difference.
- Table 6: training time (relative to Fine-Tuning), peak memory, per-token latency of the final model.
- Table 7: MERA with a share of its realign pairs mispaired.
- Tables 11/12: raw scores of every dataset after every stage (sequential / reverse order).
- Figures 3/4: progressive Backward/Forward Relative Gain per order, and averaged over the orders.
"""

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch

from ..evaluation.metrics import ScoreMatrix, mean_and_std, plot_progressive_relative_gain, summarize
from .grid import COST, StudyCell

ABLATION = {"fine_tuning": ("-", "-"), "merge_only": ("✓", "-"), "realign_only": ("-", "✓"), "mera": ("✓", "✓")}


def collect(finished: Sequence[tuple[StudyCell, Path]]) -> list[dict]:
    """One record per finished cell: its settings, `summarize`'s metrics, raw scores and measured costs."""
    records = []
    for cell, directory in finished:
        scores = json.loads((directory / "scores.json").read_text())
        stages = [json.loads((directory / f"stage-{i}" / "stage.json").read_text()) for i in
                  range(1, len(scores["stages"]) + 1)]  # fmt: skip
        peaks = [stage["peak_memory_mb"] for stage in stages if stage.get("peak_memory_mb") is not None]
        try:
            summary, unrated = summarize(ScoreMatrix.from_dict(scores, source=str(directory / "scores.json"))), None
        except ValueError as error:  # e.g. an expert that scored 0 on every dataset of a modality
            summary, unrated = None, str(error)
        records.append(
            {
                **asdict(cell),
                "variant": cell.variant,
                "label": cell.label,
                "folder": str(directory),
                "summary": summary,
                "unrated": unrated,
                "scores": scores,
                "stage_seconds": [stage.get("seconds") for stage in stages],
                "train_seconds": sum(stage.get("seconds") or 0 for stage in stages),
                "peak_memory_mb": max(peaks) if peaks else None,
                "memory_kind": next((stage["memory_kind"] for stage in stages if "memory_kind" in stage), None),
                **{key: value for key, value in json.loads((directory / COST).read_text()).items()},
            }
        )
    return records


def _spread(values: Sequence[float]) -> dict:
    mean, std = mean_and_std(list(values))
    return {"mean": mean, "std": std, "n": len(values)}


def _fmt(spread: dict | None, digits: int = 2) -> str:
    if spread is None:
        return "–"
    text = f"{spread['mean']:.{digits}f}"
    return text + (f" ± {spread['std']:.{digits}f}" if spread["std"] is not None else "")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def _variants(records: list[dict], keep=lambda record: True) -> list[dict]:
    """The first record of every variant that `keep` accepts, in grid order."""
    seen = {}
    for record in records:
        if keep(record) and record["variant"] not in seen:
            seen[record["variant"]] = record
    return list(seen.values())


def _cells(records: list[dict], variant: str, order: str | None = None) -> list[dict]:
    return [r for r in records if r["variant"] == variant and (order is None or r["order"] == order)]


def _metric(records: list[dict], variant: str, order: str | None, key: str) -> dict | None:
    values = [r["summary"][key] for r in _cells(records, variant, order) if r["summary"][key] is not None]
    return _spread(values) if values else None


def _is_base(record: dict) -> bool:
    return record["realign"] is None and not record["mispaired_percent"]


def table_relative_gain(records: list[dict], orders: list[str]) -> tuple[str, list[dict]]:
    """Table 2: per method and order, the mean over seeds ± their std of each run's mean BwRG / FwRG over stages,
    and in brackets the mean over seeds of the std over stages (the paper's ±)."""
    rows, data = [], []
    for first in _variants(records, _is_base):
        row, entry = [first["label"]], {"variant": first["variant"], "label": first["label"]}
        for order in orders:
            for key in ("backward", "forward"):
                spread, stage_std = (
                    _metric(records, first["variant"], order, f"{key}_mean"),
                    _metric(records, first["variant"], order, f"{key}_std"),
                )
                row.append(_fmt(spread) + (f" [{stage_std['mean']:.2f}]" if stage_std else ""))
                entry[f"{order}_{key}"] = {"over_seeds": spread, "std_over_stages": stage_std}
        if len(orders) > 1:
            spread = _metric(records, first["variant"], None, "backward_mean")
            row.append(_fmt(spread))
            entry["orders_backward"] = spread
        rows.append(row)
        data.append(entry)
    header = ["method"] + [f"{order} {key}" for order in orders for key in ("BwRG", "FwRG")]
    header += ["BwRG, both orders"] if len(orders) > 1 else []
    return _table(header, rows), data


def table_ablation(records: list[dict], orders: list[str]) -> tuple[str, list[dict]] | None:
    """Table 4: Fine-Tuning with merging only, realigning only, both (MERA)."""
    variants = _variants(records, lambda r: _is_base(r) and r["method"] in ABLATION)
    if len(variants) < 2:
        return None
    rows, data = [], []
    for first in sorted(variants, key=lambda r: list(ABLATION).index(r["method"])):
        merge, realign = ABLATION[first["method"]]
        row = [first["label"], merge, realign]
        entry = {"variant": first["variant"], "merge": merge, "realign": realign}
        for order in orders:
            for key in ("backward", "forward"):
                spread = _metric(records, first["variant"], order, f"{key}_mean")
                row.append(_fmt(spread))
                entry[f"{order}_{key}"] = spread
        rows.append(row)
        data.append(entry)
    header = ["method", "merge", "realign"] + [f"{order} {key}" for order in orders for key in ("BwRG", "FwRG")]
    return _table(header, rows), data


def _paired_difference(records: list[dict], with_variant: str, without_variant: str, order: str) -> dict | None:
    without = {r["seed"]: r["summary"]["backward_mean"] for r in _cells(records, without_variant, order)}
    differences = [r["summary"]["backward_mean"] - without[r["seed"]] for r in _cells(records, with_variant, order)
                   if r["seed"] in without]  # fmt: skip
    return _spread(differences) if differences else None


def table_realign(records: list[dict], orders: list[str]) -> tuple[str, list[dict]] | None:
    """Table 5: every method with and without a realign step (mean BwRG), and the gain (paired by seed)."""
    with_realign = _variants(records, lambda r: r["realign"] is not None and not r["mispaired_percent"])
    if not with_realign:
        return None
    rows, data = [], []
    for first in with_realign:
        base = StudyCell(**{k: first[k] for k in ("method", "order", "seed", "replay_ratio", "uses_replay_ratio")})
        row, entry = [base.label, f"+ Realign ({first['realign']:g}%)"], {"variant": first["variant"]}
        for order in orders:
            without = _metric(records, base.variant, order, "backward_mean")
            with_ = _metric(records, first["variant"], order, "backward_mean")
            delta = _paired_difference(records, first["variant"], base.variant, order)
            row += [_fmt(without), _fmt(with_), _fmt(delta)]
            entry[order] = {"without": without, "with": with_, "delta": delta}
        rows.append(row)
        data.append(entry)
    header = ["method", "realign"] + [f"{order} {col}" for order in orders for col in ("without", "with", "Δ")]
    return _table(header, rows), data


def hardware() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (CUDA), torch {torch.__version__}"
    return (
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}"
    )


def table_cost(records: list[dict]) -> tuple[str, list[dict]]:
    """Table 6: training time (sum of the stages' times, every stage counted where it is reused), relative to
    Fine-Tuning; peak memory of the stages; latency per generated token of the final model."""
    baseline = [r["train_seconds"] for r in records if r["variant"] == "fine_tuning"]
    baseline_mean = sum(baseline) / len(baseline) if baseline else None
    rows, data = [], []
    for first in _variants(records, lambda r: not r["mispaired_percent"]):
        cells = _cells(records, first["variant"])
        seconds = _spread([r["train_seconds"] for r in cells])
        relative = seconds["mean"] / baseline_mean if baseline_mean else None
        peaks = [r["peak_memory_mb"] for r in cells if r["peak_memory_mb"] is not None]
        latency = _spread([r["ms_per_token"] for r in cells])
        rows.append(
            [
                first["label"],
                _fmt(seconds, 0),
                "–" if relative is None else f"{relative:.2f}×",
                f"{max(peaks):.0f}" if peaks else "–",
                _fmt(latency, 1),
            ]
        )
        data.append({"variant": first["variant"], "train_seconds": seconds, "relative_to_fine_tuning": relative,
                     "peak_memory_mb": max(peaks) if peaks else None, "ms_per_token": latency})  # fmt: skip
    kinds = sorted({r["memory_kind"] for r in records if r["memory_kind"]})
    header = ["method", "training time (s)", "vs Fine-Tuning", f"peak memory (MB, {', '.join(kinds)})", "ms / token"]
    return _table(header, rows), data


def table_noisy(records: list[dict], orders: list[str]) -> tuple[str, list[dict]] | None:
    """Table 7: mean BwRG with a share of the realign pairs mispaired (0% = the clean run)."""
    noisy = _variants(records, lambda r: r["mispaired_percent"] > 0 and r["realign"] is None)
    if not noisy:
        return None
    percents = sorted({r["mispaired_percent"] for r in noisy})
    rows, data = [], []
    noisy_bases = {(r["method"], r["replay_ratio"]) for r in noisy}
    for base in _variants(records, lambda r: _is_base(r) and (r["method"], r["replay_ratio"]) in noisy_bases):
        row, entry = [base["label"]], {"variant": base["variant"]}
        for order in orders:
            for percent in [0.0, *percents]:
                variant = base["variant"] + (f"-mispaired{percent:g}" if percent else "")
                spread = _metric(records, variant, order, "backward_mean")
                row.append(_fmt(spread))
                entry[f"{order}_{percent:g}"] = spread
        rows.append(row)
        data.append(entry)
    header = ["method"] + [f"{order}, {p:g}% mispaired" for order in orders for p in [0.0, *percents]]
    return _table(header, rows), data


def tables_raw_scores(records: list[dict], order: str) -> tuple[str, dict]:
    """Tables 11/12: raw score of every dataset after every stage, mean ± std over seeds, per method."""
    blocks, data = [], {}
    for first in _variants(records, lambda r: r["order"] == order and not r["mispaired_percent"]):
        cells = _cells(records, first["variant"], order)
        datasets = [d for m in first["scores"]["modalities"] for d in m["datasets"]]
        rows = [["expert"] + [_fmt(_spread([c["scores"]["experts"][d] for c in cells])) for d in datasets]]
        for index, modality in enumerate(first["scores"]["modalities"]):
            row = [f"after stage {index + 1} ({modality['name']})"]
            for dataset in datasets:
                stages = [c["scores"]["stages"][index] for c in cells]
                values = [stage[dataset] for stage in stages if dataset in stage]
                row.append(_fmt(_spread(values)) if values else "")
            rows.append(row)
        blocks.append(f"**{first['label']}**\n\n" + _table(["", *datasets], rows))
        data[first["variant"]] = rows
    return "\n\n".join(blocks), data


def averaged_summaries(records: list[dict], orders: list[str]) -> list[dict]:
    """Per method: per-stage Backward/Forward Relative Gain averaged over seeds and `orders`, in the shape
    `plot_progressive_relative_gain` reads."""
    summaries = []
    for first in _variants(records, lambda r: r["order"] in orders and not r["mispaired_percent"]):
        cells = [r for r in _cells(records, first["variant"]) if r["order"] in orders]
        summary = {"method": first["label"]}
        for key in ("backward", "forward"):
            curves = [c["summary"][f"{key}_relative_gain"] for c in cells]
            summary[f"{key}_relative_gain"] = [sum(values) / len(values) for values in zip(*curves)]
            summary[f"{key}_mean"] = sum(c["summary"][f"{key}_mean"] for c in cells) / len(cells)
        names = [[c["summary"]["modalities"][i] for c in cells] for i in range(len(summary["backward_relative_gain"]))]
        summary["modalities"] = [" | ".join(dict.fromkeys(stage)) for stage in names]
        summaries.append(summary)
    return summaries


def write_report(finished: Sequence[tuple[StudyCell, Path]], out: Path, grid: dict, wall_seconds: float) -> str:
    """Write report.md, report.json and the figures into `out`; returns the Markdown."""
    every_record = collect(finished)
    records = [record for record in every_record if record["summary"] is not None]
    orders = [order for order in ("sequential", "reverse") if any(r["order"] == order for r in every_record)]
    seeds = sorted({r["seed"] for r in every_record})
    sections, tables = [], {}
    intro = (
        f"# Study report\n\n{len(every_record)} continual runs: methods × orders {orders} × seeds {seeds}. Relative "
        "Gain in % of the single-modality experts (`mera metrics` definitions). A ± is the sample standard deviation "
        f"over seeds; brackets hold the mean over seeds of the std over stages (the paper's ±).\n\nHardware: "
        f"{hardware()}. Wall time of this call: {wall_seconds:.0f} s."
    )
    unrated = [r for r in every_record if r["summary"] is None]
    if unrated:
        intro += "\n\nWithout Relative Gain (left out of Tables 2-7 and the figures; raw scores in Tables 11/12):\n\n"
        intro += "\n".join(f"- {r['label']}, {r['order']}, seed {r['seed']}: {r['unrated']}" for r in unrated)
    sections.append(intro)
    text, tables["table2"] = table_relative_gain(records, orders)
    sections.append("## Table 2: Backward / Forward Relative Gain (%)\n\n" + text)
    for key, title, builder in (
        ("table4", "Table 4: ablation, merge and realign (mean BwRG / FwRG %)", table_ablation),
        ("table5", "Table 5: with and without a realign step (mean BwRG %, Δ paired by seed)", table_realign),
        ("table7", "Table 7: realign on mispaired replay pairs (mean BwRG %)", table_noisy),
    ):
        built = builder(records, orders)
        if built is not None:
            sections.append(f"## {title}\n\n{built[0]}")
            tables[key] = built[1]
    text, tables["table6"] = table_cost(every_record)
    sections.append("## Table 6: cost, measured on this hardware\n\n" + text)
    for number, order in (("11", "sequential"), ("12", "reverse")):
        if order in orders:
            text, tables[f"table{number}"] = tables_raw_scores(every_record, order)
            sections.append(f"## Table {number}: raw scores after each stage, {order} order\n\n{text}")
    figures = []
    orders = [order for order in orders if any(r["order"] == order for r in records)]  # rated cells only
    for order in orders:
        figures.append(plot_progressive_relative_gain(averaged_summaries(records, [order]),
                                                      out / f"relative_gain_{order}.png"))  # fmt: skip
    if len(orders) > 1:
        figures.append(plot_progressive_relative_gain(averaged_summaries(records, orders),
                                                      out / "relative_gain_orders_mean.png"))  # fmt: skip
    sections.append(
        "## Figures 3/4: progressive Relative Gain (mean over seeds)\n\n"
        + "\n".join(f"![{path.stem}]({path.name})" for path in figures)
    )
    markdown = "\n\n".join(sections) + "\n"
    (out / "report.md").write_text(markdown, encoding="utf-8")
    payload = {"grid": grid, "hardware": hardware(), "wall_seconds": round(wall_seconds, 1), "tables": tables,
               "cells": every_record}  # fmt: skip
    (out / "report.json").write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return markdown
