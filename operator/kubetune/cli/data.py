"""`kubetune data check`: the trainer's preflight data report, without a cluster or model weights."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from kubetune.api.stages import Stage
from kubetune.cli.registry import command, default_cache_dir


def positive_int(text: str) -> int:
    """argparse type: a whole number > 0 (``--max-samples -1`` is refused, not read as "all but the last row")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {value}")
    return value


def _data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["check"], help="check: read, convert and tokenize; report every dropped row")
    p.add_argument(
        "--dataset-info",
        required=True,
        metavar="FILE",
        help="dataset_info.json: a path or URI (file://, s3://, https://, configmap://)",
    )
    p.add_argument("--dataset", required=True, metavar="NAME[,NAME]", help="entries of the registry to check")
    p.add_argument("--stage", required=True, choices=[s.value for s in Stage], help="training stage")
    p.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="model URI as spec.model.source (a .gguf file included); only its tokenizer is loaded",
    )
    p.add_argument("--template", default=None, help="chat template name (default: the tokenizer's)")
    p.add_argument(
        "--cutoff-len", type=positive_int, default=1024, metavar="N", help="maximum tokens per row (default 1024)"
    )
    p.add_argument(
        "--packing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pack rows into cutoff-len blocks (default: on for pt, else off)",
    )
    p.add_argument("--train-on-prompt", action="store_true", help="sft: also train on prompt tokens")
    p.add_argument("--mask-history", action="store_true", help="sft: train on the last turn only")
    p.add_argument("--max-samples", type=positive_int, default=None, metavar="N", help="at most N rows per dataset")
    p.add_argument("--json", action="store_true", help="print one JSON object per dataset (a JSON list)")
    p.add_argument(
        "--cache-dir",
        default=os.environ.get("KUBETUNE_CACHE_DIR"),
        help="download and tokenized-data cache (default: $KUBETUNE_CACHE_DIR or ~/.cache/kubetune)",
    )
    p.add_argument(
        "--allow-private-url",
        action="append",
        default=[],
        metavar="HOST",
        help="let the URL guard through to this host (e.g. 127.0.0.1 for a local S3)",
    )


@command(
    "data", "Check datasets as the trainer would: rows read, valid, dropped with reasons and row indexes.", _data_args
)
def data(args: argparse.Namespace) -> int:
    try:
        from kubetune.trainer.data.dataset_check import CheckOptions, check
        from kubetune.trainer.errors import TrainerError
    except ModuleNotFoundError as exc:
        print(
            f"`kubetune data check` needs the trainer extra ({exc.name} is missing): pip install 'kubetune[trainer]'",
            file=sys.stderr,
        )
        return 2
    if args.cutoff_len <= 0:
        print("--cutoff-len must be a positive number of tokens", file=sys.stderr)
        return 2
    opts = CheckOptions(
        stage=args.stage,
        template=args.template,
        cutoff_len=args.cutoff_len,
        packing=args.packing,
        train_on_prompt=args.train_on_prompt,
        mask_history=args.mask_history,
        max_samples=args.max_samples,
        work_dir=Path.cwd(),
        cache_dir=Path(args.cache_dir) if args.cache_dir else default_cache_dir(),
        allow=args.allow_private_url,
    )
    try:
        reports = check(args.dataset_info, args.dataset, args.model, opts)
    except TrainerError as exc:
        print(str(exc), file=sys.stderr)
        return exc.exit_code
    if args.json:
        print(json.dumps([r.to_dict() for r in reports], indent=2))
    else:
        for r in reports:
            print("\n".join(r.lines()))
    empty = [r.name for r in reports if r.valid == 0]
    if empty:
        print(f"no valid rows in dataset(s) {', '.join(empty)}", file=sys.stderr)
        return 1
    return 0
