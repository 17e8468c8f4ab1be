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

from kubetune.api.conditions import EVALUATION_LINE, EXIT_GATE_FAILED, ConditionType, Phase, Reason
from kubetune.api.redact import redact

TERMINAL = (Phase.SUCCEEDED.value, Phase.FAILED.value)
CONDITION_ORDER = (
    ConditionType.READY,
    ConditionType.RECONCILING,
    ConditionType.STALLED,
    ConditionType.VALIDATED,
    ConditionType.WAITING,
    ConditionType.RUNNING,
    ConditionType.SUCCEEDED,
    ConditionType.FAILED,
    ConditionType.SUSPENDED,
)


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


def conditions(
    verdict: Verdict, previous: list[dict[str, Any]] | None, generation: int | None, at: str
) -> list[dict[str, Any]]:
    """Every condition type, in a fixed order; lastTransitionTime kept while the status is unchanged."""
    v = verdict
    phase = v.phase
    stalled = v.stalled or ((v.reason, v.message) if phase == Phase.FAILED.value else None)
    if not v.valid:
        stalled = (v.invalid_reason, v.invalid_message)
    want: dict[str, tuple[bool, str, str]] = {
        ConditionType.READY: (phase == Phase.SUCCEEDED.value, v.reason, v.message),
        ConditionType.RECONCILING: (
            phase in (Phase.PENDING.value, Phase.RUNNING.value) and stalled is None,
            v.reason,
            v.message,
        ),
        ConditionType.STALLED: (stalled is not None, *(stalled or ("", ""))),
        ConditionType.VALIDATED: (v.valid, v.invalid_reason, v.invalid_message),
        ConditionType.WAITING: (v.waiting is not None, *(v.waiting or ("", ""))),
        ConditionType.RUNNING: (phase == Phase.RUNNING.value, v.reason, v.message),
        ConditionType.SUCCEEDED: (phase == Phase.SUCCEEDED.value, v.reason, v.message),
        ConditionType.FAILED: (phase == Phase.FAILED.value, v.reason, v.message),
        ConditionType.SUSPENDED: (phase == Phase.SUSPENDED.value, v.reason, v.message),
    }
    old = {c.get("type"): c for c in previous or []}
    out: list[dict[str, Any]] = []
    for ctype in CONDITION_ORDER:
        flag, reason, message = want[ctype]
        if not flag and ctype not in (ConditionType.READY, ConditionType.RECONCILING, ConditionType.VALIDATED):
            reason, message = f"Phase{phase}", f"phase is {phase}"
        status = "True" if flag else "False"
        prev = old.get(ctype.value)
        since = prev.get("lastTransitionTime") if prev and prev.get("status") == status else None
        cond = {
            "type": ctype.value,
            "status": status,
            "reason": reason or f"Phase{phase}",
            "message": message,
            "lastTransitionTime": since or at,
        }
        if generation is not None:
            cond["observedGeneration"] = generation
        out.append(cond)
    return out


def condition(status: dict[str, Any] | None, ctype: str) -> dict[str, Any] | None:
    conds: list[dict[str, Any]] = (status or {}).get("conditions") or []
    for c in conds:
        if c.get("type") == ctype:
            return c
    return None


# ---------------------------------------------------------------------------------------------- the Job's outcome


