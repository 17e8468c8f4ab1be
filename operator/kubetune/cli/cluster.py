"""Cluster commands on kubectl's kubeconfig rules: `kubetune submit/get/logs/wait/cancel` (over :mod:`kubetune.client`)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

from kubetune.cli.registry import command
from kubetune.cli.registry import print_error as _err

WAIT_TIMEOUT_EXIT = 124  # as timeout(1)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--namespace", "-n", default=None, help="namespace (default: the kubeconfig context's, else default)"
    )
    p.add_argument(
        "--kubeconfig",
        default=None,
        metavar="FILE",
        help="kubeconfig file (default: $KUBECONFIG, ~/.kube/config, else in-cluster)",
    )
    p.add_argument("--context", default=None, help="kubeconfig context (default: the current one)")


def _client(args: argparse.Namespace) -> Any:
    from kubetune.client import KubetuneClient

    return KubetuneClient(namespace=args.namespace, kubeconfig=args.kubeconfig, context=args.context)


def _guarded(run: Any) -> Any:
    """Every KubetuneError is one line on stderr and exit 1 (never a traceback)."""

    def wrapped(args: argparse.Namespace) -> int:
        from kubetune.client import KubetuneError

        try:
            return run(args)
        except KubetuneError as exc:
            _err(f"kubetune {args.command}: {exc}")
            return 1

    wrapped.__doc__ = run.__doc__
    return wrapped


# ---------------------------------------------------------------------------------------------- submit


def _submit_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", metavar="FILE", help="FineTuneJob YAML file (several jobs, --- separated, are fine)")
    _common(p)


@command(
    "submit", "Validate a FineTuneJob file, then create it on the cluster (or apply it when it exists).", _submit_args
)
@_guarded
def submit(args: argparse.Namespace) -> int:
    from pathlib import Path

    from kubetune.client import KubetuneError

    if not Path(args.file).is_file():
        raise KubetuneError(f"{args.file}: no such file")
    for job in _client(args).submit_all(Path(args.file)):
        print(
            f"finetunejob.kubetune.io/{job.name} submitted in namespace {job.namespace} "
            f"(follow: kubetune logs {job.name} -n {job.namespace} -f)"
        )
    return 0


# ---------------------------------------------------------------------------------------------- get


def _get_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", nargs="?", help="one FineTuneJob (default: all of the namespace)")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="list every namespace")
    _common(p)


def _age(created: str | None) -> str:
    if not created:
        return "-"
    try:
        secs = int((dt.datetime.now(dt.UTC) - dt.datetime.fromisoformat(created)).total_seconds())
    except ValueError:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{max(secs, 0)}s"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _row(job: Any, with_ns: bool) -> list[str]:
    p = job.status.progress
    progress = f"{p.percent:.0f}%" if p is not None and p.percent is not None else None
    cells = [
        job.name,
        _cell(job.stage),
        _cell(job.phase),
        _cell(progress),
        _cell(p.loss if p else None),
        _cell(p.eta if p else None),
        _age(job.created),
    ]
    return [job.namespace, *cells] if with_ns else cells


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    return "\n".join("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])


def describe(job: Any) -> str:
    """One job in detail: the printer columns, conditions, progress, datasets report, artifacts."""
    s = job.status
    out = [
        f"Name:       {job.name}",
        f"Namespace:  {job.namespace}",
        f"Stage:      {_cell(job.stage)}",
        f"Phase:      {_cell(job.phase)}",
        f"Age:        {_age(job.created)}",
    ]
    if s.restarts:
        out.append(f"Restarts:   {s.restarts}")
    if s.conditions:
        out.append("Conditions:")
        rows = [[c.type, c.status, c.reason or "-", c.message or ""] for c in s.conditions]
        out += ["  " + line for line in _table(rows, ["TYPE", "STATUS", "REASON", "MESSAGE"]).splitlines()]
    p = s.progress
    if p is not None:
        steps = f"{_cell(p.step)}/{_cell(p.total_steps)}"
        pct = f" ({p.percent:.0f}%)" if p.percent is not None else ""
        tps = f"{p.tokens_per_second:.0f}" if p.tokens_per_second is not None else "-"
        out.append(
            f"Progress:   step {steps}{pct}  loss {_cell(p.loss)}  eval loss {_cell(p.eval_loss)}  "
            f"lr {_cell(p.learning_rate)}  tokens/s {tps}  ETA {_cell(p.eta)}"
        )
    if s.datasets:
        out.append("Datasets:")
        rows = [[d.name, str(d.rows), str(d.valid), str(d.dropped)] for d in s.datasets]
        out += ["  " + line for line in _table(rows, ["NAME", "ROWS", "VALID", "DROPPED"]).splitlines()]
    a = s.artifacts
    if a is not None and (a.adapter_uri or a.merged_uri or a.manifest_uri):
        out.append("Artifacts:")
        out += [
            f"  {label:<9} {uri}"
            for label, uri in (("adapter", a.adapter_uri), ("merged", a.merged_uri), ("manifest", a.manifest_uri))
            if uri
        ]
    if s.last_checkpoint:
        out.append(f"Checkpoint: {s.last_checkpoint}")
    return "\n".join(out)


@command(
    "get",
    "List FineTuneJobs (the kubectl columns), or show one: conditions, progress, datasets, artifacts.",
    _get_args,
)
@_guarded
def get(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.name:
        print(describe(client.get(args.name)))
        return 0
    jobs = client.list(all_namespaces=args.all_namespaces)
    if not jobs:
        print("No FineTuneJobs found" + ("" if args.all_namespaces else f" in namespace {client.namespace}") + ".")
        return 0
    header = ["NAME", "STAGE", "PHASE", "PROGRESS", "LOSS", "ETA", "AGE"]
    print(
        _table([_row(j, args.all_namespaces) for j in jobs], ["NAMESPACE", *header] if args.all_namespaces else header)
    )
    return 0


# ---------------------------------------------------------------------------------------------- logs


def _logs_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="FineTuneJob name")
    p.add_argument(
        "--rank", type=int, default=0, metavar="N", help="the pod of this rank (Job completion index; default 0)"
    )
    p.add_argument("--follow", "-f", action="store_true", help="stream, across restarts, until the job ends")
    _common(p)


@command("logs", "Print the trainer log of one rank of a FineTuneJob (-f follows it across restarts).", _logs_args)
@_guarded
def logs(args: argparse.Namespace) -> int:
    for line in _client(args).logs(args.name, rank=args.rank, follow=args.follow):
        print(line, flush=args.follow)
    return 0


# ---------------------------------------------------------------------------------------------- wait


def _wait_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="FineTuneJob name")
    p.add_argument("--timeout", type=float, default=None, metavar="S", help="give up after S seconds (default: never)")
    _common(p)


@command(
    "wait",
    f"Wait for a FineTuneJob to finish: exit 0 on Succeeded, 1 with the reason on failure, "
    f"{WAIT_TIMEOUT_EXIT} on --timeout.",
    _wait_args,
)
@_guarded
def wait(args: argparse.Namespace) -> int:
    from kubetune.client import WaitTimeout

    if args.timeout is not None and not args.timeout >= 0:
        _err(f"kubetune wait: --timeout must be a number of seconds >= 0, not {args.timeout}")
        return 2
    client = _client(args)
    try:
        job = client.wait(args.name, timeout=args.timeout)
    except WaitTimeout as exc:
        _err(f"kubetune wait: {exc}")
        return WAIT_TIMEOUT_EXIT
    artifact = job.status.artifacts.adapter_uri if job.status.artifacts else None
    print(f"finetunejob.kubetune.io/{job.name} Succeeded" + (f": {artifact}" if artifact else ""))
    return 0


# ---------------------------------------------------------------------------------------------- cancel


def _cancel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", help="FineTuneJob name")
    _common(p)


@command("cancel", "Cancel a FineTuneJob: delete it and its Job and pods.", _cancel_args)
@_guarded
def cancel(args: argparse.Namespace) -> int:
    client = _client(args)
    client.cancel(args.name)
    print(f"finetunejob.kubetune.io/{args.name} deleted from namespace {client.namespace}")
    return 0
