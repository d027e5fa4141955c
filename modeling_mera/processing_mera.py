"""
MeraProcessor: the tokenizer plus one feature processor per modality, as a transformers `ProcessorMixin`.

It expands every placeholder of a prompt (e.g. `<audio>`) into the modality's `num_tokens` placeholder ids, read from
the model's `MeraConfig`, so that `input_ids`, `labels` and the features always line up with what the model expects.
Prompts come as text with placeholders (`processor("<image> what is it ?", media={"image": picture})`) or as chat
messages whose content parts name a modality (`processor.apply_chat_template(messages, tokenize=True, ...)`).

Saved in the standard processor files (`processor_config.json` holding every modality's processor, the tokenizer's
files, `chat_template.jinja`) plus the model's `config.json`, with this file copied next to them, so that
`AutoProcessor.from_pretrained(stage, trust_remote_code=True)` rebuilds it without this project.
"""

import os
import re
from typing import Any

import numpy as np
import torch
import transformers
from transformers import BatchFeature, ProcessorMixin
from transformers.audio_utils import load_audio
from transformers.image_utils import load_image
from transformers.utils import is_torchvision_available
from transformers.video_utils import load_video

from .configuration_mera import MODALITY_KINDS, MeraConfig, MeraModalityConfig

# Chat messages hold content parts ({"type": "image"}, {"type": "text", "text": ...}); this prelude turns each message
# into text with the modality placeholders, then the rest of the template (the LLM's own, or the plain one below)
# renders plain string messages. `media_placeholders` (content type -> placeholder) is passed by the processor; a
# template rendered elsewhere falls back to '<type>', the default placeholder.
CONTENT_PARTS_PRELUDE = r"""{%- set rendered = namespace(messages=[]) -%}
{%- for message in messages -%}
    {%- if message['content'] is string -%}
        {%- set content = message['content'] -%}
    {%- else -%}
        {%- set parts = namespace(text='') -%}
        {%- for part in message['content'] -%}
            {%- if part['type'] == 'text' -%}
                {%- set piece = part['text'] -%}
            {%- elif media_placeholders is defined and part['type'] in media_placeholders -%}
                {%- set piece = media_placeholders[part['type']] -%}
            {%- else -%}
                {%- set piece = '<' ~ part['type'] ~ '>' -%}
            {%- endif -%}
            {%- set parts.text = parts.text ~ ('\n' if not loop.first else '') ~ piece -%}
        {%- endfor -%}
        {%- set content = parts.text -%}
    {%- endif -%}
    {%- set rendered.messages = rendered.messages + [{'role': message['role'], 'content': content}] -%}
{%- endfor -%}
{%- set messages = rendered.messages -%}
"""
# For a base LLM: the format the stages are trained in (prompt, then " answer" and EOS), one turn after another.
PLAIN_TEMPLATE = r"""{%- for message in messages -%}
    {%- if message['role'] == 'assistant' -%}
        {{- ' ' ~ message['content'] ~ (eos_token or '') -}}
    {%- else -%}
        {{- message['content'] -}}
    {%- endif -%}
{%- endfor -%}
"""
MEDIA_KEYWORDS = {"image": "images", "video": "videos", "audio": "audio", "point_cloud": "point_clouds"}


def mera_chat_template(llm_chat_template: str | None = None) -> str:
    """The processor's chat template: content parts to placeholders, then the LLM's template (or the plain one)."""
    if llm_chat_template and llm_chat_template.startswith(CONTENT_PARTS_PRELUDE):
        return llm_chat_template
    return CONTENT_PARTS_PRELUDE + (llm_chat_template or PLAIN_TEMPLATE)


class MeraBatch(BatchFeature):
    """A processed batch: `input_ids`, `attention_mask`, optional `labels` and `modality_inputs` (one per modality)."""

    def to(self, *args, **kwargs) -> "MeraBatch":
        """`BatchFeature.to` (device and/or floating-point dtype), also for the tensors inside `modality_inputs`."""
        moved = {}
        for key, value in self.data.items():
            if isinstance(value, dict):
                moved[key] = MeraBatch(value).to(*args, **kwargs).data
            else:
                moved[key] = BatchFeature({key: value}).to(*args, **kwargs)[key]
        self.data = moved
        return self


