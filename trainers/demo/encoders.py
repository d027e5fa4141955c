"""
The demo's modalities as `ModalitySpec`s: tiny, frozen, randomly initialised encoders sized for the demo benchmark's
media, with the paper's connector kinds (MLP for image, video and point cloud; Q-Former for audio).

    image        tiny CLIP vision tower, 8x8 patches of a 32x32 image     -> 16 tokens
    video        the same CLIP tower on each of 4 frames, pooled 2x       -> 4 tokens per frame
    audio        tiny Whisper encoder on 16 log-mel bins, 40 frames / s   -> 8 Q-Former queries
    point_cloud  tiny Point-BERT on xyz + rgb, 16 patches of 16 points    -> 17 tokens

An encoder's weights are drawn from a seed and written to a cache folder, and every spec loads them from there
(`encoder_weights`): every method and every single-modality expert then sees the same frozen encoder, as it would
with a real pre-trained one. Image and video share one CLIP tower, as in the paper.
"""

import os
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, PreTrainedConfig, WhisperConfig, WhisperModel

from modeling_mera import PointBertConfig, PointBertModel

from ..settings import ModalitySpec
from .benchmark import MODALITIES, BenchmarkSizes, load_manifest
from .cache import atomic_folder, content_key, default_cache_dir

MEL_FRAMES_PER_SECOND = 40  # Whisper's 10 ms hop would give 100; a 25 ms hop keeps the encoder tiny
QFORMER_CONNECTOR = {
    "type": "qformer",
    "num_query_tokens": 8,
    "qformer_config": {"hidden_size": 64, "num_hidden_layers": 1, "num_attention_heads": 4, "intermediate_size": 128},
}
MLP_CONNECTOR = {"type": "mlp", "depth": 2, "activation": "gelu"}
ENCODER_OF_MODALITY = {"image": "clip", "video": "clip", "audio": "whisper", "point_cloud": "point_bert"}


def resolve_sizes(benchmark: BenchmarkSizes | dict | str | os.PathLike | None) -> BenchmarkSizes:
    """Media sizes from a `BenchmarkSizes`, a sizes dict, a benchmark manifest, or a benchmark folder."""
    if benchmark is None or isinstance(benchmark, BenchmarkSizes):
        return benchmark or BenchmarkSizes()
    if isinstance(benchmark, (str, os.PathLike)):
        benchmark = load_manifest(benchmark)
    if "settings" in benchmark:
        benchmark = benchmark["settings"]["sizes"]
    return BenchmarkSizes(**benchmark)


def demo_encoder_configs(sizes: BenchmarkSizes | None = None) -> dict[str, PreTrainedConfig]:
    """The configs of the demo's three encoders ('clip', 'whisper', 'point_bert'), sized for `sizes`."""
    sizes = sizes or BenchmarkSizes()
    if sizes.image_size % 8:
        raise ValueError(f"the demo's CLIP tower uses 8x8 patches: image_size must be a multiple of 8, got {sizes}")
    if sizes.num_points < 16 * 16:
        raise ValueError(f"the demo's Point-BERT groups 16 x 16 points: num_points must be >= 256, got {sizes}")
    if sizes.sampling_rate % MEL_FRAMES_PER_SECOND:
        raise ValueError(f"sampling_rate must be a multiple of {MEL_FRAMES_PER_SECOND}, got {sizes}")
    clip = CLIPVisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=sizes.image_size,
        patch_size=8,
    )
    # Whisper's encoder takes exactly 2 x max_source_positions mel frames (its second convolution has stride 2).
    whisper = WhisperConfig(
        d_model=64,
        encoder_layers=2,
        encoder_attention_heads=4,
        encoder_ffn_dim=128,
        decoder_layers=1,
        decoder_attention_heads=4,
        decoder_ffn_dim=64,
        num_mel_bins=16,
        max_source_positions=MEL_FRAMES_PER_SECOND * sizes.audio_seconds // 2,
        max_target_positions=8,
        vocab_size=8,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
        # At Whisper's 0.02 (and still at 0.1) the sinusoidal positions drown the sound: the features of two clips
        # differ by a few percent and the demo's audio expert stayed at its text prior; at 0.3 it learns.
        init_std=0.3,
    )
    point_bert = PointBertConfig(
        point_channels=6,
        num_groups=16,
        group_size=16,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
    )
    return {"clip": clip, "whisper": whisper, "point_bert": point_bert}


