"""
The data of a continual run: samples, each a whole conversation (`samples`; rendered and encoded by
`conversations`), media readers and converters of media files (`media`), the collator (`collator`), the replay
buffer kept with every stage (`replay`), and the converters of the paper's public data sets (`converters`,
imported on its own).

The names below are imported on first use (PEP 562), so that `mera data --help`, which lists the converters, does
not load `datasets` (1.5-2 s) for them.
"""

import importlib

_EXPORTS = {
    "MeraDataCollator": "collator",
    "conversation_from_row": "conversations",
    "encode_samples": "conversations",
    "render_conversation": "conversations",
    "MediaError": "media",
    "read_media": "media",
    "read_video": "media",
    "read_wav": "media",
    "ReplayBuffer": "replay",
    "replay_count": "replay",
    "sample_replay": "replay",
    "LLAVA_MODALITY_KEYS": "samples",
    "TASKS": "samples",
    "check_media_files": "samples",
    "load_samples": "samples",
    "sample_from_row": "samples",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
