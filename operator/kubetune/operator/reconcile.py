"""What to do with one FineTuneJob, decided from what was observed. Pure: no API calls, no kopf.

The handler calls :func:`parse` (spec → typed job, names, what to look up), fetches the
Job, pods, upstream FineTuneJobs and Secrets through :mod:`kubetune.operator.kube`, and
then :func:`decide` returns the whole new status, the children to ensure, a suspend
change for the Job, and the Events to post.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune.api.conditions import ConditionType, Phase, Reason
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.api.validation import InvalidFineTuneJob, parse_job
from kubetune.operator import status
from kubetune.operator.manifests import BuildOptions, MissingOutput, Resolved, build_all, output_uri, spec_hash
from kubetune.operator.manifests.job import credential_secrets
from kubetune.operator.manifests.labels import (
    GENERATION_ANNOTATION,
    QUEUE_LABEL,
    SPEC_HASH_ANNOTATION,
    SUSPENDED_BY_ANNOTATION,
    SUSPENDED_BY_KUBETUNE,
)
from kubetune.operator.manifests.names import job_name

Event = tuple[str, str, str]  # (type, reason, message)


@dataclass
class Parsed:
    name: str
    namespace: str
    generation: int | None
    job: FineTuneJob | None = None
    problems: list[str] = field(default_factory=list)
    output_uri: str | None = None
    upstream: dict[str, str] = field(default_factory=dict)  # field path -> FineTuneJob name
    secrets: list[str] = field(default_factory=list)
    spec_hash: str = ""

    @property
    def job_name(self) -> str:
        return job_name(self.name)


@dataclass
class Decision:
    status: dict[str, Any]
    children: list[dict[str, Any]] = field(default_factory=list)
    suspend_job: bool | None = None
    job_annotations: dict[str, str | None] = field(default_factory=dict)  # merge-patched onto the Job with suspend_job
    events: list[Event] = field(default_factory=list)
    poll_progress: bool = False
    output_uri: str | None = None  # parsed once here, for the progress scrape's lastCheckpoint


def _crash(where: str, exc: BaseException) -> str:
    """One line for an exception on the decision path (never a traceback, never the whole input)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"spec: the operator could not {where} this FineTuneJob: {type(exc).__name__}" + (
        f": {text}" if text else ""
    )


def parse(body: dict[str, Any], options: BuildOptions) -> Parsed:
    """The typed job and what to look up. Never raises: whatever the spec does to the parser (a value that
    overflows, a structure the schema would have refused) becomes a problem, so it ends as ``Validated=False``
    and one Event, not as a handler that kopf or the resync retries forever."""
    meta = body.get("metadata") or {}
    parsed = Parsed(
        name=str(meta.get("name", "")),
        namespace=str(meta.get("namespace") or "default"),
        generation=meta.get("generation") if isinstance(meta.get("generation"), int) else None,
    )
    spec = body.get("spec") or {}
    try:
        parsed.spec_hash = spec_hash(spec if isinstance(spec, dict) else {"spec": spec})
    except Exception as exc:  # noqa: BLE001 - see the docstring
        parsed.problems = [_crash("hash", exc)]
        return parsed
    doc = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {"name": parsed.name, "namespace": parsed.namespace},
        "spec": spec,
    }
    try:
        job = parse_job(doc)
    except InvalidFineTuneJob as exc:
        parsed.problems = [str(p) for p in exc.problems]
        return parsed
    except Exception as exc:  # noqa: BLE001
        parsed.problems = [_crash("validate", exc)]
        return parsed
    try:
        parsed.output_uri = output_uri(job, options)
    except MissingOutput as exc:
        parsed.problems = [f"{exc.path}: {exc}"]
        return parsed
    try:
        parsed.spec_hash = spec_hash(job.spec)  # the same hash the builders annotate the children with
        if job.spec.model.adapter is not None and job.spec.model.adapter.from_job:
            parsed.upstream["spec.model.adapter.fromJob"] = job.spec.model.adapter.from_job
        if job.spec.training.reward_model is not None and job.spec.training.reward_model.from_job:
            parsed.upstream["spec.training.rewardModel.fromJob"] = job.spec.training.reward_model.from_job
        ev = job.spec.evaluation
        if ev is not None and ev.reward_model is not None and ev.reward_model.from_job:
            parsed.upstream["spec.evaluation.rewardModel.fromJob"] = ev.reward_model.from_job
        parsed.secrets = credential_secrets(job, options)
    except Exception as exc:  # noqa: BLE001
        parsed.problems = [_crash("read", exc)]
        parsed.upstream, parsed.secrets = {}, []
        return parsed
    parsed.job = job
    return parsed


