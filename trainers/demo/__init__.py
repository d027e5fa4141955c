"""
The offline demo behind `mera demo`: a synthetic four-modality benchmark (`build_benchmark`), its four-domain
variant on the image modality (`DOMAINS`, MLLM-CL's setting), a tiny Llama
pre-trained on its text (`pretrained_language_model`), and tiny frozen encoders for its modalities
(`demo_modality_specs`, `demo_modality_entries`). Nothing is downloaded; everything is generated from a seed.
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
from .cache import default_cache_dir
from .domains import DOMAINS, SYNTHETIC_DOMAINS
from .encoders import demo_encoder_configs, demo_feature_processors, demo_modality_entries, demo_modality_specs
from .language_model import (
    TinyLlamaSettings,
    benchmark_texts,
    build_tokenizer,
    pretrained_language_model,
    pretraining_report,
    text_loss,
)

__all__ = [
    "DOMAINS",
    "MODALITIES",
    "SYNTHETIC_DOMAINS",
    "BenchmarkSizes",
    "TinyLlamaSettings",
    "benchmark_texts",
    "build_benchmark",
    "build_tokenizer",
    "chance_accuracy",
    "constant_caption_baseline",
    "dataset_names",
    "default_cache_dir",
    "demo_encoder_configs",
    "demo_feature_processors",
    "demo_modality_entries",
    "demo_modality_specs",
    "load_manifest",
    "majority_baseline",
    "normalize_text",
    "pretrained_language_model",
    "pretraining_report",
    "read_split",
    "text_loss",
]
