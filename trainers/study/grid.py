"""
A study: the paper's experiments as one grid of continual runs, methods × orders × seeds × replay/realign settings,
with every single-modality expert trained once per seed and every stage that is provably the same in two cells
trained once.

    study/
      benchmark-*, cache/, experts-*/      the demo's generated benchmark, language model, encoders and experts
      runs/<size>-<order>-seed<N>/<cell>/  one continual run per cell (`trainers.continual.run_continual`)
        fingerprints.json                  what determines each stage (and its evaluation), see `stage_fingerprints`
        stage-i -> ../../../experts-.../x  a stage reused from another cell or an expert (a relative symlink)
        cost.json                          per-token latency of the final model
      report.md, report.json, *.png        `trainers.study.report`

A stage is reused only when its fingerprint matches: the hash of the previous stage's fingerprint, the stage's
modality and training data (file contents), every training setting, and what each plug-in does at that stage
(`StagePlugin.fingerprint`; `None` where a plug-in leaves the stage as plain fine-tuning does, e.g. MERA at stage
1). A killed study resumes: finished cells are read, unfinished ones continue at their last finished stage.
"""

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from accelerate import PartialState

from ..continual import StagePlan, build_stage_plan, load_stage_data, run_continual, train_experts
from ..demo.cache import content_key
from ..evaluation.cost import generation_latency
from ..methods import METHOD_ARGUMENTS, METHODS, check_method_settings
from ..settings import ContinualConfig

FINGERPRINTS = "fingerprints.json"
COST = "cost.json"
ORDERS = ("sequential", "reverse")
METHOD_LABELS = {
    "fine_tuning": "Fine-Tuning",
    "replay": "Replay",
    "ewc": "EWC",
    "eproj": "EProj",
    "pathweave": "PathWeave",
    "mera": "MERA",
    "merge_only": "Fine-Tuning + Merge",
    "realign_only": "Fine-Tuning + Realign",
    "mr_lora": "MR-LoRA",
}


@dataclass(frozen=True)
class StudyCell:
    """One continual run of the grid."""

    method: str
    order: str
    seed: int
    replay_ratio: float
    uses_replay_ratio: bool
    """Whether the method draws from the replay buffer (its label and folder then name the ratio)."""
    realign: float | None = None
    mispaired_percent: float = 0.0

    @property
    def variant(self) -> str:
        """The cell's settings without order and seed: cells of one variant are averaged over seeds."""
        name = self.method + (f"-r{self.replay_ratio:g}" if self.uses_replay_ratio else "")
        name += f"+realign{self.realign:g}" if self.realign is not None else ""
        return name + (f"-mispaired{self.mispaired_percent:g}" if self.mispaired_percent else "")

    @property
    def label(self) -> str:
        label = METHOD_LABELS.get(self.method, self.method)
        label += f" ({self.replay_ratio:g}%)" if self.uses_replay_ratio else ""
        label += f" + Realign ({self.realign:g}%)" if self.realign is not None else ""
        return label + (f", {self.mispaired_percent:g}% mispaired" if self.mispaired_percent else "")


@dataclass
class Study:
    """The grid and where it lives. `base_config(seed)` gives the benchmark's shared run settings for a seed and the
    per-method `method_args`."""

    out: Path
    methods: list[str]
    orders: list[str]
    seeds: list[int]
    base_config: Callable[[int], tuple[ContinualConfig, dict]]
    replay_ratios: list[float] | None = None
    realign: list[float] | None = None
    mispaired: list[float] | None = None
    size: str = "full"
    latency_samples: int = 8


def method_uses_replay_ratio(method: str, config: ContinualConfig) -> bool:
    """Whether the replay ratio changes what the method does (compared by the plug-ins' stage-2 fingerprints)."""
    prints = [
        [plugin.fingerprint(2) for plugin in check_method_settings(replace(config, method=method, replay_ratio=r))]
        for r in (1.0, 10.0)
    ]
    return json.dumps(prints[0], default=str) != json.dumps(prints[1], default=str)


