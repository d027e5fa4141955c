"""
`mera demo`: the offline four-modality benchmark on a laptop CPU.

It synthesises the benchmark (image, video, audio, point cloud; a caption and a QA data set each), pre-trains a
tiny Llama on the benchmark's text, trains the single-modality experts, then runs every method over the four
stages, evaluates every learnt modality after every stage and compares the methods:

    DIR/results.json        per method: the fields of `mera metrics --json` (Backward/Forward Relative Gain, ...)
    DIR/scores/METHOD.json  score matrices (the format `mera metrics` reads)
    DIR/relative_gain.png   progressive Backward/Forward Relative Gain per method

`mera demo --scenario domain` is MLLM-CL's setting instead: four synthetic image domains (aerial photos, scans,
road scenes, charts; QA only, `trainers.demo.domains`) learnt one after another through the one image modality,
compared with the accuracy matrix (final average, average over stages, BWT, forgetting) beside the per-domain
experts, under DIR/domain/ with `accuracy.png`.

Everything is cached under DIR: a second call reuses the benchmark, the language model, the experts and every
finished stage.
"""

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

HELP = (
    "the offline benchmarks on a CPU (minutes): four modalities, Fine-Tuning forgets and MERA keeps; with "
    "--scenario domain, MLLM-CL's four image domains"
)
DEMO_CONFIGS = {
    "modality": Path(__file__).with_name("configs") / "demo.yaml",
    "domain": Path(__file__).with_name("configs") / "demo_domain.yaml",
}
DEFAULT_METHODS = {"modality": "fine_tuning,mera", "domain": "fine_tuning,replay,mera,mr_lora"}


def _add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--out", default="mera_demo", help="output folder (default: ./mera_demo)")
    parser.add_argument(
        "--scenario",
        choices=tuple(DEMO_CONFIGS),
        default="modality",
        help="'modality': four modalities, one per stage (MERA's setting); 'domain': four image domains, one per "
        "stage (MLLM-CL's setting)",
    )
    parser.add_argument("--order", choices=("sequential", "reverse"), default="sequential", help="stage order")
    parser.add_argument(
        "--methods",
        help=f"comma-separated methods, the names `--method` takes (docs/methods.md; default: "
        f"{DEFAULT_METHODS['modality']}; with --scenario domain: {DEFAULT_METHODS['domain']})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small benchmark and short training: a smoke test of every step, its figures are not meaningful",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the benchmark, the language model and training")
    parser.add_argument("--config", help="the demo's YAML config (default: the built-in one of the scenario)")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also the libraries' progress bars, the trainers' metrics at every logging step, each method's tables",
    )


def make_parser(subparsers=None, prog: str | None = None) -> argparse.ArgumentParser:
    """The `mera demo` parser, added to `subparsers` (TRL's `make_parser` pattern) or stand-alone."""
    if subparsers is None:
        parser = argparse.ArgumentParser(prog=prog, description=HELP)
    else:
        parser = subparsers.add_parser("demo", help=HELP, description=HELP, formatter_class=argparse.HelpFormatter)
    _add_arguments(parser)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    return main(parser.parse_args(argv))


def main(args: argparse.Namespace) -> int:
    from trainers.evaluation.metrics import SMOKE_TEST_NOTE

    size = "quick" if args.quick else "full"
    # Said before the heavy imports, which take a while.
    print(
        f"mera demo ({'quick: a ' + SMOKE_TEST_NOTE if args.quick else 'full benchmark'}), {args.scenario} scenario: "
        f"methods {args.methods or DEFAULT_METHODS[args.scenario]}, "
        f"{args.order} order, seed {args.seed}, output {args.out}/",
        flush=True,
    )
    import torch

    from trainers import console
    from trainers.continual import run_continual
    from trainers.evaluation.metrics import (
        ScoreMatrix,
        format_report,
        plot_accuracy_matrix,
        plot_progressive_relative_gain,
        summarize,
    )
    from trainers.methods import METHODS

    # The demo's models are tiny, so thread synchronisation outweighs the arithmetic: one thread ran a training
    # step in 0.04 s where two took 1.0 s on a busy 2-core machine.
    torch.set_num_threads(1)
    console.configure(verbose=args.verbose)
    methods = [name.strip() for name in (args.methods or DEFAULT_METHODS[args.scenario]).split(",") if name.strip()]
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise SystemExit(f"error: unknown method(s) {unknown}; known methods: {sorted(METHODS)}")
    domain = args.scenario == "domain"
    out = Path(args.out) / "domain" if domain else Path(args.out)
    from trainers.demo.runs import demo_run_config  # loads the demo's stack: only when it runs

    started = time.time()
    base, method_args = demo_run_config(
        out, args.config or DEMO_CONFIGS[args.scenario], args.seed, args.quick, domain=domain
    )
    base = replace(base, order=args.order)
    summaries, timings = [], {}
    (out / "scores").mkdir(parents=True, exist_ok=True)
    for method in methods:
        method_started = time.time()
        run_dir = out / "runs" / f"{size}-{args.order}-seed{args.seed}" / method
        config = replace(base, method=method, method_args=method_args.get(method), output_dir=str(run_dir))
        run_continual(config)
        timings[method] = round(time.time() - method_started, 1)
        shutil.copyfile(Path(config.output_dir) / "scores.json", out / "scores" / f"{method}.json")
        summaries.append(summarize(ScoreMatrix.from_json(out / "scores" / f"{method}.json")))
    results = {
        "scenario": args.scenario,
        "order": args.order,
        "seed": args.seed,
        "quick": args.quick,
        **({"smoke_test": SMOKE_TEST_NOTE} if args.quick else {}),
        "wall_seconds": round(time.time() - started, 1),
        "method_seconds": timings,
        "methods": {summary["method"]: summary for summary in summaries},
    }
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    plot = out / ("accuracy.png" if domain else "relative_gain.png")
    (plot_accuracy_matrix if domain else plot_progressive_relative_gain)(summaries, plot)
    # Each method's per-stage tables are in its run folder (report.txt) and come with --verbose; the comparison
    # of the methods is what the demo is about.
    print(format_report(summaries, compare_only=not args.verbose))
    print(f"\nwrote {out / 'results.json'}, {out / 'scores'}/, {plot} in {results['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(make_parser(prog="recipes/demo.py")))
