"""The demo's continual-run settings: benchmark, language model and encoders generated for a seed, plus the YAML."""

from pathlib import Path

import yaml

from ..errors import UserError
from ..settings import ContinualConfig
from .benchmark import MODALITIES, build_benchmark
from .domains import DOMAINS
from .encoders import demo_modality_entries
from .language_model import pretrained_language_model


def demo_settings(path: str | Path, quick: bool) -> dict:
    """The demo's YAML: benchmark sizes, language-model settings, per-method `method_args` and the ContinualConfig
    fields shared by every method (`quick` applied)."""
    settings = yaml.safe_load(Path(path).read_text())
    quick_overrides = settings.pop("quick", {})
    if quick:
        for key, value in quick_overrides.items():
            settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
    return {
        "benchmark": settings.pop("benchmark", {}),
        "language_model": settings.pop("language_model", {}),
        "method_args": settings.pop("method_args", {}),
        "settings": settings,
    }


def demo_run_config(
    out: str | Path,
    config_path: str | Path | dict,
    seed: int,
    quick: bool,
    domain: bool = False,
    size: str | None = None,
) -> tuple[ContinualConfig, dict]:
    """
    The demo's `ContinualConfig` for `seed` (every method's shared settings; `method` and `output_dir` are left to
    the caller) and the per-method `method_args`. Builds, or reuses, the benchmark in `out/benchmark-SIZE-seedN`, the
    language model and encoders in `out/cache`; the experts go to `out/experts-SIZE-seedN`. `config_path` is the YAML
    or `demo_settings`' result; `domain`: MLLM-CL's four image domains, each a task of the one image modality; `size`
    names the benchmark's folders (default "quick" or "full").
    """
    out = Path(out)
    demo = config_path if isinstance(config_path, dict) else demo_settings(config_path, quick)
    size = size or ("quick" if quick else "full")
    benchmark_dir = out / f"benchmark-{size}-seed{seed}"
    try:
        build_benchmark(benchmark_dir, seed=seed, modalities=DOMAINS if domain else MODALITIES, **demo["benchmark"])
    except (TypeError, ValueError) as error:  # the YAML's `benchmark:` section: a user's setting, not a crash
        where = config_path.get("source", "the demo config") if isinstance(config_path, dict) else config_path
        raise UserError(f"{where}: benchmark: {error}") from None
    language_model = pretrained_language_model(out / "cache", benchmark_dir, seed=seed, **demo["language_model"])
    if domain:  # every stage is a task (domain) on the one image modality
        (image,) = demo_modality_entries(out / "cache", seed=seed, benchmark=benchmark_dir, modalities=["image"])
        modalities = [{**image, "task": name, "train": f"{name}/train.jsonl", "test": f"{name}/test.jsonl"}
                      for name in DOMAINS]  # fmt: skip
    else:
        modalities = [
            {**entry, "train": f"{entry['name']}/train.jsonl", "test": f"{entry['name']}/test.jsonl"}
            for entry in demo_modality_entries(out / "cache", seed=seed, benchmark=benchmark_dir)
        ]
    # The demo's encoders are frozen and its items few: each item is encoded once per run, not once per epoch and
    # phase (exact; a few KB per item, trainers.data.feature_cache).
    settings = {"feature_cache": str(out / "cache" / "features"), **demo["settings"]}
    config = ContinualConfig(
        **settings,
        modalities=modalities,
        language_model=str(language_model),
        data_root=str(benchmark_dir),
        seed=seed,
        experts_dir=str(out / f"experts-{size}-seed{seed}"),
        smoke_test=quick,
    )
    return config, demo["method_args"]
