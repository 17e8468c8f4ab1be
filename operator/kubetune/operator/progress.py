"""Training progress pulled from the rank-0 pod's Prometheus endpoint into ``status.progress``.

The operator scrapes ``http://<rank-0 pod IP>:<metrics port>/metrics`` on its resync (every sync
interval), so training pods need no API token or RBAC. Parsing is pure; :func:`scrape` does one GET.
"""

from __future__ import annotations

import math
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.conditions import EXIT_STALLED, ConditionType, Reason
from kubetune.api.metrics import (
    CHECKPOINT_LAST_STEP,
    DATASET_ROWS,
    DIVERGED,
    MEMORY_ESTIMATE_BYTES,
    PROGRESS_FIELDS,
    ROLLBACKS_TOTAL,
    format_duration,
)

INT_FIELDS = {"step", "totalSteps"}


def parse(text: str) -> dict[str, float]:
    """Metric name → value of the first sample of every trainer gauge named in PROGRESS_FIELDS."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in PROGRESS_FIELDS and sample.name not in values and math.isfinite(sample.value):
                values[sample.name] = sample.value
    return values


def progress(values: dict[str, float]) -> dict[str, Any]:
    """``status.progress`` (camelCase) from scraped values; percent and eta derived."""
    out: dict[str, Any] = {}
    for metric, field in PROGRESS_FIELDS.items():
        if metric in values:
            v = values[metric]
            out[field] = int(v) if field in INT_FIELDS else round(v, 6)
    if out.get("totalSteps"):
        out["percent"] = round(100.0 * out.get("step", 0) / out["totalSteps"], 1)
    if "etaSeconds" in out:
        out["etaSeconds"] = round(out["etaSeconds"], 1)
        out["eta"] = format_duration(out["etaSeconds"])
    return out


def rank0_url(pods: list[dict[str, Any]], port: int) -> str | None:
    """Metrics URL of the running rank-0 pod, if it has an IP yet."""
    for pod in pods:
        index = (pod.get("metadata", {}).get("annotations") or {}).get("batch.kubernetes.io/job-completion-index")
        st = pod.get("status") or {}
        if index == "0" and st.get("phase") == "Running" and st.get("podIP"):
            host = st["podIP"]
            host = f"[{host}]" if ":" in host else host
            return f"http://{host}:{port}/metrics"
    return None


def facts(text: str, output_uri: str | None = None) -> dict[str, Any]:
    """Status fields besides progress: ``datasets`` (rows read/valid/dropped per dataset), ``memoryEstimateGib``
    (from the model's real config), ``lastCheckpoint`` (``<output>/checkpoints/step-N``), ``guard`` (rollbacks)."""
    out: dict[str, Any] = {}
    datasets: dict[str, dict[str, str | int]] = {}  # name -> {"name", "rows", "valid", "dropped"}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not math.isfinite(sample.value):
                continue
            if sample.name == MEMORY_ESTIMATE_BYTES:
                out["memoryEstimateGib"] = round(sample.value / 2**30, 2)
            elif sample.name == DATASET_ROWS and {"dataset", "state"} <= set(sample.labels):
                field = {"read": "rows", "valid": "valid", "dropped": "dropped"}.get(sample.labels["state"])
                if field:
                    datasets.setdefault(sample.labels["dataset"], {"name": sample.labels["dataset"]})[field] = int(
                        sample.value
                    )
            elif sample.name == CHECKPOINT_LAST_STEP and sample.value > 0 and output_uri:
                out["lastCheckpoint"] = f"{output_uri.rstrip('/')}/checkpoints/step-{int(sample.value)}"
            elif sample.name == ROLLBACKS_TOTAL:
                out.setdefault("guard", {"rollbacks": 0, "diverged": False})["rollbacks"] = int(sample.value)
            elif sample.name == DIVERGED and sample.value > 0 and "reason" in sample.labels:
                out.setdefault("guard", {"rollbacks": 0, "diverged": False}).update(
                    diverged=True, reason=sample.labels["reason"]
                )
    if datasets:
        out["datasets"] = [datasets[name] for name in sorted(datasets)]
    if "guard" in out and not out["guard"]["rollbacks"] and not out["guard"]["diverged"]:
        del out["guard"]  # no rollback yet: nothing to show
    return out


async def scrape(url: str, timeout: float = 3.0, output_uri: str | None = None) -> dict[str, Any]:
    """GET the metrics page: ``{"progress": {...}, **facts}`` for the status; raises on network errors."""
    import aiohttp

    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session,
        session.get(url) as resp,
    ):
        resp.raise_for_status()
        text = await resp.text()
    return {"progress": progress(parse(text)), **facts(text, output_uri)}