def build_grid(study: Study, base: ContinualConfig, method_args: dict) -> tuple[list[StudyCell], list[str]]:
    """
    The cells of the grid (seed by seed, order by order), and notes on combinations left out because the method
    cannot take them (e.g. '+ realign' after MERA, which realigns already). Every cell's settings are checked here,
    before anything is trained.
    """
    unknown = [method for method in study.methods if method not in METHODS]
    if unknown:
        raise ValueError(f"methods: unknown {unknown}; known methods: {sorted(METHODS)}")
    wrong_orders = [order for order in study.orders if order not in ORDERS]
    if wrong_orders or not study.orders:
        raise ValueError(f"orders: expected some of {list(ORDERS)}, got {study.orders}")
    if not study.seeds or len(set(study.seeds)) != len(study.seeds):
        raise ValueError(f"seeds: expected distinct integers, got {study.seeds}")
    ratios = study.replay_ratios or [base.replay_ratio]
    cells, notes = [], []
    for seed in study.seeds:
        for order in study.orders:
            for method in study.methods:
                uses_ratio = method_uses_replay_ratio(method, replace(base, method_args=method_args.get(method)))
                for ratio in ratios if uses_ratio else [base.replay_ratio]:
                    variants = [StudyCell(method, order, seed, ratio, uses_ratio)]
                    for realign in study.realign or []:
                        variants.append(replace(variants[0], realign=realign))
                    for percent in study.mispaired or []:
                        if "mispaired_percent" in METHOD_ARGUMENTS[method]:
                            variants.append(replace(variants[0], mispaired_percent=percent))
                    for cell in variants:
                        try:
                            check_method_settings(cell_config(study, cell, base, method_args))
                        except ValueError as error:
                            if cell.realign is None:
                                raise
                            label = METHOD_LABELS.get(method, method)
                            note = f"no '{label} + Realign ({cell.realign:g}%)' cells: {error}"
                            if note not in notes:
                                notes.append(note)
                            continue
                        cells.append(cell)
    return cells, notes


def cell_dir(study: Study, cell: StudyCell) -> Path:
    return study.out / "runs" / f"{study.size}-{cell.order}-seed{cell.seed}" / cell.variant


def cell_config(study: Study, cell: StudyCell, base: ContinualConfig, method_args: dict) -> ContinualConfig:
    args = dict(method_args.get(cell.method) or {})
    if cell.mispaired_percent:
        args["mispaired_percent"] = cell.mispaired_percent
    return replace(
        base,
        method=cell.method,
        order=cell.order,
        seed=cell.seed,
        replay_ratio=cell.replay_ratio,
        realign_ratio=cell.realign,
        method_args=args or None,
        output_dir=str(cell_dir(study, cell)),
    )


