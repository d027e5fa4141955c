"""
The data of a continual run: samples (`samples`), media readers and converters of media files (`media`), the
collator (`collator`), the replay buffer kept with every stage (`replay`), and the converters of the paper's
public data sets (`converters`, imported on its own).
"""

from .collator import MeraDataCollator, prompt_with_placeholder
from .media import MediaError, read_media, read_video, read_wav
from .replay import ReplayBuffer, replay_count, sample_replay
from .samples import LLAVA_MODALITY_KEYS, TASKS, check_media_files, load_samples

__all__ = [
    "LLAVA_MODALITY_KEYS",
    "TASKS",
    "MediaError",
    "MeraDataCollator",
    "ReplayBuffer",
    "check_media_files",
    "load_samples",
    "prompt_with_placeholder",
    "read_media",
    "read_video",
    "read_wav",
    "replay_count",
    "sample_replay",
]
