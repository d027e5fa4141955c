"""`mera data`: convert the paper's data sets (and LLaVA / MLLM-CL JSON) from their published files to samples.

mera data list                                   every converter: expected files, columns and options
mera data convert mscoco --data-root /downloads/coco --out /data/mera
mera data convert okvqa --data-root /downloads/okvqa --out /data/mera --option image_dir=/downloads/coco/train2014
mera data convert audiocaps --data-root /downloads/audiocaps --out /data/mera --skip-missing-media
mera data check --data-root /data/mera mscoco/train.jsonl mscoco/test.jsonl
mera data demo --out data/tiny                   the demo benchmark + its tiny LM, for recipes/configs/tiny.yaml
python recipes/continual.py --config recipes/configs/paper_sequential.yaml --data_root /data/mera --dry_run
"""

import argparse
import json
import sys

from trainers.data.converters import (
    CONVERTERS,
    convert,
    describe_converter,
    dry_run_report,
    format_dry_run_report,
    parse_options,
)

HELP = "convert the paper's data sets (and LLaVA/MLLM-CL JSON) to mera-mcl samples"
EPILOG = """\
output: <out>/<name>/train.jsonl, test.jsonl and manifest.json (sources, options, seed, sizes, counts before and
after each filter). Media paths are written relative to <out>/<name>/, so the converted folders can move together
with the downloads when their relative position stays the same (--absolute-paths otherwise).

splits: a test set of 1K (MSVD: its 670 test clips) from the data set's own test file when there is one, else held
out of the training file (whole images, clips or objects); Cap3D and Cap3D-QA keep seeded 50K / 30K training
subsets. The same --seed gives the same split whatever the file order.

examples (the paper's eight data sets, then an MLLM-CL task):
  mera data convert mscoco     --data-root /downloads/coco       --out /data/mera
  mera data convert okvqa      --data-root /downloads/okvqa      --out /data/mera \\
      --option image_dir=/downloads/coco/train2014 --option test_image_dir=/downloads/coco/val2014
  mera data convert msvd       --data-root /downloads/msvd       --out /data/mera
  mera data convert msvd_qa    --data-root /downloads/msvd_qa    --out /data/mera \\
      --option video_dir=/downloads/msvd/YouTubeClips
  mera data convert audiocaps  --data-root /downloads/audiocaps  --out /data/mera --skip-missing-media
  mera data convert clotho_aqa --data-root /downloads/clotho_aqa --out /data/mera
  mera data convert cap3d      --data-root /downloads/cap3d      --out /data/mera --skip-missing-media
  mera data convert cap3d_qa   --data-root /downloads/cap3d_qa   --out /data/mera --skip-missing-media \\
      --option point_dir=/downloads/cap3d/point_clouds
  mera data convert llava      --data-root /downloads/MLLM-CL/RS --out /data/mllm-cl --name rs --option dataset=RS
"""


