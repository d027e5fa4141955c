"""
MeraProcessor: the tokenizer plus one feature processor per modality.

It expands every placeholder of a prompt (e.g. `<audio>`) into the modality's `num_tokens` placeholder ids, read from
the model's `MeraConfig`, so that `input_ids`, `labels` and the features always line up with what the model expects.
"""

import json
import os
import re
from collections import UserDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoFeatureExtractor, AutoImageProcessor, AutoTokenizer
from transformers.utils import cached_file

from .configuration_mera import MeraConfig, MeraModalityConfig

PROCESSOR_CONFIG_NAME = "mera_processor_config.json"
FEATURE_PROCESSOR_CLASSES = {"image": AutoImageProcessor, "video": AutoImageProcessor, "audio": AutoFeatureExtractor}


class MeraBatch(UserDict):
    """A processed batch: `input_ids`, `attention_mask`, optional `labels` and `modality_inputs`."""

    def to(self, device: torch.device | str) -> "MeraBatch":
        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device)
            if isinstance(value, dict):
                return {key: move(item) for key, item in value.items()}
            return value

        return MeraBatch({key: move(value) for key, value in self.data.items()})


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited (FFT) resampling: truncating the spectrum is the ideal low-pass that avoids aliasing."""
    if orig_rate == target_rate:
        return waveform
    num_out = max(1, round(len(waveform) * target_rate / orig_rate))
    spectrum = np.fft.rfft(waveform)
    return (np.fft.irfft(spectrum, n=num_out) * (num_out / len(waveform))).astype(np.float32)


def normalize_point_cloud(points: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """Centre xyz on the centroid, scale into the unit sphere, and sample exactly `num_points` points."""
    points = np.asarray(points, dtype=np.float32)
    xyz = points[:, :3] - points[:, :3].mean(axis=0)
    radius = np.linalg.norm(xyz, axis=1).max()
    points = np.concatenate([xyz / radius if radius > 0 else xyz, points[:, 3:]], axis=1)
    replace = len(points) < num_points
    return points[rng.choice(len(points), num_points, replace=replace)]


class MeraProcessor:
    """
    Tokenizer + per-modality feature preparation for a [`MeraForCausalLM`].

    Args:
        tokenizer: the LLM's tokenizer.
        config: the model's `MeraConfig` (the single source of placeholders and token counts).
        modality_processors: modality name -> its transformers processor (an image processor for 'image' and
            'video', a feature extractor for 'audio'; 'point_cloud' needs none).
        use_chat_template: wrap prompts in the tokenizer's chat template (for instruction-tuned LLMs).
        seed: seed of the point-sampling generator, so that a cloud is always sampled the same way.
    """

    def __init__(
        self,
        tokenizer,
        config: MeraConfig,
        modality_processors: dict[str, Any] | None = None,
        use_chat_template: bool = False,
        seed: int = 0,
    ):
        self.tokenizer = tokenizer
        self.config = config
        self.modality_processors = dict(modality_processors or {})
        self.use_chat_template = use_chat_template
        self.seed = seed
        unknown = sorted(set(self.modality_processors) - set(config.modalities))
        if unknown:
            raise ValueError(
                f"processors given for unknown modalities {unknown}; the config has {list(config.modalities)}"
            )

    def add_modality(self, name: str, processor: Any | None = None):
        """Register the feature processor of a modality that was just added to the model's config."""
        self.config.modality(name)
        if processor is not None:
            self.modality_processors[name] = processor

    def num_tokens(self, modality: str) -> int:
        return self.config.modality(modality).num_tokens

    # --- text ---------------------------------------------------------------------------------------------------
    def _placeholder_pattern(self) -> re.Pattern:
        placeholders = sorted((m["placeholder"] for m in self.config.modalities.values()), key=len, reverse=True)
        return re.compile("(" + "|".join(re.escape(p) for p in placeholders) + ")") if placeholders else None

    def format_prompt(self, prompt: str) -> str:
        if self.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}]
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prompt

    def encode_prompt(self, prompt: str) -> tuple[list[int], dict[str, int]]:
        """Token ids of one prompt with placeholders expanded, and how many items of each modality it names."""
        by_placeholder = {m["placeholder"]: name for name, m in self.config.modalities.items()}
        pattern = self._placeholder_pattern()
        pieces = pattern.split(self.format_prompt(prompt)) if pattern else [self.format_prompt(prompt)]
        # A chat template writes its own BOS; otherwise the tokenizer adds its special tokens to the first piece.
        add_special_tokens = not (self.use_chat_template and getattr(self.tokenizer, "chat_template", None))
        ids, counts = [], {}
        for index, piece in enumerate(pieces):
            if piece in by_placeholder:
                modality = self.config.modality(by_placeholder[piece])
                ids += [modality.placeholder_token_id] * modality.num_tokens
                counts[by_placeholder[piece]] = counts.get(by_placeholder[piece], 0) + 1
            elif piece or index == 0:
                ids += self.tokenizer(piece, add_special_tokens=add_special_tokens and index == 0)["input_ids"]
        return ids, counts

    def encode_answer(self, answer: str) -> list[int]:
        ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"]
        return ids + ([self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else [])

    # --- media --------------------------------------------------------------------------------------------------
    def _feature_processor(self, name: str):
        if name not in self.modality_processors:
            raise ValueError(f"no feature processor for modality {name!r}; pass one in modality_processors")
        return self.modality_processors[name]

    def prepare_modality(self, name: str, items: list[Any]) -> torch.Tensor:
        """Model-ready inputs for a list of raw items of modality `name`."""
        modality = self.config.modality(name)
        if modality.kind == "image":
            images = [_load_image(item) for item in items]
            return self._feature_processor(name)(images=images, return_tensors="pt")["pixel_values"]
        if modality.kind == "video":
            clips = [self._sample_frames(item, modality) for item in items]
            processor = self._feature_processor(name)
            return torch.stack([processor(images=frames, return_tensors="pt")["pixel_values"] for frames in clips])
        if modality.kind == "audio":
            return self._prepare_audio(name, items, modality)
        channels = self.config.modality(name).encoder.point_channels
        clouds = []
        for item in items:
            item = np.asarray(item)
            if item.ndim != 2 or item.shape[1] < channels:
                raise ValueError(f"{name}: a point cloud must be an array (points, >= {channels}), got {item.shape}")
            # A fresh generator per cloud: a cloud is sampled the same way wherever it sits in a batch.
            rng = np.random.default_rng(self.seed)
            clouds.append(normalize_point_cloud(item[:, :channels], modality.num_points, rng))
        return torch.from_numpy(np.stack(clouds))

    @staticmethod
    def _sample_frames(clip: Any, modality: MeraModalityConfig) -> list[np.ndarray]:
        frames = list(clip) if not isinstance(clip, np.ndarray) else [frame for frame in clip]
        if not frames:
            raise ValueError("a video clip has no frames")
        indices = np.linspace(0, len(frames) - 1, modality.num_frames).round().astype(int)
        return [np.asarray(frames[i]) for i in indices]

    def _prepare_audio(self, name: str, items: list[Any], modality: MeraModalityConfig) -> torch.Tensor:
        extractor = self._feature_processor(name)
        target_rate = getattr(extractor, "sampling_rate", modality.sampling_rate)
        waveforms = []
        for item in items:
            waveform, rate = _audio_array(item, default_rate=target_rate)
            waveforms.append(resample(waveform, rate, target_rate))
        main_input = extractor.model_input_names[0]
        if hasattr(extractor, "n_samples") or hasattr(extractor, "max_length"):
            # Whisper pads/cuts to its chunk and AST to its frame count: the encoder needs exactly that length.
            features = extractor(waveforms, sampling_rate=target_rate, return_tensors="pt")
        else:
            length = int(modality.max_audio_seconds * target_rate)
            features = extractor(
                waveforms,
                sampling_rate=target_rate,
                return_tensors="pt",
                padding="max_length",
                max_length=length,
                truncation=True,
            )
        return features[main_input]

    # --- batch --------------------------------------------------------------------------------------------------
    def __call__(
        self,
        text: str | list[str],
        media: dict[str, Any] | list[dict[str, Any] | None] | None = None,
        answers: str | list[str] | None = None,
        padding_side: str = "right",
        max_length: int | None = None,
    ) -> MeraBatch:
        """
        Tokenise prompts (and answers, for training) and prepare their media.

        Args:
            text: prompt(s) with placeholders, e.g. "<image>\\nDescribe the image."
            media: per prompt, a dict modality -> item (or a list of items, one per placeholder), or None. An item
                is an image (PIL, array or path), a video clip (array `(frames, H, W, C)`), audio (waveform,
                `(waveform, rate)` or `{"array", "sampling_rate"}`) or a point cloud (array `(points, channels)`).
            answers: per prompt, the target text; then `labels` are returned with the prompt masked out (-100).
            padding_side: "right" for training, "left" for batched generation.
            max_length: cut answers so that no sequence is longer; a prompt longer than this is an error.

        Returns a `MeraBatch` with `input_ids`, `attention_mask`, `modality_inputs` (and `labels`).
        """
        texts = [text] if isinstance(text, str) else list(text)
        media_list = [media] if isinstance(media, dict) or (media is None and isinstance(text, str)) else media
        media_list = media_list if media_list is not None else [None] * len(texts)
        answer_list = [answers] if isinstance(answers, str) else answers
        if len(media_list) != len(texts) or (answer_list is not None and len(answer_list) != len(texts)):
            raise ValueError(
                f"got {len(texts)} prompts, {len(media_list)} media entries"
                + (f" and {len(answer_list)} answers" if answer_list is not None else "")
                + "; they must match"
            )
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

        sequences, label_sequences = [], []
        items_by_modality: dict[str, list[Any]] = {}
        for index, (prompt, sample_media) in enumerate(zip(texts, media_list)):
            prompt_ids, counts = self.encode_prompt(prompt)
            sample_media = sample_media or {}
            for name in sorted(set(counts) | set(sample_media)):
                if name not in self.config.modalities:
                    raise ValueError(
                        f"sample {index}: unknown modality {name!r}; known: {list(self.config.modalities)}"
                    )
                items = sample_media.get(name)
                items = [] if items is None else items if isinstance(items, list) else [items]
                placeholder = self.config.modalities[name]["placeholder"]
                if len(items) != counts.get(name, 0):
                    raise ValueError(
                        f"sample {index}: the prompt has {counts.get(name, 0)} {placeholder} placeholder(s) but "
                        f"{len(items)} {name} input(s) were given"
                    )
                items_by_modality.setdefault(name, []).extend(items)
            if max_length is not None and len(prompt_ids) > max_length:
                raise ValueError(
                    f"sample {index}: the prompt alone is {len(prompt_ids)} tokens, over max_length {max_length}"
                )
            ids, labels = prompt_ids, None
            if answer_list is not None:
                answer_ids = self.encode_answer(answer_list[index])
                ids = prompt_ids + answer_ids
                labels = [-100] * len(prompt_ids) + answer_ids
                if max_length is not None:
                    ids, labels = ids[:max_length], labels[:max_length]
            sequences.append(ids)
            label_sequences.append(labels)

        batch = MeraBatch(self._pad(sequences, label_sequences if answer_list is not None else None, padding_side))
        batch["modality_inputs"] = {
            name: self.prepare_modality(name, items) for name, items in items_by_modality.items()
        }
        return batch

    def _pad(self, sequences: list[list[int]], labels: list[list[int]] | None, padding_side: str) -> dict:
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        length = max(len(ids) for ids in sequences)
        input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
        label_tensor = torch.full((len(sequences), length), -100, dtype=torch.long)
        for row, ids in enumerate(sequences):
            span = slice(length - len(ids), length) if padding_side == "left" else slice(0, len(ids))
            input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, span] = 1
            if labels is not None:
                label_tensor[row, span] = torch.tensor(labels[row], dtype=torch.long)
        padded = {"input_ids": input_ids, "attention_mask": attention_mask}
        if labels is not None:
            padded["labels"] = label_tensor
        return padded

    def batch_decode(self, sequences, **kwargs) -> list[str]:
        return self.tokenizer.batch_decode(sequences, **kwargs)

    def decode(self, sequence, **kwargs) -> str:
        return self.tokenizer.decode(sequence, **kwargs)

    # --- save / load --------------------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike):
        """Write the tokenizer, one sub-folder per modality processor, and `mera_processor_config.json`."""
        save_directory = Path(save_directory)
        save_directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(save_directory)
        for name, processor in self.modality_processors.items():
            processor.save_pretrained(save_directory / "processors" / name)
        settings = {
            "processor_class": type(self).__name__,
            "modality_processors": sorted(self.modality_processors),
            "use_chat_template": self.use_chat_template,
            "seed": self.seed,
        }
        (save_directory / PROCESSOR_CONFIG_NAME).write_text(json.dumps(settings, indent=2) + "\n")
        self.config.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, revision: str | None = None, **kwargs
    ) -> "MeraProcessor":
        """Load from a folder or a Hub repo (at `revision`): tokenizer, config and every modality processor."""
        settings_file = cached_file(str(name_or_path), PROCESSOR_CONFIG_NAME, revision=revision, **kwargs)
        settings = json.loads(Path(settings_file).read_text())
        config = MeraConfig.from_pretrained(name_or_path, revision=revision, **kwargs)
        # Passing the config keeps AutoTokenizer from resolving (and asking to trust) the remote-code config.
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision, config=config, **kwargs)
        processors = {}
        for name in settings["modality_processors"]:
            auto_class = FEATURE_PROCESSOR_CLASSES[config.modality(name).kind]
            processors[name] = auto_class.from_pretrained(
                name_or_path, subfolder=f"processors/{name}", revision=revision, **kwargs
            )
        return cls(
            tokenizer,
            config,
            processors,
            use_chat_template=settings.get("use_chat_template", False),
            seed=settings.get("seed", 0),
        )


def _load_image(item: Any):
    if isinstance(item, (str, os.PathLike)):
        from PIL import Image

        if not os.path.exists(item):
            raise FileNotFoundError(f"image file not found: {item}")
        with Image.open(item) as image:
            return image.convert("RGB")
    return item


def _audio_array(item: Any, default_rate: int) -> tuple[np.ndarray, int]:
    """A mono float waveform and its rate from an array, an (array, rate) pair or a datasets-style dict."""
    if isinstance(item, dict):
        waveform, rate = item["array"], item.get("sampling_rate", default_rate)
    elif isinstance(item, tuple):
        waveform, rate = item
    else:
        waveform, rate = item, default_rate
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim == 2:  # (channels, samples) -> mono
        waveform = waveform.mean(axis=0)
    if waveform.ndim != 1:
        raise ValueError(f"an audio item must be a 1-D waveform (or channels x samples), got shape {waveform.shape}")
    return waveform, int(rate)