def guard_status(
    previous: dict[str, Any] | None, new: dict[str, Any], at: str
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """``new`` with the divergence guard's ``Diverged`` condition, and a Warning Event per new rollback. Pure.

    ``new["guard"]`` is this pass's scrape; a pass without one keeps the previous guard status and condition (the
    condition list is rebuilt every pass), so the condition lasts as long as the trainer reports it."""
    previous = previous if isinstance(previous, dict) else {}
    old_guard = prev_guard if isinstance(prev_guard := previous.get("guard"), dict) else {}
    old_conds = prev_conds if isinstance(prev_conds := previous.get("conditions"), list) else []
    old_cond = next(
        (c for c in old_conds if isinstance(c, dict) and c.get("type") == ConditionType.DIVERGED.value), None
    )
    guard = new.get("guard") or (old_guard if old_guard else None)
    if not guard or (not guard.get("rollbacks") and old_cond is None):
        return new, []
    events: list[tuple[str, str, str]] = []
    rollbacks = _int(guard.get("rollbacks"))
    if "guard" in new and rollbacks > _int(old_guard.get("rollbacks")):
        latest = guard.get("reason") or "divergence"
        events.append(
            (
                "Warning",
                Reason.ROLLED_BACK,
                (
                    f"divergence guard: {rollbacks} rollback(s) so far, latest for {latest}; batches skipped, "
                    "weights restored, learning rate cut (spec.training.guard)"
                ),
            )
        )
    diverged = bool(guard.get("diverged"))
    status = "True" if diverged else "False"
    reason, message = (
        (Reason.ROLLED_BACK, f"rolled back {rollbacks} time(s), latest for {guard.get('reason')}")
        if diverged
        else (Reason.RECOVERED, f"training recovered after {rollbacks} rollback(s)")
    )
    since = old_cond.get("lastTransitionTime") if old_cond and old_cond.get("status") == status else None
    cond = {
        "type": ConditionType.DIVERGED.value,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since or at,
    }
    conditions = [c for c in new.get("conditions") or [] if c.get("type") != ConditionType.DIVERGED.value]
    return {**new, "guard": guard, "conditions": [*conditions, cond]}, events


def _int(value: Any) -> int:
    return (
        int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else 0
    )


def stall_status(
    previous: dict[str, Any] | None, new: dict[str, Any], pods: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """``status.lastStall`` from the newest trainer pod that the hang watchdog ended (exit 75; the Job retries
    it): the pod, when, and the head of its termination message (the stuck frames); a Warning Event
    (TrainerStalled) once per such pod. Pure."""
    previous = previous if isinstance(previous, dict) else {}
    stalls = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if term.get("exitCode") == EXIT_STALLED:
                stalls.append(
                    (
                        str(term.get("finishedAt") or ""),
                        (pod.get("metadata") or {}).get("name", ""),
                        str(term.get("message") or ""),
                    )
                )
    old = previous.get("lastStall") if isinstance(previous.get("lastStall"), dict) else None
    if not stalls:
        return ({**new, "lastStall": old} if old else new), []
    at, pod, message = max(stalls)
    stall = {"pod": pod, "finishedAt": at or None, "message": message[:1024]}
    events = (
        []
        if old and old.get("pod") == pod
        else [("Warning", Reason.TRAINER_STALLED, f"pod {pod}: {message[:900]}" if message else f"pod {pod} stalled")]
    )
    return {**new, "lastStall": stall}, events