def queue_name(body: dict[str, Any]) -> str | None:
    """The Kueue LocalQueue: ``spec.queueName``, else the ``kueue.x-k8s.io/queue-name`` label a Kueue user puts
    on the object they submit (the FineTuneJob); kubetune puts it on the Job itself, never by copying labels."""
    spec = body.get("spec") or {}
    labels = (body.get("metadata") or {}).get("labels") or {}
    name = spec.get("queueName") if isinstance(spec, dict) else None
    return str(name or labels.get(QUEUE_LABEL) or "") or None


def owned_by(obj: dict[str, Any] | None, uid: str) -> bool:
    """``obj`` is a child of the object with ``uid`` (its ownerReferences, not a label: after a delete and
    re-create with the same name, the old object's children keep the name and labels until collected)."""
    refs = ((obj or {}).get("metadata") or {}).get("ownerReferences") or []
    return bool(uid) and any(r.get("uid") == uid for r in refs)


def rejected(
    body: dict[str, Any],
    parsed: Parsed,
    kind: str,
    name: str,
    code: int,
    reason: str,
    message: str,
    *,
    at: str | None = None,
) -> Decision:
    """The API server refused to create a child (quota, admission, a field it finds invalid): the FineTuneJob
    fails with ``Stalled=True, reason ChildRejected`` and the server's words, and one Warning Event. Nothing is
    retried until the spec changes (a new generation): the same request would be refused again."""
    at = at or status.now()
    old = dict(body.get("status") or {})
    text = f"the API server refused to create {kind} {parsed.namespace}/{name}: {code} {reason}: {message}"
    invalid = code in (400, 422)  # the spec rendered into a field the API finds invalid (not quota, not RBAC)
    verdict = status.Verdict(
        Phase.FAILED.value,
        Reason.CHILD_REJECTED,
        text,
        stalled=(Reason.CHILD_REJECTED, text),
        valid=not invalid,
        invalid_reason=Reason.CHILD_REJECTED if invalid else Reason.VALID,
        invalid_message=text if invalid else "spec is valid",
    )
    new = {
        "phase": verdict.phase,
        "conditions": status.conditions(verdict, old.get("conditions"), parsed.generation, at),
        "observedGeneration": parsed.generation,
    }
    return Decision(status=new, events=_events(old, new, verdict))


def crashed(body: dict[str, Any], parsed: Parsed | None, exc: BaseException, *, at: str | None = None) -> Decision:
    """Any other exception while deciding or building: ``Validated=False`` (reason UnprocessableSpec) and
    ``Stalled=True`` with one line naming it, and one Event; the phase keeps what the Job shows."""
    at = at or status.now()
    old = dict(body.get("status") or {})
    meta = body.get("metadata") or {}
    msg = _crash("build", exc)
    phase: str = old["phase"] if old.get("jobName") and old.get("phase") else Phase.FAILED.value
    verdict = status.Verdict(
        phase, Reason.UNPROCESSABLE, msg, valid=False, invalid_reason=Reason.UNPROCESSABLE, invalid_message=msg
    )
    generation = parsed.generation if parsed else meta.get("generation")
    new = {
        **{k: v for k, v in old.items() if k not in ("phase", "conditions", "observedGeneration")},
        "phase": phase,
        "conditions": status.conditions(verdict, old.get("conditions"), generation, at),
        "observedGeneration": generation,
    }
    return Decision(status=new, events=_events(old, new, verdict))


def _stopped(body: dict[str, Any], parsed: Parsed) -> bool:
    """A child of this generation was refused: the status stays as written until the spec changes."""
    old = body.get("status") or {}
    stalled = status.condition(old, ConditionType.STALLED.value) or {}
    return (
        not old.get("jobName")
        and stalled.get("status") == "True"
        and stalled.get("reason") == Reason.CHILD_REJECTED
        and old.get("observedGeneration") == parsed.generation
    )


