"""
A disk cache of frozen-encoder outputs, so that a media item is encoded once per run instead of once per epoch and
per phase.

A modality's frozen encoder maps the same preprocessed item to the same features every time, so its output can be
stored and fed to the connector directly (`MeraForCausalLM` takes `{"encoder_features": ...}` in place of a
modality's raw inputs). Exactness rests on three rules:

- Keys: a modality's entries live in a folder named by a hash of its encoder's weights (every tensor of its state
  dict, bytes and shape), the encoder-side settings of its `MeraModalityConfig` (feature layer, selection, frame
  pooling, ...), its feature processor's settings and the processor's point-sampling seed. Changing any of them
  changes the folder: stale entries are never read, and are evicted first when the cache is full.
- Items are identified by their media: a file by its resolved path, size and modification time; an in-memory array
  by a hash of its bytes.
- Only deterministic encoders are cached: frozen, with no dropout and no batch statistics (a module that behaves
  differently in training mode would make the cached features differ from the ones training sees).

Features are computed in the cache's `fill` by the model's own `encode_modality` on batches of `batch_size` items,
in evaluation mode without gradients, and saved in the encoder's dtype. The cache is bounded (`max_bytes`): when a
new entry does not fit, the least recently written files are deleted first. Cost per item on disk: tokens x encoder
hidden size x bytes per value (+ ~1 KB of file overhead), e.g. CLIP ViT-L/14-336 in bf16: 576 x 1024 x 2 B = 1.2 MB;
the demo's image encoder in fp32: 16 x 64 x 4 B = 4 KB.
"""

import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .media import read_sample_media

FILL_BATCH_SIZE = 16
# Entries read or written in this process, so that the phases and stages of one run read each file once
# (`torch.load` costs more than a small entry's connector step). Files are immutable: their names hash content.
_MEMORY: "OrderedDict[Path, torch.Tensor]" = OrderedDict()
_MEMORY_BYTES = [0]
MEMORY_LIMIT = 512 * 1024**2


def _remember(path: Path, features: torch.Tensor):
    if path in _MEMORY:
        return
    _MEMORY[path] = features
    _MEMORY_BYTES[0] += features.numel() * features.element_size()
    while _MEMORY_BYTES[0] > MEMORY_LIMIT and _MEMORY:
        _, dropped = _MEMORY.popitem(last=False)
        _MEMORY_BYTES[0] -= dropped.numel() * dropped.element_size()


def _hash_update_tensor(digest, name: str, tensor: torch.Tensor):
    tensor = tensor.detach().to("cpu").contiguous()
    digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
    digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def encoder_fingerprint(encoder: nn.Module) -> str:
    """A hash of every tensor of the encoder's state dict (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in encoder.state_dict().items():
        _hash_update_tensor(digest, name, tensor)
    return digest.hexdigest()


def _settings_of(processor: Any) -> Any:
    """A feature processor's settings as JSON-able data (transformers processors have `to_dict`)."""
    if processor is None:
        return None
    if hasattr(processor, "to_dict"):
        return processor.to_dict()
    return repr(processor)


# Where a config or processor was loaded from: no part of what it computes (a stage saved and loaded again, or a
# fresh modality's processor and the same processor read back from the stage, hash alike).
PROVENANCE_KEYS = ("_name_or_path", "_commit_hash")


def _without_provenance(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_provenance(v) for k, v in value.items() if k not in PROVENANCE_KEYS}
    if isinstance(value, (list, tuple)):
        return [_without_provenance(item) for item in value]
    return value


def preprocessing_fingerprint(processor, name: str) -> str:
    """A hash of everything between a media item and its features except the encoder's weights."""
    modality = dict(processor.config.modalities[name])
    settings = {
        "modality": {key: value for key, value in modality.items() if key not in ("connector", "placeholder")},
        "feature_processor": _settings_of(processor.modality_processors.get(name)),
        "seed": getattr(processor, "seed", None),
    }
    settings = _without_provenance(json.loads(json.dumps(settings, default=str)))
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def media_key(media: Any) -> str:
    """A media item's identity: a file by path, size and modification time; an array by a hash of its bytes."""
    if isinstance(media, (str, os.PathLike)):
        path = Path(media).resolve()
        stat = path.stat()
        identity = f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    else:
        array = torch.as_tensor(media) if not isinstance(media, torch.Tensor) else media
        digest = hashlib.sha256()
        _hash_update_tensor(digest, "array", array)
        identity = f"array:{digest.hexdigest()}"
    return hashlib.sha256(identity.encode()).hexdigest()[:32]


def training_invariant(encoder: nn.Module) -> bool:
    """
    Whether the encoder computes the same in training and evaluation mode: no dropout and no batch statistics once it
    is put in training mode (a frozen Point-BERT keeps its batch norms in evaluation mode: that one is invariant).
    """
    was_training = encoder.training
    encoder.train(True)
    try:
        for module in encoder.modules():
            if isinstance(module, nn.Dropout) and module.p > 0 and module.training:
                return False
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
                return False
    finally:
        encoder.train(was_training)
    config = getattr(encoder, "config", None)
    if config is not None:
        for key, value in config.to_dict().items():
            if ("dropout" in key or "layerdrop" in key) and isinstance(value, (int, float)) and value > 0:
                return False
    return True