_DIGESTS: dict[tuple, str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (memoised by path, size and modification time)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[key] = digest.hexdigest()
    return _DIGESTS[key]


def stage_fingerprints(config: ContinualConfig, plan: list[StagePlan], plugins=None) -> list[dict]:
    """
    Per stage of `plan`: `{"stage": key, "eval": key}`. The stage key changes with anything that can change the
    stage's checkpoint (its predecessor's key, the modality's settings and training data, every training setting,
    the number of processes, what each plug-in does at that stage); the eval key adds what the evaluation reads.
    `plugins` defaults to the config's method's.
    """
    plugins = check_method_settings(config) if plugins is None else plugins
    entries = {entry["name"]: entry for entry in config.modalities}
    previous = content_key(
        {
            "language_model": config.language_model,
            "dtype": config.dtype,
            "use_chat_template": config.use_chat_template,
            "settings": asdict(config.stage_settings()),
            "processes": PartialState().num_processes,
        }
    )
    evaluation = {key: getattr(config, key) for key in ("judge", "eval_batch_size", "max_new_tokens", "test_limit")}
    evaluation["judge_args"] = config.judge_args
    keys, tests = [], []
    for step in plan:
        modality = {key: value for key, value in entries[step.spec.name].items() if key not in ("train", "test")}
        previous = content_key(
            {
                "previous": previous,
                "stage": step.stage,
                "modality": modality,
                "train": [file_digest(path) for path in step.train_files],
                "plugins": [p for plugin in plugins if (p := plugin.fingerprint(step.stage)) is not None],
            }
        )
        tests += [file_digest(path) for path in step.test_files]
        keys.append({"stage": previous, "eval": content_key({"stage": previous, "tests": tests, **evaluation})})
    return keys


def _write_json(path: Path, data):
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(temporary, path)


def _donors(study: Study) -> dict[str, tuple[Path, Path, str]]:
    """Stage key -> (finished stage folder, its evaluation file, that file's eval key) of every expert and cell of the
    study folder."""
    donors = {}
    for prints in sorted(study.out.glob(f"*/{FINGERPRINTS}")) + sorted(study.out.glob(f"runs/*/*/{FINGERPRINTS}")):
        for name, keys in json.loads(prints.read_text()).items():
            folder = prints.parent / name
            if (folder / "stage.json").is_file() and not folder.is_symlink():
                evaluation = prints.parent / "eval" / f"{name}.json"
                donors.setdefault(keys["stage"], (folder, evaluation, keys["eval"]))
    return donors


def reuse_stages(study: Study, directory: Path, prints: list[dict]) -> list[int]:
    """Link every leading stage of `directory` that another cell or an expert already trained identically (and copy
    its evaluation when that is identical too). Returns the reused stage indices."""
    donors, reused = _donors(study), []
    for stage, keys in enumerate(prints, start=1):
        target = directory / f"stage-{stage}"
        if (target / "stage.json").is_file():
            continue
        if keys["stage"] not in donors:
            break
        folder, evaluation, eval_key = donors[keys["stage"]]
        if target.is_symlink() or target.exists():
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
        shutil.rmtree(directory / f"stage-{stage}.partial", ignore_errors=True)
        os.symlink(os.path.relpath(folder, directory), target)
        own_eval = directory / "eval" / f"stage-{stage}.json"
        if eval_key == keys["eval"] and evaluation.is_file() and not own_eval.is_file():
            own_eval.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(evaluation, own_eval)
        reused.append(stage)
    return reused


def prepare_experts(study: Study, config: ContinualConfig) -> Path:
    """Train (or find) the seed's single-modality experts and record their fingerprints, so that a cell whose
    stage 1 is trained exactly as an expert reuses it."""
    experts_dir = Path(config.experts_dir)
    plan = build_stage_plan(replace(config, order="sequential"))
    train_experts(config, plan)
    if PartialState().is_main_process:
        prints = {step.spec.name: stage_fingerprints(config, [replace(step, stage=1)], plugins=[])[0] for step in plan}
        _write_json(experts_dir / FINGERPRINTS, prints)
    PartialState().wait_for_everyone()
    return experts_dir


def is_finished_cell(directory: Path, num_stages: int, with_cost: bool = True) -> bool:
    """Whether a cell's run scored every stage (and, `with_cost`, measured its final model's latency)."""
    scores = directory / "scores.json"
    if not scores.is_file() or (with_cost and not (directory / COST).is_file()):
        return False
    return len(json.loads(scores.read_text())["stages"]) == num_stages


def measure_latency(config: ContinualConfig, directory: Path, samples_per_modality: int) -> dict:
    """Per-token latency of the cell's final model on the first test samples of every modality."""
    from ..checkpoint import load_stage

    plan = build_stage_plan(config)
    model, processor, _ = load_stage(directory / f"stage-{len(plan)}")
    samples = []
    for step in plan:
        samples += list(load_stage_data(step.test_files))[:samples_per_modality]
    return generation_latency(model, processor, samples, new_tokens=config.max_new_tokens)


def run_study(study: Study, log: Callable[[str], None] = print) -> list[tuple[StudyCell, Path]]:
    """Train and evaluate every cell of the grid (resuming whatever is finished); returns the cells and folders."""
    is_main = PartialState().is_main_process
    bases = {}
    for seed in study.seeds:
        bases[seed] = study.base_config(seed)
    cells, notes = build_grid(study, *bases[study.seeds[0]])
    for note in notes:
        log(f"note: {note}")
    finished = []
    started = time.time()
    for index, cell in enumerate(cells, start=1):
        base, method_args = bases[cell.seed]
        if index == 1 or cell.seed != cells[index - 2].seed:
            log(f"seed {cell.seed}: experts in {base.experts_dir}")
            prepare_experts(study, base)
        config = cell_config(study, cell, base, method_args)
        directory = Path(config.output_dir)
        prints = stage_fingerprints(config, build_stage_plan(config))
        prefix = f"[{index}/{len(cells)}] {cell.label}, {cell.order}, seed {cell.seed}"
        done = is_finished_cell(directory, len(prints))
        if is_main and not done:
            directory.mkdir(parents=True, exist_ok=True)
            _write_json(directory / FINGERPRINTS, {f"stage-{i}": keys for i, keys in enumerate(prints, start=1)})
            reuse_stages(study, directory, prints)
        PartialState().wait_for_everyone()
        if done:
            log(f"{prefix}: finished earlier")
        else:
            linked = [i for i in range(1, len(prints) + 1) if (directory / f"stage-{i}").is_symlink()]
            what = f"stage(s) {linked} reused from identical runs" if linked else "no stage to reuse"
            log(f"{prefix}: {what}; {directory}")
            cell_started = time.time()
            try:
                result = f"mean Backward Relative Gain {run_continual(config)['backward_mean']:.2f}%"
            except ValueError as error:
                if not is_finished_cell(directory, len(prints), with_cost=False):
                    raise
                # Every stage is trained and scored, but a Relative Gain is undefined (an expert scored 0): the report
                # lists the cell's raw scores and says why it has no Relative Gain.
                result = f"no Relative Gain: {error}"
            if is_main:
                _write_json(directory / COST, measure_latency(config, directory, study.latency_samples))
            PartialState().wait_for_everyone()
            elapsed = f"{time.time() - cell_started:.0f} s (study: {time.time() - started:.0f} s)"
            log(f"{prefix}: done in {elapsed}, {result}")
        finished.append((cell, directory))
    return finished
