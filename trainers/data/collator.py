"""The collator that feeds `MeraForCausalLM`: reads a batch's media and tokenises its conversations."""

import json

import torch

from .conversations import encode_conversation, encode_samples, sample_messages
from .media import read_sample_media


def _nbytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_nbytes(item) for item in value.values())
    return 0


class MeraDataCollator:
    """
    Read a batch's media, tokenise prompts and answers with `MeraProcessor` (prompt masked out of `labels`), pad,
    and batch each modality's inputs. Batches may mix modalities.

    Each sample is read, preprocessed and tokenised once per collator (that is, once per training phase, not once
    per epoch): the result is kept in memory up to `memo_bytes`. With a `feature_cache`
    (`trainers.data.feature_cache.EncoderFeatureCache`, filled before training), a sample whose frozen encoder's
    output is stored carries those features (`{"encoder_features": ...}`) instead of its preprocessed media, and the
    model runs only the connector on it.

    The per-sample preprocessing gives the same tensors as preprocessing the whole batch at once: every feature
    processor of `MeraProcessor` treats items independently (fixed-length audio padding, one point-sampling
    generator per cloud).
    """

    def __init__(
        self,
        processor,
        max_length: int | None = None,
        padding_side: str = "right",
        feature_cache=None,
        memo_bytes: int = 1024**3,
    ):
        self.processor = processor
        self.max_length = max_length
        self.padding_side = padding_side
        self.feature_cache = feature_cache
        self.memo_bytes = memo_bytes
        self._memo: dict[tuple, tuple] = {}
        self._memo_size = 0

    def _key(self, sample: dict) -> str | None:
        if sample.get("media") is not None and not isinstance(sample["media"], str):
            return None  # in-memory media: hashing it would cost about as much as preparing it
        return json.dumps(sample, sort_keys=True, default=str)

    def _prepare(self, sample: dict) -> tuple[list[int], list[int], str | None, object]:
        """One sample's token ids, labels, modality (None: text only) and model input (features or media)."""
        key = self._key(sample)
        if key is not None and key in self._memo:
            return self._memo[key]
        modality = sample.get("modality") if sample.get("media") is not None else None
        features = None
        if modality is not None and self.feature_cache is not None:
            features = self.feature_cache.lookup(sample)
        if features is not None:
            # The encoder's output is stored: the media need not be read; only the conversation is tokenised.
            ids, labels = self._tokenize(sample)
            prepared = (ids, labels, modality, {"encoder_features": features.unsqueeze(0)})
        else:
            batch = encode_samples(self.processor, [sample], self.padding_side, max_length=self.max_length)
            model_input = batch["modality_inputs"].get(modality) if modality is not None else None
            prepared = (batch["input_ids"][0].tolist(), batch["labels"][0].tolist(), modality, model_input)
        size = _nbytes(prepared[3]) + 16 * len(prepared[0])
        if key is not None and self._memo_size + size <= self.memo_bytes:
            self._memo[key] = prepared
            self._memo_size += size
        return prepared

    def _tokenize(self, sample: dict) -> tuple[list[int], list[int]]:
        """Token ids and labels of one sample with media, as `encode_samples` makes them."""
        config = self.processor.config
        ids, labels, counts = encode_conversation(self.processor, sample_messages(config, sample))
        if counts != {sample["modality"]: 1}:
            raise ValueError(f"sample {sample.get('id', '?')}: its conversation names media {dict(counts)}")
        if self.max_length is not None and len(ids) > self.max_length:
            token = config.modality(sample["modality"]).placeholder_token_id
            if ids[: self.max_length].count(token) != ids.count(token):
                raise ValueError(f"sample {sample.get('id', '?')}: max_length {self.max_length} would cut its media")
            ids, labels = ids[: self.max_length], labels[: self.max_length]
        return ids, labels

    def sample_length(self, sample: dict) -> int:
        """The sample's length in tokens, media placeholders expanded (what batching by length groups on): the
        conversation is tokenised, the media is not read."""
        if sample.get("media") is not None:
            return len(self._tokenize(sample)[0])
        ids, _, _ = encode_conversation(self.processor, sample_messages(self.processor.config, sample))
        return len(ids) if self.max_length is None else min(len(ids), self.max_length)

    def __call__(self, samples: list[dict]) -> dict:
        prepared = [self._prepare(sample) for sample in samples]
        batch = self.processor.pad(
            [ids for ids, _, _, _ in prepared], [labels for _, labels, _, _ in prepared], self.padding_side
        )
        by_modality: dict[str, list[int]] = {}
        for index, (_, _, modality, _) in enumerate(prepared):
            if modality is not None:
                by_modality.setdefault(modality, []).append(index)
        batch["modality_inputs"] = {}
        for name, indices in by_modality.items():
            inputs = [prepared[index][3] for index in indices]
            cached = [isinstance(item, dict) and "encoder_features" in item for item in inputs]
            if any(cached) and not all(cached):
                # Some items did not fit in the feature cache: this batch encodes all of this modality's items.
                settings = self.processor.config.modalities[name]
                media = [read_sample_media(samples[index]["media"], settings) for index in indices]
                batch["modality_inputs"][name] = self.processor.prepare_modality(name, media)
            elif all(cached):
                batch["modality_inputs"][name] = {
                    "encoder_features": torch.cat([i["encoder_features"] for i in inputs])
                }
            else:
                batch["modality_inputs"][name] = _concatenate(inputs)
        return batch


def _concatenate(inputs: list):
    """One modality's per-sample preprocessed inputs (tensors, or dicts of tensors) as one batch."""
    if isinstance(inputs[0], dict):
        return {key: torch.cat([item[key] for item in inputs]) for key in inputs[0]}
    return torch.cat(inputs)
