"""
Converters from the paper's data sets (and LLaVA / MLLM-CL JSON) in their published formats to the project's samples.

Each converter reads one data set's own files, applies the paper's filtering, and the shared writer produces

    <out>/<name>/train.jsonl     training samples (trainers.data's format), media paths relative to this folder
    <out>/<name>/test.jsonl      test samples, one per image/clip/question, every reference in `references`
    <out>/<name>/manifest.json   sources, options, seed, sizes, counts before and after each filter

so that a continual run's YAML lists `mscoco/train.jsonl`, ... relative to `--data_root <out>`.

```python
from trainers.data.converters import convert, dry_run_report

manifest = convert("clotho_aqa", data_root="/downloads/clotho_aqa", out="/data/mera", seed=0)
manifest["counts"]                      # {'train': ..., 'test': 1000}
report = dry_run_report([{"modality": "audio", "train": ["clotho_aqa/train.jsonl"], "test": [...]}], "/data/mera")
```

The command line is `mera data convert NAME --data-root DIR --out DIR` (`mera data list` shows every format).
"""

import inspect
import os
import types
import typing
from collections.abc import Callable
from pathlib import Path

from ..media import read_ply, read_point_cloud_file
from .audio import convert_audiocaps, convert_clotho_aqa
from .core import ConversionPlan, write_plan
from .image import convert_mscoco, convert_okvqa
from .llava import convert_llava
from .mllm_cl import MLLM_CL_TASKS, convert_mllm_cl
from .point_cloud import convert_cap3d, convert_cap3d_qa
from .report import dry_run_report, format_dry_run_report, stream_samples
from .video import convert_msvd, convert_msvd_qa

__all__ = [
    "CONVERTERS",
    "MLLM_CL_TASKS",
    "ConversionPlan",
    "convert",
    "converter_options",
    "describe_converter",
    "dry_run_report",
    "format_dry_run_report",
    "parse_options",
    "read_ply",
    "read_point_cloud_file",
    "stream_samples",
]

# name -> converter. The name is also the default output folder, the one the paper's configs list.
CONVERTERS: dict[str, Callable[..., ConversionPlan]] = {
    "mscoco": convert_mscoco,
    "okvqa": convert_okvqa,
    "msvd": convert_msvd,
    "msvd_qa": convert_msvd_qa,
    "audiocaps": convert_audiocaps,
    "clotho_aqa": convert_clotho_aqa,
    "cap3d": convert_cap3d,
    "cap3d_qa": convert_cap3d_qa,
    "llava": convert_llava,
    "mllm_cl": convert_mllm_cl,
}


def _get(name: str) -> Callable[..., ConversionPlan]:
    if name not in CONVERTERS:
        raise ValueError(f"unknown data set {name!r}; the converters are {sorted(CONVERTERS)}")
    return CONVERTERS[name]


def converter_options(name: str) -> dict[str, inspect.Parameter]:
    """A converter's options (its keyword parameters after `data_root`), with their defaults and types."""
    return dict(list(inspect.signature(_get(name)).parameters.items())[1:])


def _value_type(parameter: inspect.Parameter) -> type:
    annotation = parameter.annotation
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(arg for arg in typing.get_args(annotation) if arg is not type(None))
    return annotation if annotation in (int, float, str) else str


def parse_options(name: str, pairs: list[str] | None) -> dict:
    """`["key=value", ...]` from the command line as the converter's typed options; unknown keys are an error."""
    options = converter_options(name)
    parsed = {}
    for pair in pairs or []:
        key, separator, value = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not separator:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        if key not in options:
            raise ValueError(f"{name}: unknown option {key!r}; its options are {sorted(options)}")
        kind = _value_type(options[key])
        try:
            parsed[key] = kind(value)
        except ValueError as error:
            raise ValueError(f"{name}: option {key} must be a {kind.__name__}, got {value!r}") from error
    return parsed


def describe_converter(name: str) -> str:
    """The converter's documentation and options, as `mera data list` prints them."""
    doc = inspect.cleandoc(_get(name).__doc__ or "")
    options = "\n".join(f"    {key} = {parameter.default!r}" for key, parameter in converter_options(name).items())
    return (
        f"{name}\n" + "\n".join(f"  {line}" if line else "" for line in doc.splitlines()) + f"\n  options:\n{options}"
    )


def convert(
    name: str,
    data_root: str | os.PathLike,
    out: str | os.PathLike,
    output_name: str | None = None,
    seed: int = 0,
    test_size: int | str | None = None,
    train_size: int | str | None = None,
    skip_missing_media: bool = False,
    absolute_paths: bool = False,
    progress: bool = True,
    **options,
) -> dict:
    """
    Convert data set `name` from its files under `data_root` into `<out>/<output_name or name>/`; return the manifest.

    `options` are the converter's own (file names, media folders, prompts; see `describe_converter(name)`).
    `test_size` / `train_size`: None for the paper's sizes (1K test, MSVD 670; Cap3D 50K and Cap3D-QA 30K training
    subsets), a number, or "all". The same `seed` always gives the same split, whatever the file order.
    """
    root = Path(data_root)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{name}: the data root {root} is not a folder (give the data set's folder with --data-root)"
        )
    known = converter_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {unknown}; its options are {sorted(known)}")
    plan = _get(name)(root, **options)
    plan.sources = {"data_root": str(root.resolve()), **plan.sources}
    return write_plan(
        plan,
        output_name or name,
        out,
        seed=seed,
        test_size=test_size,
        train_size=train_size,
        skip_missing_media=skip_missing_media,
        absolute_paths=absolute_paths,
        progress=progress,
    )