def make_parser(subparsers=None, prog: str | None = None) -> argparse.ArgumentParser:
    """The `mera data` parser, added to `subparsers` (TRL's `make_parser` pattern) or stand-alone."""
    if subparsers is None:
        parser = argparse.ArgumentParser(prog=prog, description=HELP)
    else:
        parser = subparsers.add_parser("data", help=HELP, description=HELP, formatter_class=argparse.HelpFormatter)
    _add_arguments(parser)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    return main(parser.parse_args(argv))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    listing = actions.add_parser("list", help="show every converter's expected files, columns and options")
    listing.add_argument("names", nargs="*", metavar="NAME", help="only these converters")

    run = actions.add_parser(
        "convert",
        help="convert one data set",
        description="Convert one data set from its published files to <out>/<name>/ (train/test JSONL + manifest).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    run.add_argument("converter", choices=sorted(CONVERTERS), metavar="NAME", help=f"one of {sorted(CONVERTERS)}")
    run.add_argument("--data-root", required=True, help="folder with the data set's downloaded files")
    run.add_argument("--out", required=True, help="folder of converted data sets (a continual run's --data_root)")
    run.add_argument("--name", help="output folder name under --out (default: the converter's name)")
    run.add_argument("--seed", type=int, default=0, help="seed of the test and training subsets (default 0)")
    run.add_argument("--test-size", help="test samples: a number or 'all' (default: the paper's, 1K; MSVD 670)")
    run.add_argument(
        "--train-size", help="training samples: a number or 'all' (default: all; Cap3D 50K, Cap3D-QA 30K)"
    )
    run.add_argument(
        "--skip-missing-media",
        action="store_true",
        help="drop samples whose media file does not exist (counted in the manifest) instead of stopping",
    )
    run.add_argument("--absolute-paths", action="store_true", help="write absolute media paths")
    run.add_argument(
        "--option",
        action="append",
        metavar="KEY=VALUE",
        help="a converter option (file names, media folders, prompts; see `mera data list NAME`); repeatable",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bars")

    check = actions.add_parser("check", help="count converted samples and check that every media file exists")
    check.add_argument("--data-root", default=".", help="folder the files are relative to (default: .)")
    check.add_argument("files", nargs="+", metavar="FILE", help="converted .jsonl files")
    check.add_argument("--json", action="store_true", help="print the report as JSON")

    demo = actions.add_parser(
        "demo",
        help="write the demo benchmark and its tiny language model (what recipes/configs/tiny.yaml reads)",
        description="Write the offline demo benchmark (four synthetic modalities) and a tiny Llama pre-trained on its "
        "text to one folder: <out>/<modality>/train.jsonl, test.jsonl and <out>/language_model/. Reused when "
        "already there with the same settings.",
    )
    demo.add_argument("--out", default="data/tiny", help="folder to write (default: data/tiny, tiny.yaml's)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the benchmark and the language model (default 0)")
    demo.add_argument("--train-per-modality", type=int, default=24, help="training items per modality (default 24)")
    demo.add_argument("--test-per-modality", type=int, default=8, help="test items per modality (default 8)")
    demo.add_argument("--lm-steps", type=int, default=40, help="pre-training steps of the tiny LM (default 40)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    if args.action is None or args.action == "list":
        names = getattr(args, "names", None) or list(CONVERTERS)
        unknown = [name for name in names if name not in CONVERTERS]
        if unknown:
            print(f"mera data: error: unknown converter(s) {unknown}; known: {sorted(CONVERTERS)}", file=sys.stderr)
            return 2
        print("\n\n".join(describe_converter(name) for name in names))
        return 0
    if args.action == "demo":
        from trainers.demo.recipe import write_recipe_data

        out = write_recipe_data(
            args.out,
            seed=args.seed,
            train_per_modality=args.train_per_modality,
            test_per_modality=args.test_per_modality,
            language_model_steps=args.lm_steps,
            progress=not args.quiet,
        )
        print(f"wrote {out}/ (the demo benchmark) and {out}/language_model/ (its tiny Llama)")
        return 0
    if args.action == "check":
        report = dry_run_report([{"stage": "-", "modality": "files", "train": args.files}], args.data_root)
        print(json.dumps(report, indent=2) if args.json else format_dry_run_report(report))
        return 0 if report["ok"] else 1
    try:
        options = parse_options(args.converter, args.option)
        manifest = convert(
            args.converter,
            args.data_root,
            args.out,
            output_name=args.name,
            seed=args.seed,
            test_size=args.test_size,
            train_size=args.train_size,
            skip_missing_media=args.skip_missing_media,
            absolute_paths=args.absolute_paths,
            progress=not args.quiet,
            **options,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"mera data: error: {error}", file=sys.stderr)
        return 2
    print(
        f"{manifest['dataset']}: {manifest['counts']['train']} training and {manifest['counts']['test']} test samples"
    )
    for split in ("train", "test"):
        for step, count in manifest["filters"][split].items():
            print(f"  {split:<5} {step}: {count}")
    print(f"wrote {args.out}/{manifest['name']}/ (train.jsonl, test.jsonl, manifest.json)")
    return 0


if __name__ == "__main__":
    sys.exit(run(make_parser(prog="recipes/data.py")))