class EncoderFeatureCache:
    """
    Frozen-encoder outputs on disk, one file per (encoder, preprocessing, media item), at most `max_bytes` in all.

    `fill(model, processor, samples)` encodes the items not stored yet; `lookup(processor, sample)` returns the
    stored features `(tokens, encoder hidden size)` of a sample's media, or None (a modality that is not cached,
    or an item that did not fit).
    """

    def __init__(self, root: str | os.PathLike, max_bytes: int = 2 * 1024**3, batch_size: int = FILL_BATCH_SIZE):
        if max_bytes <= 0:
            raise ValueError(f"the feature cache's max_bytes must be positive, got {max_bytes}")
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.batch_size = batch_size
        self.namespaces: dict[str, str] = {}  # modality -> folder name, for the modalities whose encoder is cached
        self.hits = 0
        self.misses = 0
        self.encoded = 0

    # --- keys ---------------------------------------------------------------------------------------------------
    def namespace(self, model, processor, name: str) -> str | None:
        """The folder of modality `name`'s entries, or None when its encoder may not be cached."""
        encoder = model.encoders[name]
        if any(parameter.requires_grad for parameter in encoder.parameters()) or not training_invariant(encoder):
            return None
        key = hashlib.sha256(
            f"{encoder_fingerprint(encoder)}:{preprocessing_fingerprint(processor, name)}".encode()
        ).hexdigest()
        return f"{name}-{key[:24]}"

    def _path(self, name: str | None, media: Any) -> Path | None:
        namespace = self.namespaces.get(name) if media is not None else None
        return None if namespace is None else self.root / namespace / f"{media_key(media)}.pt"

    # --- reading ------------------------------------------------------------------------------------------------
    def lookup(self, sample: dict) -> torch.Tensor | None:
        path = self._path(sample.get("modality"), sample.get("media"))
        if path is None:
            return None
        features = _MEMORY.get(path)
        if features is None:
            try:
                features = torch.load(path, map_location="cpu", weights_only=True)
            except FileNotFoundError:
                self.misses += 1
                return None
            _remember(path, features)
        self.hits += 1
        return features

    # --- writing ------------------------------------------------------------------------------------------------
    def _usage(self) -> list[tuple[float, int, Path]]:
        return [
            (entry.stat().st_mtime, entry.stat().st_size, entry)
            for entry in self.root.glob("*/*.pt")
            if entry.is_file()
        ]

    def _make_room(self, needed: int, usage: list[tuple[float, int, Path]]) -> bool:
        """Delete the least recently written entries until `needed` more bytes fit; False if they never can."""
        if needed > self.max_bytes:
            return False
        total = sum(size for _, size, _ in usage)
        usage.sort()
        while usage and total + needed > self.max_bytes:
            _, size, path = usage.pop(0)
            path.unlink(missing_ok=True)
            dropped = _MEMORY.pop(path, None)
            if dropped is not None:
                _MEMORY_BYTES[0] -= dropped.numel() * dropped.element_size()
            total -= size
        return total + needed <= self.max_bytes

    def _write(self, path: Path, features: torch.Tensor, usage: list) -> bool:
        features = features.detach().to("cpu").contiguous().clone()
        needed = features.numel() * features.element_size() + 1024
        if not self._make_room(needed, usage):
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        torch.save(features, temporary)
        os.replace(temporary, path)  # atomic: a concurrent reader sees the whole entry or none
        _remember(path, features)
        usage.append((path.stat().st_mtime, path.stat().st_size, path))
        return True

    @torch.no_grad()
    def fill(
        self, model, processor, samples: Iterable[dict], process_index: int = 0, num_processes: int = 1
    ) -> dict[str, int]:
        """
        Encode every media item of `samples` that is not stored yet, for the modalities whose encoder may be
        cached. Returns the number of items this process encoded per modality. Under several processes, each
        encodes every `num_processes`-th missing item (in path order) and the caller waits for all of them before
        reading: the items are encoded once, not once per process.
        """
        from modeling_mera.encoders import encode_modality

        samples = list(samples)
        for name in sorted({s["modality"] for s in samples if s.get("media") is not None}):
            if name in model.encoders and name not in self.namespaces:
                namespace = self.namespace(model, processor, name)
                if namespace is not None:
                    self.namespaces[name] = namespace
        wanted: dict[str, dict[Path, Any]] = {}
        for sample in samples:
            path = self._path(sample.get("modality"), sample.get("media"))
            if path is not None:
                wanted.setdefault(sample["modality"], {})[path] = sample["media"]
        pending: dict[str, dict[Path, Any]] = {}
        for name, items in wanted.items():
            # Each item's process is fixed by its place among all the items, not among the missing ones, which a
            # process that looks later would count differently.
            share = sorted(items.items())[process_index::num_processes]
            missing = {path: media for path, media in share if not path.exists()}
            if missing:
                pending[name] = missing
        usage = self._usage() if pending else []
        encoded = {}
        for name, items in pending.items():
            encoder = model.encoders[name]
            modality = model.config.modality(name)
            settings = processor.config.modalities[name]
            was_training = encoder.training
            encoder.eval()
            device = next(encoder.parameters()).device
            try:
                entries = list(items.items())
                for start in range(0, len(entries), self.batch_size):
                    chunk = entries[start : start + self.batch_size]
                    inputs = processor.prepare_modality(
                        name, [read_sample_media(media, settings) for _, media in chunk]
                    )
                    inputs = (
                        {key: value.to(device) for key, value in inputs.items()}
                        if isinstance(inputs, dict)
                        else inputs.to(device)
                    )
                    features = encode_modality(name, encoder, modality, inputs)
                    for (path, _), item_features in zip(chunk, features):
                        if not self._write(path, item_features, usage):
                            break
                    encoded[name] = encoded.get(name, 0) + len(chunk)
            finally:
                encoder.train(was_training)
        self.encoded += sum(encoded.values())
        return encoded