def _job_condition(job: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    conds: list[dict[str, Any]] = (job.get("status") or {}).get("conditions") or []
    for c in conds:
        if c.get("type") == ctype and c.get("status") == "True":
            return c
    return None


def _rank(p: dict[str, Any]) -> str:
    annotations: dict[str, str] = p.get("metadata", {}).get("annotations") or {}
    return annotations.get("batch.kubernetes.io/job-completion-index", "9")


def _container_statuses(pod: dict[str, Any]) -> list[dict[str, Any]]:
    st = pod.get("status") or {}
    return [*(st.get("initContainerStatuses") or []), *(st.get("containerStatuses") or [])]


def _oom_message(pod: dict[str, Any], cs: dict[str, Any]) -> str:
    name = (pod.get("metadata") or {}).get("name", "?")
    limit = ""
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == cs.get("name"):
            limit = ((c.get("resources") or {}).get("limits") or {}).get("memory") or ""
    return (
        f"container {cs.get('name', 'trainer')} of pod {name} was OOMKilled (exit code 137)"
        + (f": it used more than its memory limit {limit}" if limit else "")
        + "; raise spec.resources.memory, or lower training.batchSize / training.cutoffLen"
    )


def termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The trainer's own words: the termination message of the failed pod, rank 0 first; an OOMKilled container
    (which writes none; the log tail is no explanation) is named as such."""
    for pod in sorted(pods, key=_rank):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                return _oom_message(pod, cs)
            if term.get("exitCode") not in (None, 0) and term.get("message"):
                # a trainer older than the redaction may echo a URL; the evaluation's JSON line goes to
                # status.evaluation, not into a condition message
                text = "\n".join(
                    line for line in str(term["message"]).splitlines() if not line.startswith(EVALUATION_LINE)
                )
                return redact(text.strip())
    return None


def _terminations(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The trainer containers' terminated states, rank 0 first."""
    out = []
    for pod in sorted(pods, key=_rank):
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
            if term:
                out.append(term)
    return out


def evaluation_report(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``status.evaluation``: the evaluation line of the trainer's termination message (spec.evaluation), checked
    against the API's shape; None when no pod carries one (or it is not that shape)."""
    import json

    from pydantic import ValidationError

    from kubetune.api.v1alpha1 import EvaluationStatus

    for term in _terminations(pods):
        for line in reversed(str(term.get("message") or "").splitlines()):
            if not line.startswith(EVALUATION_LINE):
                continue
            try:
                report = EvaluationStatus.model_validate(json.loads(line[len(EVALUATION_LINE) :]))
            except (ValueError, ValidationError):
                break
            return report.model_dump(by_alias=True, exclude_none=True, mode="json")
    return None


def gate_failed(pods: list[dict[str, Any]]) -> bool:
    """Whether a trainer ended with the evaluation gate's exit code (spec.evaluation)."""
    return any(term.get("exitCode") == EXIT_GATE_FAILED for term in _terminations(pods))


@dataclass(frozen=True)
class PodProblem:
    """Why a training pod does not start (or was killed): condition reason, message naming the cause, and whether
    it needs someone to act (Stalled) rather than time (Waiting only)."""

    reason: str
    message: str
    stalled: bool


IMAGE_ERRORS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "RegistryUnavailable",
    "SignatureValidationFailed",
}
CONFIG_ERRORS = {"CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
MOUNT_EVENTS = {"FailedMount", "FailedAttachVolume", "FailedMapVolume"}
CREATING = {"ContainerCreating", "PodInitializing"}


def _pod_name(pod: dict[str, Any]) -> str:
    return str((pod.get("metadata") or {}).get("name", "?"))


def _image(pod: dict[str, Any], container: str) -> str:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == container:
            return str(c.get("image", ""))
    return ""


def pod_problem(pods: list[dict[str, Any]], pod_events: list[dict[str, Any]] | None = None) -> PodProblem | None:
    """The first reason a training pod is not running, rank 0 first: a container it cannot create (image pull,
    missing Secret/ConfigMap key), an OOMKill, a volume it cannot mount (from the pod's Warning Events, which is
    where the kubelet reports it), or no node that fits (the scheduler's condition)."""
    for pod in sorted(pods, key=_rank):
        name = _pod_name(pod)
        for cs in _container_statuses(pod):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            why, detail = waiting.get("reason") or "", (waiting.get("message") or "").strip()
            if why in IMAGE_ERRORS:
                image = cs.get("image") or _image(pod, cs.get("name", ""))
                return PodProblem(
                    Reason.IMAGE_PULL_FAILED,
                    f"pod {name} cannot pull image {image!r}: {why}"
                    + (f": {detail}" if detail else "")
                    + "; check spec.resources.image, the registry "
                    "and its pull secret",
                    stalled=True,
                )
            if why in CONFIG_ERRORS:
                return PodProblem(
                    Reason.CONTAINER_CONFIG_ERROR,
                    f"pod {name} cannot start container "
                    f"{cs.get('name', 'trainer')}: {why}" + (f": {detail}" if detail else ""),
                    stalled=True,
                )
            for state in ("state", "lastState"):
                if ((cs.get(state) or {}).get("terminated") or {}).get("reason") == "OOMKilled":
                    return PodProblem(Reason.OOM_KILLED, _oom_message(pod, cs), stalled=False)
    uids = {(p.get("metadata") or {}).get("uid"): p for p in pods}
    for event in pod_events or []:
        involved = event.get("involvedObject") or {}
        if event.get("type") == "Warning" and event.get("reason") in MOUNT_EVENTS and involved.get("uid") in uids:
            return PodProblem(
                Reason.MOUNT_FAILED,
                f"pod {involved.get('name', '?')} cannot mount its volumes: "
                f"{str(event.get('message') or event.get('reason')).strip()}",
                stalled=True,
            )
    for pod in sorted(pods, key=_rank):
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
                return PodProblem(
                    Reason.UNSCHEDULABLE,
                    f"pod {_pod_name(pod)} cannot be scheduled: {(c.get('message') or 'no node fits').strip()}",
                    stalled=False,
                )
    return None


def stuck_creating(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Scheduled pods whose containers are still being created: only their Events can say why (failed mounts)."""
    out = []
    for pod in pods:
        st = pod.get("status") or {}
        if st.get("phase") != "Pending" or not (pod.get("spec") or {}).get("nodeName"):
            continue
        statuses = _container_statuses(pod)
        if not statuses or all(
            ((cs.get("state") or {}).get("waiting") or {}).get("reason") in CREATING for cs in statuses
        ):
            out.append(pod)
    return out


def truncate_utf8(text: str, limit: int = 1024) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes (the API's limit on an Event message is in bytes), never inside
    a character; a cut text ends with an ellipsis."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode("utf-8", errors="ignore") + "\u2026"


def restarts(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> int:
    failed = int(((job or {}).get("status") or {}).get("failed") or 0)
    in_pod = sum(
        int(cs.get("restartCount") or 0) for p in pods for cs in (p.get("status") or {}).get("containerStatuses") or []
    )
    return failed + in_pod


POD_PENDING_MESSAGE = "waiting for the training pods to start"


def job_verdict(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    *,
    user_suspended: bool,
    queued: bool,
    pod_events: list[dict[str, Any]] | None = None,
) -> Verdict:
    """Phase and reason of a FineTuneJob whose training Job exists (``queued``: Kueue, not kubetune, decides when
    the Job runs)."""
    status = job.get("status") or {}
    if _job_condition(job, "Complete") or _job_condition(job, "SuccessCriteriaMet"):
        return Verdict(Phase.SUCCEEDED.value, Reason.COMPLETED, "training finished; artifacts written")
    failed = _job_condition(job, "Failed")
    if failed:
        why = termination_message(pods) or failed.get("message") or "the training Job failed"
        if failed.get("reason") == "DeadlineExceeded":
            return Verdict(Phase.FAILED.value, Reason.DEADLINE_EXCEEDED, why)
        if gate_failed(pods):
            return Verdict(Phase.FAILED.value, Reason.GATE_FAILED, why)
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
        return Verdict(
            Phase.RUNNING.value, Reason.TRAINING, f"{started} of {job['spec'].get('parallelism', 1)} pods started"
        )
    problem = pod_problem(pods, pod_events)
    if problem is not None:
        return Verdict(
            Phase.PENDING.value,
            problem.reason,
            problem.message,
            waiting=(problem.reason, problem.message),
            stalled=(problem.reason, problem.message) if problem.stalled else None,
        )
    return Verdict(Phase.PENDING.value, Reason.POD_PENDING, POD_PENDING_MESSAGE)


def status_patch(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The merge patch turning ``old`` into ``new`` at the top level (empty when nothing changed)."""
    old = old or {}
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update({k: None for k in old if k not in new and old[k] is not None})
    return patch
