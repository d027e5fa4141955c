"""
The offline demo behind `mera demo`: a synthetic four-modality benchmark (`build_benchmark`). Nothing is downloaded;
everything is generated from a seed.
"""

from .benchmark import (
    MODALITIES,
    BenchmarkSizes,
    build_benchmark,
    chance_accuracy,
    constant_caption_baseline,
    dataset_names,
    load_manifest,
    majority_baseline,
    normalize_text,
    read_split,
)

__all__ = [
    "MODALITIES",
    "BenchmarkSizes",
    "build_benchmark",
    "chance_accuracy",
    "constant_caption_baseline",
    "dataset_names",
    "load_manifest",
    "majority_baseline",
    "normalize_text",
    "read_split",
]
