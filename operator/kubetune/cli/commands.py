"""Subcommands of `kubetune`. Each is (help, add_arguments(parser), run(args) -> exit code)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from kubetune.api.validation import InvalidFineTuneJob, Problem, load_jobs, read_jobs
from kubetune.cli.registry import command, default_cache_dir, print_error

_err = print_error


# --------------------------------------------------------------------------------------------------- validate


def _validate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="FineTuneJob YAML files")


@command("validate", "Check FineTuneJob files; one line per problem, exit 1 if any.", _validate_args)
def validate(args: argparse.Namespace) -> int:
    """Every problem of every document of every file, one line each; a job name defined twice is one of them."""
    bad = 0
    seen: dict[tuple[str, str], str] = {}
    for f in args.files:
        jobs, problems = read_jobs(f)
        for job in jobs:
            key = (job.metadata.namespace or "", job.metadata.name)
            if key in seen:
                problems.append(
                    Problem(
                        "metadata.name",
                        f"FineTuneJob {job.metadata.name!r} is also defined in "
                        f"{seen[key]}; give each job its own name",
                    )
                )
            seen.setdefault(key, f)
        if not jobs and not problems:
            problems.append(Problem("", "no FineTuneJob found in the file"))
        for p in problems:
            _err(f"{f}: {p}")
        if problems:
            bad += 1
            continue
        for job in jobs:
            print(f"{f}: {job.metadata.name}: valid ({job.spec.stage}, {job.spec.method.type})")
    return 1 if bad else 0


# --------------------------------------------------------------------------------------------------- crd


@command("crd", "Print the FineTuneJob CustomResourceDefinition.", lambda p: None)
def crd(args: argparse.Namespace) -> int:
    from kubetune.api.crdgen import render_crd

    sys.stdout.write(render_crd())
    return 0


# --------------------------------------------------------------------------------------------------- run


def _run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="FineTuneJob YAML file")
    p.add_argument("--output", metavar="URI", help="override spec.output.uri")
    p.add_argument(
        "--cache-dir",
        default=os.environ.get("KUBETUNE_CACHE_DIR"),
        help="model/data cache (default: $KUBETUNE_CACHE_DIR or ~/.cache/kubetune)",
    )
    p.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port")
    p.add_argument(
        "--allow-private-url",
        action="append",
        default=[],
        metavar="HOST",
        help="let the URL guard through to this host (e.g. 127.0.0.1 for a local S3)",
    )
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also show the libraries' warnings and logs (always written to the run's log file)",
    )


@command("run", "Run a FineTuneJob on this machine, without a cluster (same trainer as the pods).", _run_args)
def run(args: argparse.Namespace) -> int:
    try:
        jobs = load_jobs(args.file)
    except InvalidFineTuneJob as exc:
        _err(str(exc))
        return 2
    try:
        from kubetune.trainer.local import run_local
    except ModuleNotFoundError as exc:
        _err(f"`kubetune run` needs the trainer extra ({exc.name} is missing): pip install 'kubetune[trainer]'")
        return 2
    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    code = 0
    for job in jobs:
        code = run_local(
            job,
            Path(args.file),
            cache_dir=cache,
            output=args.output,
            metrics_port=args.metrics_port,
            allow_private=args.allow_private_url,
            verbose=args.verbose,
        )
        if code:
            break
    return code


# --------------------------------------------------------------------------------------------------- chat


def _chat_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="URI", help="base model URI (as spec.model.source)")
    p.add_argument("--adapter", metavar="URI", help="adapter folder URI (a kubetune output)")
    p.add_argument("--template", default=None, help="chat template name (default: the tokenizer's)")
    p.add_argument("--system", default="", help="system prompt")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--cache-dir", default=os.environ.get("KUBETUNE_CACHE_DIR"))
    p.add_argument("prompt", nargs="+", help="user message(s); each is answered separately")


@command("chat", "Answer prompts with a base model, optionally with a trained adapter (greedy).", _chat_args)
def chat(args: argparse.Namespace) -> int:
    from kubetune.api.v1alpha1 import TEMPLATE_NAMES

    if args.template is not None and args.template not in TEMPLATE_NAMES:
        _err(f"--template: unknown template {args.template[:40]!r}; use one of {', '.join(TEMPLATE_NAMES)}")
        return 2
    from kubetune.trainer.errors import TrainerError
    from kubetune.trainer.inference import generate_answers

    cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    try:
        answers = generate_answers(
            args.model,
            args.prompt,
            adapter=args.adapter,
            template=args.template,
            system=args.system,
            max_new_tokens=args.max_new_tokens,
            cache_dir=cache,
        )
    except TrainerError as exc:
        _err(str(exc))
        return exc.exit_code
    for prompt, answer in zip(args.prompt, answers):
        print(f"> {prompt}\n{answer}\n")
    return 0


# --------------------------------------------------------------------------------------------------- artifacts


def _verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["verify"], help="verify: re-hash an output against its manifest")
    p.add_argument("uri", metavar="URI", help="artifact folder URI (file://, s3://) or local path")


@command("artifacts", "Work with training outputs (verify URI).", _verify_args)
def artifacts(args: argparse.Namespace) -> int:
    from kubetune.api.redact import redact
    from kubetune.trainer.artifacts.verify import verify_uri

    problems = verify_uri(args.uri)
    shown = redact(args.uri)
    for p in problems:
        _err(f"{shown}: {p}")
    if not problems:
        print(f"{shown}: every file matches manifest.json")
    return 1 if problems else 0