def _upstream(
    parsed: Parsed, upstream: dict[str, dict[str, Any] | None]
) -> tuple[status.Verdict | None, dict[str, str]]:
    """(a waiting/failed verdict, or None when every upstream job succeeded; field path -> artifact URI)."""
    sources: dict[str, str] = {}
    for path, name in parsed.upstream.items():
        up = upstream.get(name)
        if up is None:
            msg = f"{path}: FineTuneJob {name!r} not found in namespace {parsed.namespace}; waiting for it"
            return status.Verdict(
                Phase.PENDING.value, Reason.WAITING_FOR_JOB, msg, waiting=(Reason.WAITING_FOR_JOB, msg)
            ), {}
        ustatus = up.get("status") or {}
        phase = ustatus.get("phase")
        if phase == Phase.FAILED.value:
            why = (
                status.condition(ustatus, ConditionType.FAILED.value)
                or status.condition(ustatus, ConditionType.STALLED.value)
                or {}
            ).get("message", "")
            msg = f"{path}: FineTuneJob {name!r} failed" + (f": {why}" if why else "")
            return status.Verdict(Phase.FAILED.value, Reason.UPSTREAM_FAILED, msg), {}
        uri = (ustatus.get("artifacts") or {}).get("adapterUri")
        if phase != Phase.SUCCEEDED.value or not uri:
            msg = f"{path}: waiting for FineTuneJob {name!r} to succeed (phase {phase or 'unknown'})"
            return status.Verdict(
                Phase.PENDING.value, Reason.WAITING_FOR_JOB, msg, waiting=(Reason.WAITING_FOR_JOB, msg)
            ), {}
        sources[path] = uri
    return None, sources


def memory_estimate_gib(job: Any) -> float:
    """Per-GPU memory estimate from ``spec.model.parameters`` (the trainer replaces it with one from the real config)."""
    from kubetune.api.memory import ModelShape, estimate_for_spec, parse_parameters

    shape = ModelShape.for_model(job.spec.model.source, job.spec.model.parameters)
    if shape is None:
        shape = ModelShape.from_parameters(parse_parameters(job.spec.model.parameters))
    return round(estimate_for_spec(job.spec, shape).total_gib, 2)


def finished(body: dict[str, Any]) -> bool:
    """Training ended (Succeeded or Failed after its Job ran): the status is final, even once the Job is
    deleted by ``ttlSecondsAfterFinished``; a finished FineTuneJob is never trained again."""
    old = body.get("status") or {}
    return old.get("phase") in status.TERMINAL and bool(old.get("jobName"))


WARNING_WAITS = {
    Reason.UNSCHEDULABLE,
    Reason.IMAGE_PULL_FAILED,
    Reason.CONTAINER_CONFIG_ERROR,
    Reason.MOUNT_FAILED,
    Reason.OOM_KILLED,
    Reason.SUSPENDED_BY_QUEUE,
    Reason.PREVIOUS_CHILDREN,
}


def previous_children(
    body: dict[str, Any], parsed: Parsed, kind: str, name: str, *, at: str | None = None
) -> Decision:
    """A child's name is taken by a child of an earlier FineTuneJob of the same name (deleted, its children not yet
    collected): wait for the garbage collector, never adopt the old object or read its verdict."""
    at = at or status.now()
    old = dict(body.get("status") or {})
    msg = (
        f"{kind} {parsed.namespace}/{name} still belongs to an earlier FineTuneJob named {parsed.name}; waiting for "
        "the garbage collector to delete it"
    )
    verdict = status.Verdict(
        Phase.PENDING.value, Reason.PREVIOUS_CHILDREN, msg, waiting=(Reason.PREVIOUS_CHILDREN, msg)
    )
    new = {
        "phase": verdict.phase,
        "conditions": status.conditions(verdict, old.get("conditions"), parsed.generation, at),
        "observedGeneration": parsed.generation,
    }
    return Decision(status=new, events=_events(old, new, verdict))


def decide(
    body: dict[str, Any],
    parsed: Parsed,
    options: BuildOptions,
    *,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]] | None = None,
    upstream: dict[str, dict[str, Any] | None] | None = None,
    missing_secrets: list[str] | None = None,
    pod_events: list[dict[str, Any]] | None = None,
    at: str | None = None,
) -> Decision:
    """The whole new status, the children to ensure, a suspend change for the Job and the Events of this pass.

    Before the Job exists: the spec's problems, an upstream FineTuneJob or a Secret to wait for, or the children
    to create (:func:`_without_job`). Once it exists: what the Job and its pods show, with spec.suspend and spec
    changes applied to it (:func:`_with_job`). Then the status is assembled from that (:func:`_status`)."""
    at = at or status.now()
    pods = pods or []
    old = dict(body.get("status") or {})
    if finished(body) or (job is None and _stopped(body, parsed)):
        return Decision(status=old)
    queue = queue_name(body)
    if job is None:
        step = _without_job(parsed, options, queue, upstream or {}, missing_secrets or [])
    else:
        step = _with_job(body, parsed, options, queue, job, pods, pod_events)
    new = _status(old, parsed, step, job, pods, at)
    return Decision(
        status=new,
        children=step.children,
        suspend_job=step.suspend_job,
        job_annotations=step.job_annotations,
        events=_pass_events(old, new, step),
        poll_progress=step.verdict.phase == Phase.RUNNING.value,
        output_uri=parsed.output_uri,
    )


