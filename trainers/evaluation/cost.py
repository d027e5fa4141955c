"""
What a run costs, measured on whatever hardware runs it (the paper's Table 6): peak memory of a block of work, and
the per-token generation latency of a model.

- On a CUDA device, peak memory is torch's peak allocated memory (`torch.cuda.max_memory_allocated`), reset when the
  block starts.
- On a CPU, it is the process's peak resident set size (Linux `VmHWM`), reset when the block starts through
  `/proc/self/clear_refs`; where that is not possible, the peak since the process started (`ru_maxrss`).
"""

import re
import resource
import sys
import time
from pathlib import Path

import torch

__all__ = ["PeakMemory", "generation_latency"]

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _peak_rss_mb() -> float:
    if _STATUS.is_file():
        match = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        if match:
            return int(match.group(1)) / 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
    return peak / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _reset_peak_rss() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # Linux >= 4.0: reset the peak resident set size to the current one
        return True
    except OSError:
        return False


class PeakMemory:
    """
    Peak memory from the meter's creation on: `read()` gives `peak_memory_mb` and `memory_kind` ("cuda allocated",
    "cpu resident", or "cpu resident since start" where the peak cannot be reset).
    """

    def __init__(self):
        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            self.kind = "cuda allocated"
        else:
            self.kind = "cpu resident" if _reset_peak_rss() else "cpu resident since start"

    def read(self) -> dict:
        peak = torch.cuda.max_memory_allocated() / 2**20 if self.cuda else _peak_rss_mb()
        return {"peak_memory_mb": round(peak, 1), "memory_kind": self.kind}


@torch.no_grad()
def generation_latency(
    model, processor, samples: list[dict], new_tokens: int = 16, warmup: int = 1, clock=time.perf_counter
) -> dict:
    """
    Milliseconds per generated token of greedy decoding, one sample at a time (as in the paper's Table 6), with
    exactly `new_tokens` tokens per sample (end-of-sequence is suppressed until then). The first `warmup` samples
    are run once more beforehand and not timed. `clock`: wall-clock by default; `time.process_time` on a CPU
    shared with other work (`mera bench`).
    """
    from ..data import encode_samples  # the data stack is only needed here

    if not samples:
        raise ValueError("generation_latency needs at least one sample")
    tokenizer = processor.tokenizer
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.eval()

    def generate(sample):
        # The evaluation loop's own encoding: the conversation up to the last user turn, left-padded.
        batch = encode_samples(processor, [sample], "left", for_generation=True).to(model.device)
        output = model.generate(
            **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_token_id
        )
        return output.shape[1] - batch["input_ids"].shape[1]

    for sample in samples[:warmup]:
        generate(sample)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started, tokens = clock(), 0
    for sample in samples:
        tokens += generate(sample)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = clock() - started
    return {"ms_per_token": round(1000 * seconds / tokens, 3), "tokens": tokens, "samples": len(samples)}
