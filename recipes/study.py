"""
`mera study`: the paper's experiments in one command, a grid of continual runs over methods, modality orders, seeds
and replay/realign settings, and its report (the paper's Tables 2, 4, 5, 6, 7, 11, 12 and Figures 3/4).

    mera study --benchmark demo --methods fine_tuning,mera --orders sequential,reverse --seeds 0,1,2
    mera study --benchmark demo --methods fine_tuning,replay,mera --realign 10 --replay-ratios 1,10 --quick
    mera study --methods fine_tuning,merge_only,realign_only,mera --mispaired 10,50
    accelerate launch recipes/study.py --benchmark recipes/configs/paper_sequential.yaml --data_root /data/mera

Each seed's experts are trained once, a stage that two cells train identically is trained once (stage 1 of
Fine-Tuning and MERA, say), and a killed study resumes where it stopped: call it again with the same arguments.
The report goes to OUT/report.md, OUT/report.json and OUT/relative_gain_*.png, and is printed.
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

DEMO_CONFIG = Path(__file__).with_name("configs") / "demo.yaml"


def _list(kind):
    def parse(text: str) -> list:
        try:
            return [kind(item) for item in text.split(",") if item.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {kind.__name__}s, got {text!r}"
            ) from None

    return parse


HELP = "the paper's experiments: methods x orders x seeds, the paper's tables and figures (resumable)"


def make_parser(subparsers=None, prog: str | None = None) -> argparse.ArgumentParser:
    """The `mera study` parser, added to `subparsers` (TRL's `make_parser` pattern) or stand-alone."""
    if subparsers is None:
        parser = argparse.ArgumentParser(prog=prog, description=HELP)
    else:
        parser = subparsers.add_parser("study", help=HELP, description=HELP, formatter_class=argparse.HelpFormatter)
    _add_arguments(parser)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    return main(parser.parse_args(argv))


def _add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument(
        "--benchmark",
        default="demo",
        help="'demo' (the offline benchmark, default) or a run-config YAML (recipes/configs/paper_sequential.yaml)",
    )
    parser.add_argument("--data_root", "--data-root", help="data folder of a YAML benchmark (overrides its data_root)")
    parser.add_argument("--methods", type=_list(str), default=["fine_tuning", "mera"], help="comma-separated methods")
    parser.add_argument("--orders", type=_list(str), default=["sequential", "reverse"], help="modality orders")
    parser.add_argument("--seeds", type=_list(int), default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument(
        "--replay-ratios",
        "--replay_ratios",
        dest="replay_ratios",
        type=_list(float),
        help="replay ratios r in %% for the methods that draw replay (replay, mera, realign_only); default: the "
        "benchmark's replay_ratio",
    )
    parser.add_argument(
        "--realign",
        type=_list(float),
        help="realign ratios R in %%: every method that can take it also runs with '+ Realign (R%%)' (Table 5)",
    )
    parser.add_argument(
        "--mispaired",
        type=_list(float),
        help="percentages of mispaired realign pairs: every method with a realign step also runs with them (Table 7)",
    )
    parser.add_argument("--quick", action="store_true", help="demo: a small benchmark and short training")
    parser.add_argument("--out", default="mera_study", help="the study folder (default: ./mera_study)")
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="demo: its YAML config (default: the built-in)")
    parser.add_argument(
        "--latency-samples",
        "--latency_samples",
        dest="latency_samples",
        type=int,
        default=8,
        help="test samples per modality timed for the per-token latency (default 8)",
    )


def yaml_base_config(path: Path, data_root: str | None, out: Path):
    """`base_config(seed)` of a run-config YAML: its settings with the seed, data root and experts folder set."""
    import yaml

    from trainers.settings import ContinualConfig

    settings = yaml.safe_load(path.read_text())
    try:
        config = ContinualConfig(**settings)
    except TypeError as error:
        raise ValueError(f"{path}: {error}") from None
    method_args = {config.method: config.method_args} if config.method_args else {}

    def base_config(seed: int):
        return replace(
            config,
            seed=seed,
            data_root=data_root or config.data_root,
            experts_dir=str(out / f"experts-seed{seed}"),
            method_args=None,
        ), method_args

    return base_config


def main(args: argparse.Namespace) -> int:
    import torch

    from trainers.demo.runs import demo_run_config
    from trainers.study import Study, run_study, write_report

    out = Path(args.out)
    if args.benchmark == "demo":
        # The demo's models are tiny: one thread is faster than two on a busy machine (see `mera demo`).
        torch.set_num_threads(1)
        size = "quick" if args.quick else "full"

        def base_config(seed: int):
            return demo_run_config(out, args.config, seed, args.quick)
    else:
        path = Path(args.benchmark)
        if not path.is_file():
            message = f"--benchmark must be 'demo' or a YAML file, got {args.benchmark!r}"
            print(f"mera study: error: {message}", file=sys.stderr)
            return 2
        size, base_config = "config", yaml_base_config(path, args.data_root, out)
    study = Study(
        out=out,
        methods=args.methods,
        orders=args.orders,
        seeds=args.seeds,
        base_config=base_config,
        replay_ratios=args.replay_ratios,
        realign=args.realign,
        mispaired=args.mispaired,
        size=size,
        latency_samples=args.latency_samples,
    )
    started = time.time()
    try:
        finished = run_study(study)
    except ValueError as error:
        print(f"mera study: error: {error}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process:
        grid = {key: value for key, value in vars(args).items() if not key.startswith("_")}
        markdown = write_report(finished, out, json.loads(json.dumps(grid, default=str)), time.time() - started)
        print(markdown)
        print(f"wrote {out / 'report.md'}, {out / 'report.json'} and the figures in {time.time() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run(make_parser(prog="recipes/study.py")))