@dataclass
class _Step:
    """What :func:`decide` concluded about the Job, before the status is assembled."""

    verdict: status.Verdict
    children: list[dict[str, Any]] = field(default_factory=list)  # to create: ConfigMap, Service, Job
    created_hash: str | None = None  # the spec hash the Job was (or is being) built from
    suspend_job: bool | None = None
    job_annotations: dict[str, str | None] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- before the Job


def _without_job(
    parsed: Parsed,
    options: BuildOptions,
    queue: str | None,
    upstream: dict[str, dict[str, Any] | None],
    missing_secrets: list[str],
) -> _Step:
    """No Job yet: an invalid spec fails; an upstream FineTuneJob or a Secret not there yet waits; otherwise the
    children are built."""
    if parsed.problems:
        return _Step(_invalid_spec(parsed.problems))
    assert parsed.job is not None
    blocked, sources = _upstream(parsed, upstream)
    if blocked is None and missing_secrets:
        blocked = _secrets_missing(parsed, missing_secrets)
    if blocked is not None:
        return _Step(blocked)
    return _create_children(parsed, parsed.job, options, queue, sources)


def _invalid_spec(problems: list[str]) -> status.Verdict:
    msg = "; ".join(problems)
    return status.Verdict(
        Phase.FAILED.value,
        Reason.INVALID_SPEC,
        msg,
        valid=False,
        invalid_reason=Reason.INVALID_SPEC,
        invalid_message=msg,
    )


def _secrets_missing(parsed: Parsed, missing: list[str]) -> status.Verdict:
    msg = (
        f"Secret(s) {', '.join(missing)} not found in namespace {parsed.namespace}; "
        "create them (they are named by spec.model.credentialsSecret / spec.output.credentialsSecret)"
    )
    return status.Verdict(Phase.PENDING.value, Reason.SECRET_MISSING, msg, waiting=(Reason.SECRET_MISSING, msg))


def _create_children(
    parsed: Parsed, ftj: FineTuneJob, options: BuildOptions, queue: str | None, sources: dict[str, str]
) -> _Step:
    """The ConfigMap, Service and Job to create (the Job annotated with the generation and who suspends it), and
    the status the first look at the new Job will give."""
    assert parsed.output_uri is not None
    resolved = Resolved(
        output_uri=parsed.output_uri,
        adapter_source=sources.get("spec.model.adapter.fromJob"),
        reward_model_source=sources.get("spec.training.rewardModel.fromJob"),
        evaluation_reward_source=sources.get("spec.evaluation.rewardModel.fromJob"),
    )
    children = build_all(ftj, options, resolved, queue_name=queue)
    annotations = children[-1]["metadata"].setdefault("annotations", {})  # the Job's
    if parsed.generation is not None:
        annotations[GENERATION_ANNOTATION] = str(parsed.generation)
    if ftj.spec.suspend and not queue:  # suspended for the user, so kubetune may resume it
        annotations[SUSPENDED_BY_ANNOTATION] = SUSPENDED_BY_KUBETUNE
    if ftj.spec.suspend:
        verdict = status.Verdict(
            Phase.SUSPENDED.value, Reason.SUSPENDED, "spec.suspend is true; the Job is created suspended"
        )
    elif queue:
        verdict = status.Verdict(Phase.PENDING.value, Reason.QUEUED, f"Job created suspended for Kueue queue {queue}")
    else:
        # the status the first look at the new Job gives (pods pending), so that look writes nothing;
        # the Event says what this pass did
        verdict = status.Verdict(Phase.PENDING.value, Reason.POD_PENDING, status.POD_PENDING_MESSAGE)
    return _Step(verdict, children=children, created_hash=parsed.spec_hash)


