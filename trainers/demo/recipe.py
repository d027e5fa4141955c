"""
The files `recipes/configs/tiny.yaml` reads: the demo benchmark (small) and its tiny pre-trained Llama, written to
one folder by `mera data demo --out DIR`, so that `recipes/stage.py` and `recipes/continual.py` run offline.

    DIR/manifest.json, DIR/<modality>/train.jsonl, test.jsonl, media/   the benchmark (`build_benchmark`)
    DIR/language_model/                                                 the tiny Llama and its word-level tokenizer

The encoders are not written: tiny.yaml builds them from their configs (the demo's shapes, `demo_encoder_configs`).
"""

import os
import shutil
from pathlib import Path

from .benchmark import build_benchmark
from .cache import atomic_folder
from .language_model import PRETRAINING_REPORT, pretrained_language_model

LANGUAGE_MODEL_DIR = "language_model"


def write_recipe_data(
    out_dir: str | os.PathLike,
    seed: int = 0,
    train_per_modality: int = 24,
    test_per_modality: int = 8,
    language_model_steps: int = 40,
    progress: bool = True,
) -> Path:
    """
    Write the demo benchmark and its tiny language model to `out_dir` (reused when already there with the same
    settings) and return `out_dir`. The defaults are `mera demo --quick`'s sizes.
    """
    out_dir = Path(out_dir)
    build_benchmark(out_dir, seed, train_per_modality, test_per_modality, progress=progress)
    # Trained once into a cache inside the folder, then copied to a stable name that a YAML file can give.
    cached = pretrained_language_model(out_dir / ".cache", out_dir, seed=seed, steps=language_model_steps,
                                       progress=progress)  # fmt: skip
    target = out_dir / LANGUAGE_MODEL_DIR
    report = (cached / PRETRAINING_REPORT).read_bytes()
    if not (target / PRETRAINING_REPORT).is_file() or (target / PRETRAINING_REPORT).read_bytes() != report:
        shutil.rmtree(target, ignore_errors=True)
        with atomic_folder(target) as temporary:
            shutil.copytree(cached, temporary, dirs_exist_ok=True)
    return out_dir
