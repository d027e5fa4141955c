"""`mera metrics`: Relative-Gain tables and plots from score matrices, one file per method.

mera metrics runs/finetune/scores.json runs/mera/scores.json
mera metrics finetune.json mera.json --json summary.json --plot relative_gain.png
mera metrics finetune.json --json - | python -m json.tool
"""

import argparse
import json
import sys
from pathlib import Path

from trainers.evaluation.metrics import (
    ScoreMatrix,
    format_report,
    plot_accuracy_matrix,
    plot_progressive_relative_gain,
    summarize,
)

HELP = "Relative-Gain and accuracy-matrix tables and plots from score matrices"

FORMAT_HELP = """\
score-matrix format (one JSON file per method; modalities in training order; stages[i] = scores after stage i+1):
  {"method": "Fine-Tuning",
   "modalities": [{"name": "image", "datasets": ["MSCOCO", "OK-VQA"]},
                  {"name": "video", "datasets": ["MSVD", "MSVD-QA"]}],
   "experts": {"MSCOCO": 100.76, "OK-VQA": 0.358, "MSVD": 138.39, "MSVD-QA": 0.46},
   "stages": [{"MSCOCO": 100.76, "OK-VQA": 0.358},
              {"MSCOCO": 54.52, "OK-VQA": 0.172, "MSVD": 130.22, "MSVD-QA": 0.555}]}

metrics (in %): RelativeGain(j, i) = mean over modality j's datasets of score / expert score, after stage i;
Backward RG(i) = mean over j < i of RelativeGain(j, i), stage 1 = RelativeGain(1, 1); Forward RG(i) =
RelativeGain(i, i); mean and sample std (n-1) over stages. Classic metrics (final average, average accuracy,
BWT, forgetting) are computed on the Relative-Gain matrix, and on the accuracy matrix of raw scores (one task per
test set, in its own unit), which is MLLM-CL's table.

MLLM-CL's setting (a task per stage on a modality learnt before): list "tasks" instead of "modalities", e.g.
  {"method": "MR-LoRA", "tasks": [{"name": "RS", "modality": "image", "datasets": ["RS"]}, ...],
   "stages": [{"RS": 0.81}, {"RS": 0.80, "Med": 0.62}, ...]}
"experts" may then be left out: the accuracy matrix needs none, Relative Gain does (it is shown when they exist).

examples:
  mera metrics finetune.json mera.json                          print the tables
  mera metrics finetune.json mera.json --json summary.json      also write every metric as JSON
  mera metrics finetune.json --json -                           JSON on stdout instead of the tables
  mera metrics finetune.json mera.json --plot relative_gain.png  Backward/Forward RG per stage, per method
"""


def make_parser(subparsers=None, prog: str | None = None) -> argparse.ArgumentParser:
    """The `mera metrics` parser, added to `subparsers` (TRL's `make_parser` pattern) or stand-alone."""
    if subparsers is None:
        parser = argparse.ArgumentParser(prog=prog, description=HELP)
    else:
        parser = subparsers.add_parser("metrics", help=HELP, description=HELP, formatter_class=argparse.HelpFormatter)
    _add_arguments(parser)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    return main(parser.parse_args(argv))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = FORMAT_HELP
    parser.add_argument("scores", nargs="+", metavar="SCORES.json", help="score-matrix files, one per method")
    parser.add_argument(
        "--json",
        dest="json_path",
        metavar="OUT.json",
        help="write every metric of every method to OUT.json ({'methods': [...]}); '-' prints the JSON to stdout "
        "instead of the tables",
    )
    parser.add_argument(
        "--plot",
        dest="plot_path",
        metavar="OUT.png",
        help="write a plot of Backward and Forward Relative Gain per stage, one line per method (without experts: "
        "the accuracy matrix's mean per stage and final scores)",
    )


def main(args: argparse.Namespace) -> int:
    try:
        inputs = {Path(path).resolve() for path in args.scores}
        for option, output in (("--json", args.json_path), ("--plot", args.plot_path)):
            if output not in (None, "-") and Path(output).resolve() in inputs:
                raise ValueError(f"{option} {output} is also an input score matrix; refusing to overwrite it.")
        summaries = [summarize(ScoreMatrix.from_json(path)) for path in args.scores]
    except ValueError as error:
        print(f"mera metrics: error: {error}", file=sys.stderr)
        return 2

    # Two files may name the same method (e.g. two seeds): tell them apart by file name in tables and plots.
    names = [summary["method"] for summary in summaries]
    for summary in summaries:
        if names.count(summary["method"]) > 1:
            summary["method"] = f"{summary['method']} [{Path(summary['source']).name}]"

    payload = json.dumps({"methods": summaries}, indent=2)
    if args.json_path == "-":
        print(payload)
    else:
        print(format_report(summaries))
        if args.json_path:
            path = Path(args.json_path)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(payload + "\n", encoding="utf-8")
            print(f"\nwrote {path}")
    if args.plot_path:
        with_experts = all(summary["backward_relative_gain"] is not None for summary in summaries)
        path = (plot_progressive_relative_gain if with_experts else plot_accuracy_matrix)(summaries, args.plot_path)
        print(f"wrote {path}", file=sys.stderr if args.json_path == "-" else sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(run(make_parser(prog="recipes/metrics.py")))
