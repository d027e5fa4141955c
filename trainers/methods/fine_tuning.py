"""Fine-Tuning, the paper's lower bound: plain sequential training, no merge, no realign."""

from ..plugins import StagePlugin
from .registry import register_method


@register_method("fine_tuning")
def fine_tuning(config=None) -> list[StagePlugin]:
    """Plain sequential training: no merge, no realign."""
    return []
