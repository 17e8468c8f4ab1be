"""GPU cost of a FineTuneJob (``status.cost``): pure arithmetic over the training pods the operator sees.

Every pod of the Job counts, failed and restarted attempts included: a pod's seconds run from its trainer
container's start (or the pod's ``startTime``) to the container's finish (or ``now`` while it runs); a pod
that never started costs nothing. GPU-seconds are node-seconds × ``spec.resources.gpusPerNode``. Pods the
garbage collector already removed are no longer visible, so :func:`cost_status` never lets a total go down.
The price table (``costs.gpuHourPrice`` in the chart values, ``--gpu-hour-prices`` of the operator) maps a
``spec.resources.gpuType`` to a price per GPU-hour; without a matching entry there is no estimate.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any


def parse_time(value: str | None) -> dt.datetime | None:
    """An RFC 3339 timestamp as the API server writes it (``2026-12-02T09:00:00Z``); None when absent or bad."""
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def pod_seconds(pod: Mapping[str, Any], now: dt.datetime) -> float:
    """Seconds one pod held its node: first container start → last container finish (or ``now``)."""
    status = pod.get("status") or {}
    starts: list[dt.datetime] = []
    ends: list[dt.datetime] = []
    running = False
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        if "running" in state:
            running = True
            starts.append(parse_time((state["running"] or {}).get("startedAt")))  # type: ignore[arg-type]
        elif "terminated" in state:
            term = state["terminated"] or {}
            starts.append(parse_time(term.get("startedAt")))  # type: ignore[arg-type]
            ends.append(parse_time(term.get("finishedAt")))  # type: ignore[arg-type]
    known_starts = [s for s in starts if s is not None]
    start = min(known_starts) if known_starts else None
    if start is None:
        if status.get("phase") not in ("Running", "Succeeded", "Failed"):
            return 0.0  # pending: scheduled or not, no container ran
        start = parse_time(status.get("startTime"))
    if start is None:
        return 0.0
    known_ends = [e for e in ends if e is not None]
    # the API server's timestamps have 1 s resolution: a running pod counts to the same resolution, so a total
    # seen while it ran is never above the one its finishedAt gives
    end = now.replace(microsecond=0) if running or not known_ends else max(known_ends)
    return max(0.0, (end - start).total_seconds())


def usage(pods: Iterable[Mapping[str, Any]], gpus_per_node: int, now: dt.datetime) -> tuple[float, float]:
    """(node-seconds, GPU-seconds) of all the pods, restarts included."""
    node_seconds = sum(pod_seconds(pod, now) for pod in pods)
    return node_seconds, node_seconds * max(gpus_per_node, 0)


def tokens_per_gpu_hour(tokens_per_second: Any, gpus: int) -> float | None:
    """Current throughput per GPU-hour: all ranks' tokens/s × 3600 / GPUs in the job; None without GPUs or data."""
    tps = _number(tokens_per_second)
    if not tps or gpus <= 0:
        return None
    return tps * 3600.0 / gpus


def estimated_cost(gpu_seconds: float, gpu_type: str | None, prices: Mapping[str, float]) -> float | None:
    """GPU-hours × the price of ``gpu_type``; None when the table has no price for it."""
    if not gpu_type or gpu_type not in prices:
        return None
    return gpu_seconds / 3600.0 * prices[gpu_type]


def parse_prices(text: str | None) -> dict[str, float]:
    """The price table from ``--gpu-hour-prices`` / ``KUBETUNE_GPU_HOUR_PRICES``: a JSON object gpuType → price."""
    if not text or not text.strip():
        return {}
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--gpu-hour-prices: not a JSON object ({exc.msg}); e.g. '{{\"H100-80GB\": 2.5}}'") from None
    if not isinstance(table, dict):
        raise ValueError("--gpu-hour-prices: expected a JSON object gpuType → price per GPU-hour")  # noqa: TRY004
    out: dict[str, float] = {}
    for gpu, price in table.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or not math.isfinite(price) or price < 0:
            raise ValueError(f"--gpu-hour-prices: the price of {gpu!r} must be a number >= 0, got {price!r}")
        out[str(gpu)] = float(price)
    return out


def cost_status(
    previous: Mapping[str, Any] | None,
    spec: Mapping[str, Any],
    pods: Iterable[Mapping[str, Any]],
    tokens_per_second: float | None,
    prices: Mapping[str, float],
    now: dt.datetime,
    eta_seconds: float | None = None,
) -> dict[str, Any]:
    """``status.cost`` (camelCase) for this pass; totals never below the previous ones (deleted pods). With the
    trainer's ETA (measured steps), the projection to the end of the run: GPU-hours and, with a price, cost."""
    resources = spec.get("resources") if isinstance(spec, Mapping) else None
    resources = resources if isinstance(resources, Mapping) else {}  # any shape: an invalid spec is reported elsewhere
    gpus_per_node = _count(resources.get("gpusPerNode", 1), 1)
    nodes = max(_count(resources.get("nodes", 1), 1), 1)
    gpu_type = resources.get("gpuType") if isinstance(resources.get("gpuType"), str) else None
    node_s, gpu_s = usage(pods, gpus_per_node, now)
    old = previous if isinstance(previous, Mapping) else {}
    node_s = max(node_s, _number(old.get("nodeSeconds")))
    gpu_s = max(gpu_s, _number(old.get("gpuSeconds")))
    out: dict[str, Any] = {
        "nodeSeconds": round(node_s, 1),
        "gpuSeconds": round(gpu_s, 1),
        "gpuHours": round(gpu_s / 3600.0, 4),
    }
    rate = tokens_per_gpu_hour(tokens_per_second, gpus_per_node * nodes)
    if rate is not None:
        out["tokensPerGpuHour"] = round(rate)
    elif _number(old.get("tokensPerGpuHour")):
        out["tokensPerGpuHour"] = old["tokensPerGpuHour"]
    price = estimated_cost(gpu_s, gpu_type, prices)
    if price is not None:
        out["estimatedCost"] = round(price, 4)
    eta = _number(eta_seconds)
    if eta:
        projected = gpu_s + eta * gpus_per_node * nodes
        out["projectedGpuHours"] = round(projected / 3600.0, 4)
        projected_price = estimated_cost(projected, gpu_type, prices)
        if projected_price is not None:
            out["projectedCost"] = round(projected_price, 4)
    return out


def _count(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 1024 else default


def _number(value: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    return float(value) if ok else 0.0
