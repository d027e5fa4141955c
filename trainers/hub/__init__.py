"""The Hugging Face Hub: a stage's model card (`card`) and publishing a run, one branch per stage (`push`)."""

from .card import CARD_TEMPLATE_NAME, card_template_path, finished_stages, render_model_card, stage_score_matrix
from .push import (
    PUSH_RECORD,
    HubPushError,
    HubRevisionExistsError,
    StageUpload,
    plan_stage_upload,
    push_run,
    read_push_record,
)

__all__ = [
    "PUSH_RECORD",
    "CARD_TEMPLATE_NAME",
    "card_template_path",
    "read_push_record",
    "HubPushError",
    "HubRevisionExistsError",
    "StageUpload",
    "finished_stages",
    "stage_score_matrix",
    "render_model_card",
    "plan_stage_upload",
    "push_run",
]