def resample(waveform: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a mono waveform with soxr (high quality), as transformers' own audio loading does (its `audio` extra).

    soxr is needed only when a clip's rate differs from the feature extractor's; mera-mcl declares it, and a model
    loaded from the Hub without mera-mcl asks for it then. (Inside `try` so that transformers' remote-code import
    check does not demand it of every user.)
    """
    if orig_rate == target_rate:
        return waveform
    try:
        import soxr
    except ImportError:
        raise ImportError(
            f"Resampling audio from {orig_rate} Hz to {target_rate} Hz needs the `soxr` package: pip install soxr"
        ) from None
    return soxr.resample(np.asarray(waveform, dtype=np.float32), orig_rate, target_rate, quality="HQ")


def normalize_point_cloud(points: np.ndarray, num_points: int, rng: np.random.Generator) -> np.ndarray:
    """Centre xyz on the centroid, scale into the unit sphere, and sample exactly `num_points` points."""
    points = np.asarray(points, dtype=np.float32)
    xyz = points[:, :3] - points[:, :3].mean(axis=0)
    radius = np.linalg.norm(xyz, axis=1).max()
    points = np.concatenate([xyz / radius if radius > 0 else xyz, points[:, 3:]], axis=1)
    replace = len(points) < num_points
    return points[rng.choice(len(points), num_points, replace=replace)]


class MeraProcessor(ProcessorMixin):
    """
    Tokenizer + per-modality feature preparation for a [`MeraForCausalLM`].

    Args:
        tokenizer: the LLM's tokenizer.
        config: the model's `MeraConfig` (the single source of placeholders and token counts).
        modality_processors: modality name -> its transformers processor (an image processor for 'image' and
            'video', a feature extractor for 'audio'; 'point_cloud' needs none), or its `to_dict()` form.
        use_chat_template: render text prompts given to `__call__` as a one-turn chat with the chat template (for
            instruction-tuned LLMs).
        seed: seed of the point-sampling generator, so that a cloud is always sampled the same way.
        chat_template: a Jinja template for `apply_chat_template`; by default the LLM tokenizer's own template (or a
            plain one for base LLMs) behind a prelude that turns modality content parts into placeholders.

    Example:

    ```python
    >>> processor = AutoProcessor.from_pretrained("org/mera-4mod", revision="stage-4", trust_remote_code=True)
    >>> messages = [{"role": "user", "content": [{"type": "image", "image": picture}, {"type": "audio", "audio": wave},
    ...                                          {"type": "text", "text": "What do you see and hear?"}]}]
    >>> inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
    ...                                        return_dict=True, return_tensors="pt")
    ```
    """

    def __init__(
        self,
        tokenizer=None,
        config: MeraConfig | None = None,
        modality_processors: dict[str, Any] | None = None,
        use_chat_template: bool = False,
        seed: int = 0,
        chat_template: str | None = None,
    ):
        if config is None:
            raise ValueError("MeraProcessor needs the model's MeraConfig (`config=`): it defines the placeholders")
        self.config = config
        self.modality_processors = {
            name: _feature_processor_from_dict(name, processor) if isinstance(processor, dict) else processor
            for name, processor in (modality_processors or {}).items()
        }
        self.use_chat_template = use_chat_template
        self.seed = seed
        unknown = sorted(set(self.modality_processors) - set(config.modalities))
        if unknown:
            raise ValueError(
                f"processors given for unknown modalities {unknown}; the config has {list(config.modalities)}"
            )
        if chat_template is None:
            chat_template = mera_chat_template(getattr(tokenizer, "chat_template", None))
        super().__init__(tokenizer, chat_template=chat_template)

    def add_modality(self, name: str, processor: Any | None = None):
        """Register the feature processor of a modality that was just added to the model's config."""
        self.config.modality(name)
        if processor is not None:
            self.modality_processors[name] = processor

    def num_tokens(self, modality: str) -> int:
        return self.config.modality(modality).num_tokens

    # --- chat ---------------------------------------------------------------------------------------------------
    @property
    def media_placeholders(self) -> dict[str, str]:
        """Chat content type -> placeholder: every modality's name, and each kind that only one modality has."""
        placeholders = {}
        for kind in MODALITY_KINDS:
            names = [name for name, modality in self.config.modalities.items() if modality["kind"] == kind]
            if len(names) == 1:
                placeholders[kind] = self.config.modalities[names[0]]["placeholder"]
        placeholders.update({name: modality["placeholder"] for name, modality in self.config.modalities.items()})
        return placeholders

    def modality_of_content_type(self, content_type: str) -> str:
        """The modality a chat content part (or a `images=`/`audio=`... keyword) of this type belongs to."""
        if content_type in self.config.modalities:
            return content_type
        names = [name for name, modality in self.config.modalities.items() if modality["kind"] == content_type]
        if len(names) != 1:
            raise ValueError(
                f"content of type {content_type!r} matches {len(names)} modalities of this model "
                f"({list(self.config.modalities)}); use a modality name as the type"
            )
        return names[0]

    def apply_chat_template(self, conversation, chat_template: str | None = None, **kwargs):
        """
        `ProcessorMixin.apply_chat_template` for messages whose content parts are text or a modality
        (`{"type": "image", "image": ...}`, `"video"`, `"audio"`, `"point_cloud"`, or a modality's name), each item
        given under its type's key (or "url"/"path" for files). With `tokenize=True, return_dict=True` it returns
        the model inputs (`MeraBatch`), placeholders expanded.
        """
        if "media_placeholders" in self._resolve_chat_template(chat_template):
            kwargs.setdefault("media_placeholders", self.media_placeholders)
        # The rendered text is the chat already: `__call__` must not wrap it again.
        kwargs["processor_kwargs"] = {**(kwargs.get("processor_kwargs") or {}), "use_chat_template": False}
        return super().apply_chat_template(conversation, chat_template, **kwargs)

    def _multimodal_inputs_from_conversations(self, conversations, audio_loading_params, load_audio_from_video=False):
        """Each conversation's media, by modality, in the order of its content parts (passed on as `media`)."""
        if load_audio_from_video:
            raise ValueError("load_audio_from_video is not supported: give the sound as its own audio content part")
        media = []
        for conversation in conversations:
            items: dict[str, list] = {}
            for message in conversation:
                content = message.get("content")
                for part in content if isinstance(content, list) else []:
                    if part.get("type") == "text":
                        continue
                    name = self.modality_of_content_type(part["type"])
                    keys = (part["type"], name, "url", "path")
                    value = next((part[key] for key in keys if part.get(key) is not None), None)
                    if value is None:
                        raise ValueError(f"a {part['type']!r} content part holds no item under any of {list(keys)}")
                    items.setdefault(name, []).append(self._load_item(name, value))
            media.append(items)
        return [], [], [], {"media": media}

    def _load_item(self, name: str, item: Any) -> Any:
        """A media file or URL read into what `prepare_modality` takes; anything else is passed on as it is."""
        if not isinstance(item, (str, os.PathLike)):
            return item
        item = str(item)
        kind = self.config.modalities[name]["kind"]
        if kind == "image":
            return load_image(item)
        if kind == "audio":
            rate = getattr(self.modality_processors.get(name), "sampling_rate", None)
            rate = rate or self.config.modalities[name]["sampling_rate"]
            return load_audio(item, sampling_rate=rate), rate
        if kind == "video":
            return load_video(item)[0]
        if item.endswith(".npy"):
            return np.load(item)
        raise ValueError(f"{item}: point clouds are read from .npy files here; pass other formats as arrays")

    # --- text ---------------------------------------------------------------------------------------------------
    def _placeholder_pattern(self) -> re.Pattern:
        placeholders = sorted((m["placeholder"] for m in self.config.modalities.values()), key=len, reverse=True)
        return re.compile("(" + "|".join(re.escape(p) for p in placeholders) + ")") if placeholders else None

    def format_prompt(self, prompt: str) -> str:
        """A text prompt as a one-turn chat rendered with the chat template (placeholders stay as they are)."""
        messages = [{"role": "user", "content": prompt}]
        return self.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def encode_prompt(
        self, prompt: str, use_chat_template: bool | None = None, add_special_tokens: bool | None = None
    ) -> tuple[list[int], dict[str, int]]:
        """Token ids of one prompt with placeholders expanded, and how many items of each modality it names."""
        if self.use_chat_template if use_chat_template is None else use_chat_template:
            prompt = self.format_prompt(prompt)
        if add_special_tokens is None:
            # A chat template that writes the BOS itself, as transformers' processors decide it.
            bos_token = self.tokenizer.bos_token
            add_special_tokens = not (bos_token is not None and prompt.startswith(bos_token))
        by_placeholder = {m["placeholder"]: name for name, m in self.config.modalities.items()}
        pattern = self._placeholder_pattern()
        pieces = pattern.split(prompt) if pattern else [prompt]
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

    def prepare_modality(self, name: str, items: list[Any], sampling_rate: int | None = None) -> torch.Tensor:
        """Model-ready inputs for a list of raw items of modality `name` (audio without a rate at `sampling_rate`)."""
        modality = self.config.modality(name)
        if modality.kind == "image":
            images = [_load_image(item) for item in items]
            return self._feature_processor(name)(images=images, return_tensors="pt")["pixel_values"]
        if modality.kind == "video":
            clips = [self._sample_frames(item, modality) for item in items]
            processor = self._feature_processor(name)
            return torch.stack([processor(images=frames, return_tensors="pt")["pixel_values"] for frames in clips])
        if modality.kind == "audio":
            return self._prepare_audio(name, items, modality, sampling_rate)
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

    def _prepare_audio(
        self, name: str, items: list[Any], modality: MeraModalityConfig, sampling_rate: int | None = None
    ) -> torch.Tensor:
        extractor = self._feature_processor(name)
        target_rate = getattr(extractor, "sampling_rate", modality.sampling_rate)
        waveforms = []
        for item in items:
            waveform, rate = _audio_array(item, default_rate=sampling_rate or target_rate)
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
        text: str | list[str] | None = None,
        media: dict[str, Any] | list[dict[str, Any] | None] | None = None,
        answers: str | list[str] | None = None,
        padding_side: str | None = None,
        max_length: int | None = None,
        *,
        images: Any = None,
        videos: Any = None,
        audio: Any = None,
        point_clouds: Any = None,
        sampling_rate: int | None = None,
        use_chat_template: bool | None = None,
        add_special_tokens: bool | None = None,
        padding: bool | str = True,
        return_tensors: str | None = None,
    ) -> MeraBatch:
        """
        Tokenise prompts (and answers, for training) and prepare their media.

        Args:
            text: prompt(s) with placeholders, e.g. "<image>\\nDescribe the image."
            media: per prompt, a dict modality -> item (or a list of items, one per placeholder), or None. An item
                is an image (PIL, array or path), a video clip (array `(frames, H, W, C)`), audio (waveform,
                `(waveform, rate)` or `{"array", "sampling_rate"}`) or a point cloud (array `(points, channels)`).
            answers: per prompt, the target text; then `labels` are returned with the prompt masked out (-100).
            padding_side: "right" (training) or "left" (batched generation); by default the tokenizer's.
            max_length: cut answers so that no sequence is longer; a prompt longer than this is an error.
            images, videos, audio, point_clouds: instead of `media`, transformers' way: the items of the modality
                of that kind, in the order of their placeholders over the batch (nested lists per prompt allowed).
            sampling_rate: the rate of audio waveforms given without one (default: the feature extractor's).
            use_chat_template: override `self.use_chat_template` for this call.
            add_special_tokens: add the tokenizer's BOS; by default unless the (rendered) prompt starts with it.
            padding, return_tensors: accepted for transformers' callers; batches are always padded torch tensors.

        Returns a `MeraBatch` with `input_ids`, `attention_mask`, `modality_inputs` (and `labels`).
        """
        if text is None:
            raise ValueError("MeraProcessor needs `text`: the prompt(s), with a placeholder per modality item")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"MeraProcessor returns torch tensors (return_tensors='pt'), got {return_tensors!r}")
        if padding not in (True, "longest"):
            raise ValueError(f"MeraProcessor pads every batch to its longest sequence, got padding={padding!r}")
        texts = [text] if isinstance(text, str) else list(text)
        by_kind = {kind: items for kind, items in zip(MEDIA_KEYWORDS, (images, videos, audio, point_clouds))}
        by_kind = {kind: items for kind, items in by_kind.items() if items is not None}
        if by_kind and media is not None:
            raise ValueError("give the media either as `media` or as images/videos/audio/point_clouds, not both")
        media_list = [media] if isinstance(media, dict) or (media is None and isinstance(text, str)) else media
        media_list = media_list if media_list is not None else [None] * len(texts)
        answer_list = [answers] if isinstance(answers, str) else answers
        if len(media_list) != len(texts) or (answer_list is not None and len(answer_list) != len(texts)):
            raise ValueError(
                f"got {len(texts)} prompts, {len(media_list)} media entries"
                + (f" and {len(answer_list)} answers" if answer_list is not None else "")
                + "; they must match"
            )
        padding_side = padding_side or self.tokenizer.padding_side
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")

        sequences, label_sequences = [], []
        items_by_modality: dict[str, list[Any]] = {}
        total_counts: dict[str, int] = {}
        for index, (prompt, sample_media) in enumerate(zip(texts, media_list)):
            prompt_ids, counts = self.encode_prompt(prompt, use_chat_template, add_special_tokens)
            for name, count in counts.items():
                total_counts[name] = total_counts.get(name, 0) + count
            sample_media = {} if by_kind else (sample_media or {})
            for name in sorted(set(counts) | set(sample_media)):
                if name not in self.config.modalities:
                    raise ValueError(
                        f"sample {index}: unknown modality {name!r}; known: {list(self.config.modalities)}"
                    )
                if by_kind:
                    continue
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
        for kind, items in by_kind.items():
            name = self.modality_of_content_type(kind)
            items = _flatten(items)
            placeholder = self.config.modalities[name]["placeholder"]
            if len(items) != total_counts.get(name, 0):
                raise ValueError(
                    f"the prompts have {total_counts.get(name, 0)} {placeholder} placeholder(s) but {len(items)} "
                    f"{MEDIA_KEYWORDS[kind]} were given"
                )
            items_by_modality[name] = items

        batch = MeraBatch(self.pad(sequences, label_sequences if answer_list is not None else None, padding_side))
        batch["modality_inputs"] = {
            name: self.prepare_modality(name, items, sampling_rate) for name, items in items_by_modality.items()
        }
        return batch

    def pad(self, sequences: list[list[int]], labels: list[list[int]] | None, padding_side: str) -> dict:
        """Pad token id sequences (and their labels, with -100) to one length: `input_ids`, `attention_mask`."""
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

    # --- save / load --------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """`processor_config.json`: settings and every modality's processor; the config goes to `config.json`."""
        output = super().to_dict()
        output.pop("config", None)
        output["modality_processors"] = {
            name: processor.to_dict() for name, processor in self.modality_processors.items()
        }
        return output

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> list[str]:
        """The standard processor files (tokenizer, `processor_config.json`, chat template) and the `config.json`."""
        files = super().save_pretrained(save_directory, **kwargs)
        self.config.save_pretrained(save_directory)
        return files

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> "MeraProcessor":
        """Load from a folder or a Hub repo (`revision=...`): tokenizer, config and every modality processor."""
        if kwargs.get("config") is None:
            hub_keys = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")
            hub_kwargs = {key: kwargs[key] for key in hub_keys if key in kwargs}
            kwargs["config"] = MeraConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        # The tokenizer is loaded with this config, so AutoTokenizer does not resolve (and ask to trust) it again.
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)


def _feature_processor_from_dict(name: str, settings: dict) -> Any:
    """An image processor or feature extractor from its `to_dict()` form, as `processor_config.json` stores it."""
    class_name = settings.get("image_processor_type") or settings.get("feature_extractor_type")
    if class_name is None:
        raise ValueError(
            f"modality_processors[{name!r}] needs an 'image_processor_type' or 'feature_extractor_type', got keys "
            f"{sorted(settings)}"
        )
    if "image_processor_type" in settings and not is_torchvision_available():
        # transformers saves an image processor under its torchvision class name even when the PIL class
        # (`CLIPImageProcessorPil`) was used; without torchvision, load that PIL class (else transformers falls back
        # to it with a warning).
        pil_class = getattr(transformers, f"{class_name}Pil", None)
        if pil_class is not None:
            return pil_class.from_dict(settings)
    return ProcessorMixin.get_possibly_dynamic_module(class_name).from_dict(settings)


def _flatten(items: Any) -> list[Any]:
    """Items given transformers' way: one item, a list of items, or a list of lists (one per prompt)."""
    if not isinstance(items, list):
        return [items]
    return [item for entry in items for item in (_flatten(entry) if isinstance(entry, list) else [entry])]


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
