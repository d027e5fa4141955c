"""`mera push RUN_DIR REPO_ID`: publish the finished stages of a continual run on the Hugging Face Hub.

Stage i goes to the branch `stage-i` of the model repo REPO_ID, `main` follows the latest stage, and each branch
holds a complete checkpoint with its model card. Pushing again pushes only what is missing or changed.
"""

import argparse
import sys

EPILOG = """\
Authentication: huggingface_hub's own; `hf auth login` once, or HF_TOKEN in the environment (preferred to --token,
which lands in the shell history). Tokens are never printed or written.

Examples:
  mera push runs/mera-seq org/mera-4mod --private      # every finished stage, into a new private repo
  mera push runs/mera-seq org/mera-4mod --stages 3,4   # only these stages
  mera push runs/mera-seq org/mera-4mod --dry-run      # what would be committed on which branch

then:  AutoModel.from_pretrained("org/mera-4mod", revision="stage-2", trust_remote_code=True)
"""


HELP = "push a run's stages to the Hugging Face Hub, one branch per stage, with model cards"


def make_parser(subparsers=None, prog: str | None = None) -> argparse.ArgumentParser:
    """The `mera push` parser, added to `subparsers` (TRL's `make_parser` pattern) or stand-alone."""
    if subparsers is None:
        parser = argparse.ArgumentParser(prog=prog, description=HELP)
    else:
        parser = subparsers.add_parser("push", help=HELP, description=HELP, formatter_class=argparse.HelpFormatter)
    _add_arguments(parser)
    return parser


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    return main(parser.parse_args(argv))


def _add_arguments(parser: argparse.ArgumentParser):
    parser.description = __doc__.split("\n\n", 1)[1].strip()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EPILOG
    parser.add_argument("run_dir", help="the run's output_dir (holding stage-1/, stage-2/, ..., eval/, scores.json)")
    parser.add_argument("repo_id", help="the Hub model repo, e.g. org/mera-4mod (created if missing)")
    parser.add_argument(
        "--stages", default=None, help="comma-separated stage indices to push, e.g. 1,2 (default: every finished one)"
    )
    parser.add_argument(
        "--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite stage branches that hold other weights, and re-push what pushed.json records as pushed",
    )
    parser.add_argument(
        "--include-replay",
        action="store_true",
        help="also publish replay/ (training-set rows with local media paths; left out by default)",
    )
    parser.add_argument("--token", default=None, help="a Hub token with write access (default: huggingface_hub's)")
    parser.add_argument("--card-template", default=None, help="a model card template instead of model_card.md")
    parser.add_argument("--retries", type=int, default=3, help="retries of a failed upload, with backoff (default 3)")
    parser.add_argument("--dry-run", action="store_true", help="print the upload plan per branch; push nothing")


def _parse_stages(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--stages must be comma-separated stage numbers like 1,2, got {text!r}") from None


def _print_plan(run_dir: str, repo_id: str, stages: list[int] | None, include_replay: bool, template: str | None):
    from trainers.hub import finished_stages, plan_stage_upload

    for stage in stages or finished_stages(run_dir):
        upload = plan_stage_upload(run_dir, stage, repo_id, include_replay, template)
        print(f"{upload.branch}: {upload.commit_message}")
        for path, content in sorted(upload.files.items()):
            size = len(content) if isinstance(content, bytes) else content.stat().st_size
            print(f"  {path:<50} {size:>12,} bytes")
    print("main: follows the latest stage on the Hub")


def main(args: argparse.Namespace) -> int:
    from huggingface_hub import HfApi

    from trainers.hub import HubPushError, HubRevisionExistsError, push_run

    try:
        stages = _parse_stages(args.stages)
        if args.dry_run:
            _print_plan(args.run_dir, args.repo_id, stages, args.include_replay, args.card_template)
            return 0
        api = HfApi(token=args.token)
        results = push_run(
            args.run_dir,
            args.repo_id,
            stages=stages,
            private=True if args.private else None,
            force=args.force,
            include_replay=args.include_replay,
            api=api,
            retries=args.retries,
            card_template=args.card_template,
        )
    except (HubRevisionExistsError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except HubPushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for result in results:
        where = f"{api.endpoint}/{args.repo_id}/tree/{result['branch']}"
        commit = result.get("commit", "")[:12]
        print(f"{result['branch']:<10} stage {result['stage']}  {result['status']:<9} {commit:<12} {where}")
    return 0


if __name__ == "__main__":
    sys.exit(run(make_parser(prog="recipes/push.py")))