# ---------------------------------------------------------------------------------------------- once the Job exists


@dataclass(frozen=True)
class _Suspension:
    """Who suspends the existing Job: the user (spec.suspend), kubetune on their behalf, or Kueue."""

    user: bool  # spec.suspend
    job: bool  # the Job's spec.suspend
    ours: bool  # the Job's suspension is kubetune's own, so kubetune may lift it
    queued: bool  # a queue name, Kueue's manageJobsWithoutQueueName or the Job's queue label
    managed: bool  # Kueue decides when the Job runs (queued, or suspended by someone else)


def _suspension(body: dict[str, Any], job: dict[str, Any], options: BuildOptions, queue: str | None) -> _Suspension:
    jmeta = job.get("metadata") or {}
    annotations = jmeta.get("annotations") or {}
    queued = bool(queue) or options.kueue_manages_all_jobs or QUEUE_LABEL in (jmeta.get("labels") or {})
    ours = annotations.get(SUSPENDED_BY_ANNOTATION) == SUSPENDED_BY_KUBETUNE
    if GENERATION_ANNOTATION not in annotations:  # built by a release before the annotation: its suspend was ours
        ours = ours or not queued
    job_suspended = bool((job.get("spec") or {}).get("suspend"))
    # Kueue decides when a queue-managed Job runs (it suspends it at creation and un-suspends it on admission):
    # a queue name, Kueue's manageJobsWithoutQueueName, or a suspension that is not kubetune's own
    return _Suspension(
        user=bool((body.get("spec") or {}).get("suspend")),
        job=job_suspended,
        ours=ours,
        queued=queued,
        managed=queued or (job_suspended and not ours),
    )


def _suspend_change(s: _Suspension, terminal: bool) -> tuple[bool | None, tuple[str, str] | None]:
    """(the Job's new spec.suspend, None to leave it; a Waiting note when spec.suspend cannot be followed)."""
    if terminal:
        return None, None
    if s.user and not s.job:
        if s.managed:
            return None, (
                Reason.SUSPENDED_BY_QUEUE,
                (
                    "spec.suspend does not stop a Job that Kueue manages (Kueue would "
                    "resume it); deactivate its Workload instead (kubectl patch workload ... spec.active=false)"
                ),
            )
        if s.ours:
            return None, (
                Reason.SUSPENDED_BY_QUEUE,
                (
                    "the Job was resumed by another controller after kubetune suspended "
                    "it; kubetune does not suspend it again"
                ),
            )
        return True, None
    if not s.user and s.job and s.ours and not s.queued:
        return False, None
    return None, None


def _with_job(
    body: dict[str, Any],
    parsed: Parsed,
    options: BuildOptions,
    queue: str | None,
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    pod_events: list[dict[str, Any]] | None,
) -> _Step:
    """The Job exists: the verdict is what it and its pods show, with spec.suspend followed (or why not), and the
    spec's problems or a change of spec since the Job was built on top."""
    suspension = _suspension(body, job, options, queue)
    verdict = status.job_verdict(
        job, pods, user_suspended=suspension.user, queued=suspension.managed, pod_events=pod_events
    )
    terminal = verdict.phase in status.TERMINAL
    job_annotations: dict[str, str | None] = {}
    suspend_job, note = _suspend_change(suspension, terminal)
    if suspend_job is not None:
        job_annotations[SUSPENDED_BY_ANNOTATION] = SUSPENDED_BY_KUBETUNE if suspend_job else None
    if note is not None and verdict.waiting is None:
        verdict = status.Verdict(verdict.phase, verdict.reason, verdict.message, waiting=note, stalled=verdict.stalled)
    created_hash = _created_hash(job, parsed)
    if created_hash != _annotation(job, SPEC_HASH_ANNOTATION):  # only the hash changed: record the new one
        job_annotations[SPEC_HASH_ANNOTATION] = created_hash
    return _Step(
        _spec_checked(verdict, parsed, created_hash, terminal),
        created_hash=created_hash,
        suspend_job=suspend_job,
        job_annotations=job_annotations,
    )


def _annotation(job: dict[str, Any], key: str) -> str | None:
    value: str | None = ((job.get("metadata") or {}).get("annotations") or {}).get(key)
    return value


