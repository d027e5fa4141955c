"""
`mera bench`: where a continual run's time goes, each method side by side, on the offline benchmark.

    mera bench                                        # the paper-shaped tiny config (recipes/configs/bench.yaml)
    mera bench --config recipes/configs/demo.yaml     # the demo's sizes (longer)

Side by side in one run, with interleaved repetitions (median, min-max of process CPU seconds, one torch thread):
per-phase training time of each method (default Fine-Tuning, MERA, PathWeave: pre-train, fine-tune, merge, realign,
save, evaluation) and its peak memory; MERA's computed floor (replayed samples x passes over Fine-Tuning's) next to
the measured ratios; forward+backward and generation against transformers' `LlavaForConditionalGeneration` at
equal weights; per-token latency of each method's final model; the data path's throughput against the training
step's, per modality; the LoRA step's FLOPs, and its MFU on a GPU. Writes OUT/bench.json and OUT/bench.png
(`trainers.bench`).
"""

import argparse
import sys
from pathlib import Path

HELP = (
    "time the methods (default Fine-Tuning, MERA, PathWeave) and the model against LLaVA: per phase, MERA's floor, "
    "memory, latency, data path, the LoRA step's FLOPs (minutes on a CPU)"
)
BENCH_CONFIG = Path(__file__).with_name("configs") / "bench.yaml"


def _add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--config", default=str(BENCH_CONFIG), help="a demo-style YAML config (default: bench.yaml)")
    parser.add_argument("--out", default="mera_bench", help="output folder (default: ./mera_bench)")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: bench.methods)")
    parser.add_argument(
        "--repetitions", type=int, default=None, help="interleaved repetitions (default: bench.repetitions)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the benchmark, the language model and training")
    parser.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the device's dense peak TFLOP/s for the LoRA step's MFU (default: known for H100/H200/A100 in bf16)",
    )


def make_parser(subparsers=None, prog: str | None = None) -> argparse.ArgumentParser:
    """The `mera bench` parser, added to `subparsers` (TRL's `make_parser` pattern) or stand-alone."""
    if subparsers is None:
        parser = argparse.ArgumentParser(prog=prog, description=HELP)
    else:
        parser = subparsers.add_parser("bench", help=HELP, description=HELP, formatter_class=argparse.HelpFormatter)
    _add_arguments(parser)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    return main(parser.parse_args(argv))


def main(args: argparse.Namespace) -> int:
    from trainers.bench import format_bench, run_bench
    from trainers.demo.runs import demo_run_config, demo_settings
    from trainers.methods import METHODS

    if not Path(args.config).is_file():
        print(f"error: --config {args.config}: no such file", file=sys.stderr)
        return 2
    demo = demo_settings(args.config, quick=False)
    bench = demo["settings"].pop("bench", None) or {}
    methods = args.methods.split(",") if args.methods else list(bench.get("methods", ["fine_tuning", "mera"]))
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        print(f"error: unknown method(s) {unknown}; known methods: {sorted(METHODS)}", file=sys.stderr)
        return 2
    repetitions = args.repetitions or int(bench.get("repetitions", 3))
    if repetitions < 1:
        print(f"error: --repetitions must be >= 1, got {repetitions}", file=sys.stderr)
        return 2
    out = Path(args.out)
    print(
        f"mera bench: {', '.join(methods)} x {repetitions} interleaved repetitions on {args.config}, seed "
        f"{args.seed}, output {out}/ (process CPU seconds, one torch thread)",
        flush=True,
    )
    from trainers import console

    console.configure(verbose=False)
    demo["source"] = args.config
    base, _ = demo_run_config(out, demo, args.seed, quick=False, size="bench")
    result = run_bench(
        base,
        out,
        methods,
        repetitions=repetitions,
        test_limit=bench.get("test_limit", 8),
        new_tokens=int(bench.get("new_tokens", 8)),
        peak_tflops=args.peak_tflops,
    )
    print(format_bench(result))
    print(f"\nwrote {out / 'bench.json'} and {out / 'bench.png'} in {result['seconds']['wall']} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(make_parser(prog="recipes/bench.py")))
