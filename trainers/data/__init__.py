"""
The data of a continual run: samples, each a whole conversation (`samples`; rendered and encoded by
`conversations`), media readers and converters of media files (`media`), the collator (`collator`), the replay
buffer kept with every stage (`replay`), and the converters of the paper's public data sets (`converters`,
imported on its own).
"""

from .collator import MeraDataCollator
from .conversations import conversation_from_row, encode_samples, render_conversation
from .media import MediaError, read_media, read_video, read_wav
from .replay import ReplayBuffer, replay_count, sample_replay
from .samples import LLAVA_MODALITY_KEYS, TASKS, check_media_files, load_samples, sample_from_row

__all__ = [
    "LLAVA_MODALITY_KEYS",
    "TASKS",
    "MediaError",
    "MeraDataCollator",
    "ReplayBuffer",
    "check_media_files",
    "conversation_from_row",
    "encode_samples",
    "load_samples",
    "render_conversation",
    "read_media",
    "read_video",
    "read_wav",
    "replay_count",
    "sample_from_row",
    "sample_replay",
]