def _created_hash(job: dict[str, Any], parsed: Parsed) -> str | None:
    """The spec hash the Job was built from. When the Job was built from this very generation and only the hash
    differs (an upgrade that changed a default or the hash itself), the current hash: record it, never call it
    a spec change."""
    created_hash = _annotation(job, SPEC_HASH_ANNOTATION)
    if (
        created_hash
        and created_hash != parsed.spec_hash
        and not parsed.problems
        and parsed.generation is not None
        and _annotation(job, GENERATION_ANNOTATION) == str(parsed.generation)
    ):
        return parsed.spec_hash
    return created_hash


def _spec_checked(verdict: status.Verdict, parsed: Parsed, created_hash: str | None, terminal: bool) -> status.Verdict:
    """The Job's verdict with the spec's problems (Validated=False), or Stalled when the spec changed after the
    running Job was built."""
    if parsed.problems:
        msg = "; ".join(parsed.problems)
        return status.Verdict(
            verdict.phase,
            verdict.reason,
            verdict.message,
            valid=False,
            invalid_reason=Reason.INVALID_SPEC,
            invalid_message=msg,
        )
    if created_hash and created_hash != parsed.spec_hash and not terminal:
        stalled = (
            Reason.SPEC_CHANGED,
            (
                "the spec changed after the training Job was created; the running Job "
                "keeps the original spec. Delete and re-create the FineTuneJob to train "
                "with the new spec"
            ),
        )
        return status.Verdict(verdict.phase, verdict.reason, verdict.message, waiting=verdict.waiting, stalled=stalled)
    return verdict


# ---------------------------------------------------------------------------------------------- the status


CARRIED_OVER = ("startTime", "completionTime", "progress", "lastCheckpoint", "datasets", "memoryEstimateGib")


def _status(
    old: dict[str, Any],
    parsed: Parsed,
    step: _Step,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    at: str,
) -> dict[str, Any]:
    """The new status: phase and conditions from the verdict, what earlier passes found (progress, datasets, ...),
    the Job's restarts and times, the evaluation report and the artifacts."""
    verdict = step.verdict
    new: dict[str, Any] = {
        "phase": verdict.phase,
        "conditions": status.conditions(verdict, old.get("conditions"), parsed.generation, at),
        "observedGeneration": parsed.generation,
    }
    if job is not None or step.children:
        new["jobName"] = parsed.job_name
        new["specHash"] = step.created_hash
    new.update({key: old[key] for key in CARRIED_OVER if old.get(key) is not None})
    if "memoryEstimateGib" not in new and parsed.job is not None and parsed.job.spec.model.parameters:
        new["memoryEstimateGib"] = memory_estimate_gib(parsed.job)
    if step.children:
        new["restarts"] = 0  # what the first look at the new Job reports: that look then writes nothing
    if job is not None:
        new.update(_job_times(new, job, pods, verdict, at))
    evaluation = _evaluation(old, pods, verdict)
    if evaluation is not None:
        new["evaluation"] = evaluation
    new.update(_artifacts(old, new.get("progress"), parsed, verdict))
    return new


def _job_times(
    new: dict[str, Any], job: dict[str, Any], pods: list[dict[str, Any]], verdict: status.Verdict, at: str
) -> dict[str, Any]:
    """status.restarts, and startTime/completionTime once the Job runs/ends (kept once set)."""
    out: dict[str, Any] = {"restarts": status.restarts(job, pods)}
    jstatus = job.get("status") or {}
    if verdict.phase == Phase.RUNNING.value and not new.get("startTime"):
        out["startTime"] = jstatus.get("startTime") or at
    if verdict.phase in status.TERMINAL and not new.get("completionTime"):
        out["completionTime"] = jstatus.get("completionTime") or at
    return out


def _evaluation(old: dict[str, Any], pods: list[dict[str, Any]], verdict: status.Verdict) -> dict[str, Any] | None:
    """status.evaluation: base vs trained (spec.evaluation), read once from the trainer's last words, then kept."""
    if verdict.phase in status.TERMINAL and old.get("evaluation") is None:
        return status.evaluation_report(pods)
    kept: dict[str, Any] | None = old.get("evaluation")
    return kept


