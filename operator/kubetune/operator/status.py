"""FineTuneJob status from observations: phase, kstatus conditions, the Job's outcome.

Pure functions over plain dicts. kstatus semantics (read by Argo CD and Flux):

- ``Ready=True`` only when the training Succeeded;
- ``Reconciling=True`` while the job is Pending or Running (work in progress);
- ``Stalled=True`` when it cannot make progress (Failed, invalid spec, spec changed after start);
- ``observedGeneration`` on the status and on every condition.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from kubetune.api.conditions import ConditionType as C
from kubetune.api.conditions import Phase, Reason
from kubetune.api.redact import redact

TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value)
CONDITION_ORDER = (C.READY, C.RECONCILING, C.STALLED, C.VALIDATED, C.WAITING, C.RUNNING, C.SUCCEEDED, C.FAILED, C.SUSPENDED)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Verdict:
    """What the operator concluded about one FineTuneJob in this pass."""

    phase: str
    reason: str
    message: str = ""
    valid: bool = True
    invalid_reason: str = Reason.VALID
    invalid_message: str = "spec is valid"
    waiting: tuple[str, str] | None = None  # (reason, message)
    stalled: tuple[str, str] | None = None  # (reason, message) beyond a Failed phase


def conditions(verdict: Verdict, previous: list[dict[str, Any]] | None, generation: int | None, at: str) -> list[dict[str, Any]]:
    """Every condition type, in a fixed order; lastTransitionTime kept while the status is unchanged."""
    v = verdict
    phase = v.phase
    stalled = v.stalled or ((v.reason, v.message) if phase == Phase.FAILED.value else None)
    if not v.valid:
        stalled = (v.invalid_reason, v.invalid_message)
    want: dict[str, tuple[bool, str, str]] = {
        C.READY: (phase == Phase.SUCCEEDED.value, v.reason, v.message),
        C.RECONCILING: (phase in (Phase.PENDING.value, Phase.RUNNING.value) and stalled is None, v.reason, v.message),
        C.STALLED: (stalled is not None, *(stalled or ("", ""))),
        C.VALIDATED: (v.valid, v.invalid_reason, v.invalid_message),
        C.WAITING: (v.waiting is not None, *(v.waiting or ("", ""))),
        C.RUNNING: (phase == Phase.RUNNING.value, v.reason, v.message),
        C.SUCCEEDED: (phase == Phase.SUCCEEDED.value, v.reason, v.message),
        C.FAILED: (phase == Phase.FAILED.value, v.reason, v.message),
        C.SUSPENDED: (phase == Phase.SUSPENDED.value, v.reason, v.message),
    }
    old = {c.get("type"): c for c in previous or []}
    out: list[dict[str, Any]] = []
    for ctype in CONDITION_ORDER:
        flag, reason, message = want[ctype]
        if not flag and ctype not in (C.READY, C.RECONCILING, C.VALIDATED):
            reason, message = f"Phase{phase}", f"phase is {phase}"
        status = "True" if flag else "False"
        prev = old.get(ctype.value)
        since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
        cond = {"type": ctype.value, "status": status, "reason": reason or f"Phase{phase}", "message": message,
                "lastTransitionTime": since or at}
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def condition(status: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    for c in (status or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return c
    return None


# ---------------------------------------------------------------------------------------------- the Job's outcome


def _job_condition(job: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype and c.get("status") == "True":
            return c
    return None


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The trainer's own words: the termination message of the failed pod, rank 0 first."""
    def rank(p: dict[str, Any]) -> str:
        return (p.get("metadata", {}).get("annotations") or {}).get("batch.kubernetes.io/job-completion-index", "9")

    for pod in sorted(pods, key=rank):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term.get("exitCode") not in (None, 0) and term.get("message"):
                return redact(str(term["message"]).strip())  # a trainer older than the redaction may echo a URL
    return None


def restarts(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> int:
    failed = int(((job or {}).get("status") or {}).get("failed") or 0)
    in_pod = sum(int(cs.get("restartCount") or 0) for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or [])
    return failed + in_pod


POD_PENDING_MESSAGE = "waiting for the training pods to start"


def job_verdict(job: dict[str, Any], pods: list[dict[str, Any]], *, user_suspended: bool, queued: bool) -> Verdict:
    """Phase and reason of a FineTuneJob whose training Job exists."""
    status = job.get("status") or {}
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        return Verdict(Phase.SUCCEEDED.value, Reason.COMPLETED, "training finished; artifacts written")
    failed = _job_condition(job, "Failed")
    if failed:
        why = termination_message(pods) or failed.get("message") or "the training Job failed"
        if failed.get("reason") == "DeadlineExceeded":
            return Verdict(Phase.FAILED.value, Reason.DEADLINE_EXCEEDED, why)
        return Verdict(Phase.FAILED.value, Reason.JOB_FAILED, why)
    if (job.get("spec") or {}).get("suspend"):
        if user_suspended or not queued:
            return Verdict(Phase.SUSPENDED.value, Reason.SUSPENDED, "spec.suspend is true; pods are stopped")
        return Verdict(Phase.PENDING.value, Reason.QUEUED, "waiting for Kueue to admit the Job")
    phases = [(p.get("status") or {}).get("phase") for p in pods]
    running = phases.count("Running") if int(status.get("active") or 0) > 0 else 0
    # a pod that finished its training stays counted until the Job controller marks the Job Complete
    # (without it, the FineTuneJob would drop back to Pending in between)
    started = running + phases.count("Succeeded")
    if started:
        return Verdict(Phase.RUNNING.value, Reason.TRAINING, f"{started} of {job['spec'].get('parallelism', 1)} pods started")
    return Verdict(Phase.PENDING.value, Reason.POD_PENDING, POD_PENDING_MESSAGE)


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch turning ``old`` into ``new`` at the top level (empty when nothing changed)."""
    old = old or {}
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new and old[k] is not None})
    return patch