def demo_feature_processors(sizes: BenchmarkSizes | None = None) -> dict[str, dict]:
    """Each modality's feature processor as `{"processor_class": ..., arguments}` (the YAML form of the runner)."""
    sizes = sizes or BenchmarkSizes()
    image = {
        "processor_class": "CLIPImageProcessorPil",
        "size": {"shortest_edge": sizes.image_size},
        "crop_size": {"height": sizes.image_size, "width": sizes.image_size},
    }
    hop = sizes.sampling_rate // MEL_FRAMES_PER_SECOND
    audio = {
        "processor_class": "WhisperFeatureExtractor",
        "feature_size": 16,
        "sampling_rate": sizes.sampling_rate,
        "hop_length": hop,
        "n_fft": hop,
        "chunk_length": sizes.audio_seconds,
    }
    return {"image": image, "video": dict(image), "audio": audio}


def save_demo_encoders(cache_dir: str | os.PathLike | None = None, seed: int = 0, sizes=None) -> dict[str, Path]:
    """
    Draw the three encoders from `seed`, save each with `save_pretrained`, and return their folders. Cached: a
    folder keyed by the configs and the seed is reused when present.
    """
    configs = demo_encoder_configs(resolve_sizes(sizes))
    key = content_key({"seed": seed, "configs": {name: config.to_dict() for name, config in configs.items()}})
    folder = Path(cache_dir or default_cache_dir()) / f"encoders-seed{seed}-{key}"
    if not folder.is_dir():
        model_classes = {"clip": CLIPVisionModel, "whisper": WhisperModel, "point_bert": PointBertModel}
        with atomic_folder(folder) as temporary, torch.random.fork_rng():
            for index, (name, config) in enumerate(configs.items()):
                torch.manual_seed(seed * 1000 + index)
                model_classes[name](config).save_pretrained(temporary / name)
    return {name: folder / name for name in configs}


def demo_modality_entries(
    cache_dir: str | os.PathLike | None = None, seed: int = 0, benchmark=None, modalities=MODALITIES
) -> list[dict]:
    """
    The demo's modalities in the runner's YAML form (`ContinualConfig.modalities` without `train`/`test`):
    name, encoder_weights (a cached folder), connector, feature_processor (a dict) and options.

    `benchmark` gives the media sizes: a benchmark folder, its manifest, a `BenchmarkSizes` or None (defaults).
    """
    sizes = resolve_sizes(benchmark)
    folders = save_demo_encoders(cache_dir, seed, sizes)
    processors = demo_feature_processors(sizes)
    options = {
        "image": {"feature_layer": -2, "feature_select_strategy": "default"},
        "video": {
            "feature_layer": -2,
            "feature_select_strategy": "default",
            "num_frames": sizes.num_frames,
            "frame_pooling": 2,
        },
        "audio": {"max_audio_seconds": float(sizes.audio_seconds), "sampling_rate": sizes.sampling_rate},
        "point_cloud": {"num_points": sizes.num_points},
    }
    entries = []
    for name in modalities:
        if name not in ENCODER_OF_MODALITY:
            raise ValueError(f"unknown demo modality {name!r}; the demo has {list(MODALITIES)}")
        entry = {
            "name": name,
            "kind": name,
            "encoder_weights": str(folders[ENCODER_OF_MODALITY[name]]),
            "connector": dict(QFORMER_CONNECTOR if name == "audio" else MLP_CONNECTOR),
            "options": options[name],
        }
        if name in processors:
            entry["feature_processor"] = processors[name]
        entries.append(entry)
    return entries


def demo_modality_specs(
    cache_dir: str | os.PathLike | None = None, seed: int = 0, benchmark=None, modalities=MODALITIES
) -> dict[str, ModalitySpec]:
    """
    The demo's modalities as `ModalitySpec`s for `run_stage`, keyed by name, with their feature processors built.
    Arguments as in `demo_modality_entries`.
    """
    from ..continual import build_processor_from_dict  # the continual run's YAML form of a processor; imported on use

    specs = {}
    for entry in demo_modality_entries(cache_dir, seed, benchmark, modalities):
        processor = entry.pop("feature_processor", None)
        specs[entry["name"]] = ModalitySpec(
            **entry, feature_processor=build_processor_from_dict(processor) if processor else None
        )
    return specs