def _artifacts(
    old: dict[str, Any], progress: dict[str, Any] | None, parsed: Parsed, verdict: status.Verdict
) -> dict[str, Any]:
    """status.artifacts once the adapter is published (succeeded, or trained but not promoted by the gate), with
    the progress completed to 100 %; the previous artifacts otherwise."""
    if (verdict.phase == Phase.SUCCEEDED.value or verdict.reason == Reason.GATE_FAILED) and parsed.output_uri:
        uri = parsed.output_uri.rstrip("/")
        artifacts = {"adapterUri": uri, "manifestUri": f"{uri}/manifest.json"}
        if parsed.job is not None and parsed.job.spec.output.merge:
            artifacts["mergedUri"] = f"{uri}/merged"
        out: dict[str, Any] = {"artifacts": artifacts}
        if progress and progress.get("totalSteps"):
            out["progress"] = {
                **progress,
                "step": progress["totalSteps"],
                "percent": 100.0,
                "etaSeconds": 0.0,
                "eta": "0s",
            }
        return out
    if old.get("artifacts") is not None:
        return {"artifacts": old["artifacts"]}
    return {}


def _pass_events(old: dict[str, Any], new: dict[str, Any], step: _Step) -> list[Event]:
    """The Events of the transition, an EvaluationPassed on promotion, and 'created ...' in the phase Event of the
    pass that creates the children."""
    verdict = step.verdict
    events = _events(old, new, verdict)
    if (
        verdict.phase == Phase.SUCCEEDED.value
        and (new.get("evaluation") or {}).get("promoted")
        and not old.get("evaluation")
    ):
        events.append(("Normal", Reason.EVALUATION_PASSED, evaluation_message(new["evaluation"])))
    if step.children and verdict.reason == Reason.POD_PENDING:  # the phase event of this pass says what it did
        events = [
            (kind, Reason.CREATED, message.replace(": ", ": created ConfigMap, Service and Job; ", 1))
            if reason == verdict.reason
            else (kind, reason, message)
            for kind, reason, message in events
        ]
    return events


def evaluation_message(report: dict[str, Any]) -> str:
    """One line for the Event: the trained and base scores and each gate condition."""

    def scores(which: str) -> str:
        s = report.get(which) or {}
        parts = [f"{k} {s[k]:.4g}" for k in ("evalLoss", "perplexity", "ruleScore", "reward") if s.get(k) is not None]
        return ", ".join(parts) or "nothing measured"

    checks = (
        "; ".join(f"{c['name']} {'ok' if c['passed'] else 'failed'}" for c in report.get("checks") or [])
        or "no gate conditions"
    )
    verdict = "promoted" if report.get("promoted") else "not promoted"
    return f"evaluation: {verdict}; trained: {scores('trained')}; base: {scores('base')}; gate: {checks}"


def _events(old: dict[str, Any], new: dict[str, Any], verdict: status.Verdict) -> list[Event]:
    """The Events of a status transition: a new Validated=False, Stalled or Waiting reason, a phase change; at
    most one per reason (a refused child is Stalled and Failed at once: one Warning says it)."""
    events: list[Event] = []
    old_valid = status.condition(old, ConditionType.VALIDATED.value) or {}
    new_valid = status.condition(new, ConditionType.VALIDATED.value) or {}
    if new_valid.get("status") == "False" and (old_valid.get("status"), old_valid.get("message")) != (
        "False",
        new_valid.get("message"),
    ):
        events.append(("Warning", new_valid["reason"], new_valid["message"]))
    old_stalled = status.condition(old, ConditionType.STALLED.value) or {}
    new_stalled = status.condition(new, ConditionType.STALLED.value) or {}
    if (
        verdict.stalled
        and new_stalled.get("status") == "True"
        and (old_stalled.get("status"), old_stalled.get("reason")) != ("True", new_stalled.get("reason"))
    ):
        events.append(("Warning", new_stalled["reason"], new_stalled["message"]))
    old_wait = status.condition(old, ConditionType.WAITING.value) or {}
    new_wait = status.condition(new, ConditionType.WAITING.value) or {}
    if new_wait.get("status") == "True" and (old_wait.get("status"), old_wait.get("reason")) != (
        "True",
        new_wait.get("reason"),
    ):
        kind = "Warning" if new_wait["reason"] in WARNING_WAITS else "Normal"
        events.append((kind, new_wait["reason"], new_wait["message"]))
    if old.get("phase") != new["phase"] and verdict.valid:
        kind = "Warning" if new["phase"] == Phase.FAILED.value else "Normal"
        events.append(
            (kind, verdict.reason, f"phase {old.get('phase') or 'None'} -> {new['phase']}: {verdict.message}")
        )
    seen: set[str] = set()
    unique = []
    for event in events:
        if event[1] not in seen:
            seen.add(event[1])
            unique.append(event)
    return unique
