"""What a person sees while mera-mcl works.

The `mera` commands call `configure(verbose=args.verbose)`. By default that gives one labelled line per stage and
phase, each a progress bar (`stage 2/4 · video · fine-tune · mera`), and switches off what only a developer reads:
the libraries' own progress bars (transformers' "Loading weights" and "Writing model shards", datasets' map and
filter bars, huggingface_hub's transfers) and the Trainer's metric dict after every logging step (the metrics still
go to each trainer's `state.log_history`). `--verbose` brings all of them back.

Used as a library, without `configure`, mera-mcl leaves every library at its defaults.

Labels are built from fields that the loops set for what runs inside them:

```python
>>> from trainers import console
>>> with console.context(method="mera", stages=4), console.context(stage=2, modality="video"):
...     console.label(phase="fine-tune")
'stage 2/4 · video · fine-tune · mera'
```
"""

import contextlib
import contextvars
import logging

from tqdm.auto import tqdm
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

__all__ = ["configure", "is_quiet", "context", "label", "progress", "install", "StageProgressCallback"]

_FIELDS = ("stage", "stages", "modality", "phase", "method")
# The fields set so far as (name, value) pairs, later ones winning; a tuple, so that no caller can mutate it.
_context: contextvars.ContextVar[tuple] = contextvars.ContextVar("mera_console_context", default=())
_quiet = False


def configure(verbose: bool = False) -> None:
    """Quiet console (the default of the `mera` commands), or every library's own output with `verbose=True`."""
    global _quiet
    import datasets
    import huggingface_hub.utils
    import transformers

    _quiet = not verbose
    switches = (
        (transformers.utils.logging.enable_progress_bar, transformers.utils.logging.disable_progress_bar),
        (datasets.enable_progress_bars, datasets.disable_progress_bars),
        (huggingface_hub.utils.enable_progress_bars, huggingface_hub.utils.disable_progress_bars),
    )
    for enable, disable in switches:
        (enable if verbose else disable)()
    # Our own loggers speak at INFO in verbose mode; warnings always show.
    logging.getLogger("trainers").setLevel(logging.INFO if verbose else logging.WARNING)


def is_quiet() -> bool:
    return _quiet


@contextlib.contextmanager
def context(**fields):
    """Set label fields (`stage`, `stages`, `modality`, `phase`, `method`) for everything that runs inside."""
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise ValueError(f"unknown console label field(s) {sorted(unknown)}; known: {list(_FIELDS)}")
    token = _context.set((*_context.get(), *fields.items()))
    try:
        yield
    finally:
        _context.reset(token)


def label(**fields) -> str:
    """`stage 2/4 · video · fine-tune · mera` from the current context, `fields` on top; missing parts are left out."""
    values = {**dict(_context.get()), **fields}
    parts = []
    if values.get("stage") is not None:
        stages = values.get("stages")
        parts.append(f"stage {values['stage']}/{stages}" if stages else f"stage {values['stage']}")
    parts += [str(values[key]) for key in ("modality", "phase", "method") if values.get(key)]
    return " · ".join(parts)


def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def progress(iterable=None, phase: str | None = None, **kwargs):
    """A tqdm bar labelled with the current context (and `phase`), shown on the main process only; it stays on
    screen when done, as the phase's one line."""
    kwargs.setdefault("desc", label(**({"phase": phase} if phase else {})))
    kwargs["disable"] = kwargs.get("disable", False) or not _is_main_process()
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, **kwargs)


class StageProgressCallback(TrainerCallback):
    """The training phase's one line: a progress bar labelled with the stage and phase, the running loss in its
    postfix. Replaces transformers' unlabelled `ProgressCallback` and its metric dict at every logging step."""

    def __init__(self):
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, desc=label(), unit="step", dynamic_ncols=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{float(logs['loss']):.3f}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def install(trainer) -> None:
    """On a quiet console, give `trainer` the labelled one-line progress instead of transformers' bar and prints."""
    if not _quiet:
        return
    for callback in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(callback)
    trainer.add_callback(StageProgressCallback())
