"""The operator's own Prometheus metrics (names from :mod:`kubetune.api.metrics`) on ``/metrics``."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune.api import metrics as names
from kubetune.api.conditions import Phase

REGISTRY = CollectorRegistry(auto_describe=True)

JOBS = Gauge(names.OPERATOR_JOBS, "FineTuneJobs seen by this operator, by phase.", ["phase"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram(
    names.OPERATOR_RECONCILE_SECONDS, "Time spent in one reconcile pass.", ["handler"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
API_ERRORS = Counter(names.OPERATOR_API_ERRORS, "Failed Kubernetes API calls.", ["verb", "code"], registry=REGISTRY)
POLL_FAILURES = Counter(
    names.OPERATOR_PROGRESS_POLL_FAILURES, "Failed scrapes of a trainer's metrics endpoint.", registry=REGISTRY
)

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


def serve(port: int, addr: str = "0.0.0.0") -> None:
    if port:
        start_http_server(port, addr=addr, registry=REGISTRY)
