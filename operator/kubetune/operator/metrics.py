"""The operator's own Prometheus metrics (names from :mod:`kubetune.api.metrics`) on ``/metrics``."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api import metrics as names
from kubetune.api.conditions import Phase

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge(names.OPERATOR_JOBS, "FineTuneJobs seen by this operator, by phase.", ["phase"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    names.OPERATOR_RECONCILE_SECONDS,
    "Time spent in one reconcile pass.",
    ["handler"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_ERRORS = Counter(names.OPERATOR_API_ERRORS, "Failed Kubernetes API calls.", ["verb", "code"], registry=REGISTRY)
POLL_FAILURES = Counter(
    names.OPERATOR_PROGRESS_POLL_FAILURES, "Failed scrapes of a trainer's metrics endpoint.", registry=REGISTRY
)

COST_LABELS = ["namespace", "job", "gpu_type"]
GPU_SECONDS = Counter(
    names.JOB_GPU_SECONDS.removesuffix("_total"),
    "GPU-seconds used by a FineTuneJob's pods.",
    COST_LABELS,
    registry=REGISTRY,
)
NODE_SECONDS = Counter(
    names.JOB_NODE_SECONDS.removesuffix("_total"), "Seconds a FineTuneJob's pods ran.", COST_LABELS, registry=REGISTRY
)
ESTIMATED_COST = Gauge(
    names.JOB_ESTIMATED_COST, "Estimated cost of a FineTuneJob (operator price table).", COST_LABELS, registry=REGISTRY
)
TOKENS_PER_GPU_HOUR = Gauge(
    names.JOB_TOKENS_PER_GPU_HOUR, "Current training tokens per GPU-hour.", COST_LABELS, registry=REGISTRY
)
EVALUATION = Gauge(
    names.JOB_EVALUATION,
    "A FineTuneJob's evaluation (spec.evaluation), base and trained model side by side.",
    ["namespace", "job", "model", "metric"],
    registry=REGISTRY,
)
PROMOTED = Gauge(
    names.JOB_PROMOTED,
    "1 when the trained model passed the evaluation gate, 0 when it failed it.",
    ["namespace", "job"],
    registry=REGISTRY,
)
_cost_seen: dict[tuple[str, str], tuple[float, float]] = {}  # (namespace, name) -> (gpu, node) seconds counted

_phases: dict[tuple[str, str], str] = {}  # (namespace, name) -> phase


def observe_phase(namespace: str, name: str, phase: str | None) -> None:
    """Record the phase of one FineTuneJob (None: forget it) and refresh the per-phase gauge."""
    key = (namespace, name)
    if phase is None:
        _phases.pop(key, None)
    else:
        _phases[key] = phase
    for p in Phase:
        JOBS.labels(phase=p.value).set(sum(1 for v in _phases.values() if v == p.value))


def observe_cost(namespace: str, name: str, gpu_type: str | None, cost: dict[str, Any] | None) -> None:
    """Advance the per-job counters to ``status.cost`` (totals only grow) and set the gauges."""
    if not cost:
        return
    labels = {"namespace": namespace, "job": name, "gpu_type": gpu_type or ""}
    gpu, node = _cost_seen.get((namespace, name), (0.0, 0.0))
    new_gpu, new_node = float(cost.get("gpuSeconds") or 0.0), float(cost.get("nodeSeconds") or 0.0)
    GPU_SECONDS.labels(**labels).inc(max(0.0, new_gpu - gpu))
    NODE_SECONDS.labels(**labels).inc(max(0.0, new_node - node))
    _cost_seen[(namespace, name)] = (max(gpu, new_gpu), max(node, new_node))
    if cost.get("estimatedCost") is not None:
        ESTIMATED_COST.labels(**labels).set(cost["estimatedCost"])
    if cost.get("tokensPerGpuHour") is not None:
        TOKENS_PER_GPU_HOUR.labels(**labels).set(cost["tokensPerGpuHour"])


def observe_evaluation(namespace: str, name: str, evaluation: dict[str, Any] | None) -> None:
    """Set the evaluation gauges from ``status.evaluation`` (nothing before the job has one)."""
    if not evaluation:
        return
    PROMOTED.labels(namespace=namespace, job=name).set(1 if evaluation.get("promoted") else 0)
    for model in ("base", "trained"):
        scores = evaluation.get(model) or {}
        for key, metric in names.EVALUATION_METRICS.items():
            if scores.get(key) is not None:
                EVALUATION.labels(namespace=namespace, job=name, model=model, metric=metric).set(scores[key])


def serve(port: int, addr: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
