"""`mera study`: the paper's experiments as one grid of continual runs, with its report (see `grid` and `report`)."""

from .grid import METHOD_LABELS, Study, StudyCell, build_grid, run_study, stage_fingerprints
from .report import write_report

__all__ = ["METHOD_LABELS", "Study", "StudyCell", "build_grid", "run_study", "stage_fingerprints", "write_report"]
