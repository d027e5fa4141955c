"""
EProj, the paper's parameter-isolation baseline: only modality-specific parts learn. Every stage pre-trains and then
fine-tunes its new connector (on captions, then captions + QA); the LLM is frozen from stage 1 on, so it stays the
pre-trained language model bit for bit, and each modality keeps its own connector.
"""

from ..plugins import StageContext, StagePlugin
from .registry import register_method


class EProjPlugin(StagePlugin):
    """Fine-tuning trains the new connector only: no LoRA, no LLM weight."""

    name = "eproj"
    # The connector is EProj's only modality-specific part; a second task on the same modality would retrain it,
    # overwriting the first task's: that is fine-tuning of a shared part, not isolation, so such a plan is refused.
    supports_task_stages = False

    def configure_finetune(self, ctx: StageContext):
        ctx.peft_config = None
        ctx.finetune_trainable = ["connector:new"]


@register_method("eproj")
def eproj(config=None) -> list[StagePlugin]:
    """Modality-specific parts only; the LLM never trains."""
    return [EProjPlugin()]
