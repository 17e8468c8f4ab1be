"""What to do with one FineTuneJob, decided from what was observed. Pure: no API calls, no kopf.

The handler calls :func:`parse` (spec → typed job, names, what to look up), fetches the
Job, pods, upstream FineTuneJobs and Secrets through :mod:`kubetune.operator.kube`, and
then :func:`decide` returns the whole new status, the children to ensure, a suspend
change for the Job, and the Events to post.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kubetune.api.conditions import ConditionType as C
from kubetune.api.conditions import Phase, Reason
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.api.validation import InvalidFineTuneJob, parse_job
from kubetune.operator import status as st
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
    at = at or st.now()
    old = dict(body.get("status") or {})
    text = f"the API server refused to create {kind} {parsed.namespace}/{name}: {code} {reason}: {message}"
    invalid = code in (400, 422)  # the spec rendered into a field the API finds invalid (not quota, not RBAC)
    verdict = st.Verdict(
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
        "conditions": st.conditions(verdict, old.get("conditions"), parsed.generation, at),
        "observedGeneration": parsed.generation,
    }
    return Decision(status=new, events=_events(old, new, verdict))


def crashed(body: dict[str, Any], parsed: Parsed | None, exc: BaseException, *, at: str | None = None) -> Decision:
    """Any other exception while deciding or building: ``Validated=False`` (reason UnprocessableSpec) and
    ``Stalled=True`` with one line naming it, and one Event; the phase keeps what the Job shows."""
    at = at or st.now()
    old = dict(body.get("status") or {})
    meta = body.get("metadata") or {}
    msg = _crash("build", exc)
    phase: str = old["phase"] if old.get("jobName") and old.get("phase") else Phase.FAILED.value
    verdict = st.Verdict(
        phase, Reason.UNPROCESSABLE, msg, valid=False, invalid_reason=Reason.UNPROCESSABLE, invalid_message=msg
    )
    generation = parsed.generation if parsed else meta.get("generation")
    new = {
        **{k: v for k, v in old.items() if k not in ("phase", "conditions", "observedGeneration")},
        "phase": phase,
        "conditions": st.conditions(verdict, old.get("conditions"), generation, at),
        "observedGeneration": generation,
    }
    return Decision(status=new, events=_events(old, new, verdict))


def _stopped(body: dict[str, Any], parsed: Parsed) -> bool:
    """A child of this generation was refused: the status stays as written until the spec changes."""
    old = body.get("status") or {}
    stalled = st.condition(old, C.STALLED.value) or {}
    return (
        not old.get("jobName")
        and stalled.get("status") == "True"
        and stalled.get("reason") == Reason.CHILD_REJECTED
        and old.get("observedGeneration") == parsed.generation
    )


def _upstream(parsed: Parsed, upstream: dict[str, dict[str, Any] | None]) -> tuple[st.Verdict | None, dict[str, str]]:
    """(a waiting/failed verdict, or None when every upstream job succeeded; field path -> artifact URI)."""
    sources: dict[str, str] = {}
    for path, name in parsed.upstream.items():
        up = upstream.get(name)
        if up is None:
            msg = f"{path}: FineTuneJob {name!r} not found in namespace {parsed.namespace}; waiting for it"
            return st.Verdict(
                Phase.PENDING.value, Reason.WAITING_FOR_JOB, msg, waiting=(Reason.WAITING_FOR_JOB, msg)
            ), {}
        ustatus = up.get("status") or {}
        phase = ustatus.get("phase")
        if phase == Phase.FAILED.value:
            why = (st.condition(ustatus, C.FAILED.value) or st.condition(ustatus, C.STALLED.value) or {}).get(
                "message", ""
            )
            msg = f"{path}: FineTuneJob {name!r} failed" + (f": {why}" if why else "")
            return st.Verdict(Phase.FAILED.value, Reason.UPSTREAM_FAILED, msg), {}
        uri = (ustatus.get("artifacts") or {}).get("adapterUri")
        if phase != Phase.SUCCEEDED.value or not uri:
            msg = f"{path}: waiting for FineTuneJob {name!r} to succeed (phase {phase or 'unknown'})"
            return st.Verdict(
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
    return old.get("phase") in st.TERMINAL and bool(old.get("jobName"))


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
    at = at or st.now()
    old = dict(body.get("status") or {})
    msg = (
        f"{kind} {parsed.namespace}/{name} still belongs to an earlier FineTuneJob named {parsed.name}; waiting for "
        "the garbage collector to delete it"
    )
    verdict = st.Verdict(Phase.PENDING.value, Reason.PREVIOUS_CHILDREN, msg, waiting=(Reason.PREVIOUS_CHILDREN, msg))
    new = {
        "phase": verdict.phase,
        "conditions": st.conditions(verdict, old.get("conditions"), parsed.generation, at),
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
    at = at or st.now()
    pods = pods or []
    old = dict(body.get("status") or {})
    if finished(body) or (job is None and _stopped(body, parsed)):
        return Decision(status=old)
    spec = body.get("spec") or {}
    children: list[dict[str, Any]] = []
    suspend_job: bool | None = None
    job_annotations: dict[str, str | None] = {}
    stalled: tuple[str, str] | None = None
    created_hash: str | None = None
    queue = queue_name(body)

    if job is None and parsed.problems:
        msg = "; ".join(parsed.problems)
        verdict = st.Verdict(
            Phase.FAILED.value,
            Reason.INVALID_SPEC,
            msg,
            valid=False,
            invalid_reason=Reason.INVALID_SPEC,
            invalid_message=msg,
        )
    elif job is None:
        assert parsed.job is not None
        blocked, sources = _upstream(parsed, upstream or {})
        if blocked is None and missing_secrets:
            msg = (
                f"Secret(s) {', '.join(missing_secrets)} not found in namespace {parsed.namespace}; "
                "create them (they are named by spec.model.credentialsSecret / spec.output.credentialsSecret)"
            )
            blocked = st.Verdict(Phase.PENDING.value, Reason.SECRET_MISSING, msg, waiting=(Reason.SECRET_MISSING, msg))
        if blocked is not None:
            verdict = blocked
        else:
            assert parsed.output_uri is not None
            resolved = Resolved(
                output_uri=parsed.output_uri,
                adapter_source=sources.get("spec.model.adapter.fromJob"),
                reward_model_source=sources.get("spec.training.rewardModel.fromJob"),
                evaluation_reward_source=sources.get("spec.evaluation.rewardModel.fromJob"),
            )
            children = build_all(parsed.job, options, resolved, queue_name=queue)
            kjob = children[-1]
            annotations = kjob["metadata"].setdefault("annotations", {})
            if parsed.generation is not None:
                annotations[GENERATION_ANNOTATION] = str(parsed.generation)
            if parsed.job.spec.suspend and not queue:  # suspended for the user, so kubetune may resume it
                annotations[SUSPENDED_BY_ANNOTATION] = SUSPENDED_BY_KUBETUNE
            created_hash = parsed.spec_hash
            if parsed.job.spec.suspend:
                verdict = st.Verdict(
                    Phase.SUSPENDED.value, Reason.SUSPENDED, "spec.suspend is true; the Job is created suspended"
                )
            elif queue:
                verdict = st.Verdict(
                    Phase.PENDING.value, Reason.QUEUED, f"Job created suspended for Kueue queue {queue}"
                )
            else:
                # the status the first look at the new Job gives (pods pending), so that look writes nothing;
                # the Event says what this pass did
                verdict = st.Verdict(Phase.PENDING.value, Reason.POD_PENDING, st.POD_PENDING_MESSAGE)
    else:
        user_suspend = bool(spec.get("suspend"))
        jmeta = job.get("metadata") or {}
        annotations = jmeta.get("annotations") or {}
        ours = annotations.get(SUSPENDED_BY_ANNOTATION) == SUSPENDED_BY_KUBETUNE
        if GENERATION_ANNOTATION not in annotations:  # built by a release before the annotation: its suspend was ours
            ours = ours or not (queue or options.kueue_manages_all_jobs or QUEUE_LABEL in (jmeta.get("labels") or {}))
        job_suspended = bool((job.get("spec") or {}).get("suspend"))
        # Kueue decides when a queue-managed Job runs (it suspends it at creation and un-suspends it on admission):
        # a queue name, Kueue's manageJobsWithoutQueueName, or a suspension that is not kubetune's own
        managed = (
            bool(queue)
            or options.kueue_manages_all_jobs
            or QUEUE_LABEL in (jmeta.get("labels") or {})
            or (job_suspended and not ours)
        )
        verdict = st.job_verdict(job, pods, user_suspended=user_suspend, queued=managed, pod_events=pod_events)
        terminal = verdict.phase in st.TERMINAL
        note: tuple[str, str] | None = None
        if not terminal and user_suspend and not job_suspended:
            if managed:
                note = (
                    Reason.SUSPENDED_BY_QUEUE,
                    (
                        "spec.suspend does not stop a Job that Kueue manages (Kueue would "
                        "resume it); deactivate its Workload instead (kubectl patch workload ... spec.active=false)"
                    ),
                )
            elif ours:
                note = (
                    Reason.SUSPENDED_BY_QUEUE,
                    (
                        "the Job was resumed by another controller after kubetune suspended "
                        "it; kubetune does not suspend it again"
                    ),
                )
            else:
                suspend_job, job_annotations[SUSPENDED_BY_ANNOTATION] = True, SUSPENDED_BY_KUBETUNE
        elif (
            not terminal
            and not user_suspend
            and job_suspended
            and ours
            and not (queue or options.kueue_manages_all_jobs or QUEUE_LABEL in (jmeta.get("labels") or {}))
        ):
            suspend_job, job_annotations[SUSPENDED_BY_ANNOTATION] = False, None
        if note is not None and verdict.waiting is None:
            verdict = st.Verdict(verdict.phase, verdict.reason, verdict.message, waiting=note, stalled=verdict.stalled)
        created_hash = annotations.get(SPEC_HASH_ANNOTATION)
        created_gen = annotations.get(GENERATION_ANNOTATION)
        if (
            created_hash
            and created_hash != parsed.spec_hash
            and not parsed.problems
            and parsed.generation is not None
            and created_gen == str(parsed.generation)
        ):
            # the spec is the one the Job was built from (same generation); only the hash changed (an upgrade that
            # changed a default or the hash itself): record the new hash, never call it a spec change
            created_hash = job_annotations[SPEC_HASH_ANNOTATION] = parsed.spec_hash
        if parsed.problems:
            msg = "; ".join(parsed.problems)
            verdict = st.Verdict(
                verdict.phase,
                verdict.reason,
                verdict.message,
                valid=False,
                invalid_reason=Reason.INVALID_SPEC,
                invalid_message=msg,
            )
        elif created_hash and created_hash != parsed.spec_hash and not terminal:
            stalled = (
                Reason.SPEC_CHANGED,
                (
                    "the spec changed after the training Job was created; the running Job "
                    "keeps the original spec. Delete and re-create the FineTuneJob to train "
                    "with the new spec"
                ),
            )
            verdict = st.Verdict(
                verdict.phase, verdict.reason, verdict.message, waiting=verdict.waiting, stalled=stalled
            )

    new: dict[str, Any] = {
        "phase": verdict.phase,
        "conditions": st.conditions(verdict, old.get("conditions"), parsed.generation, at),
        "observedGeneration": parsed.generation,
    }
    if job is not None or children:
        new["jobName"] = parsed.job_name
        new["specHash"] = created_hash
    for key in ("startTime", "completionTime", "progress", "lastCheckpoint", "datasets", "memoryEstimateGib"):
        if old.get(key) is not None:
            new[key] = old[key]
    if "memoryEstimateGib" not in new and parsed.job is not None and parsed.job.spec.model.parameters:
        new["memoryEstimateGib"] = memory_estimate_gib(parsed.job)
    if children:
        new["restarts"] = 0  # what the first look at the new Job reports: that look then writes nothing
    if job is not None:
        new["restarts"] = st.restarts(job, pods)
        jstatus = job.get("status") or {}
        if verdict.phase == Phase.RUNNING.value and not new.get("startTime"):
            new["startTime"] = jstatus.get("startTime") or at
        if verdict.phase in st.TERMINAL and not new.get("completionTime"):
            new["completionTime"] = jstatus.get("completionTime") or at
    if verdict.phase in st.TERMINAL and old.get("evaluation") is None:
        report = st.evaluation_report(pods)  # spec.evaluation: base vs trained, from the trainer's last words
        if report is not None:
            new["evaluation"] = report
    elif old.get("evaluation") is not None:
        new["evaluation"] = old["evaluation"]
    if (verdict.phase == Phase.SUCCEEDED.value or verdict.reason == Reason.GATE_FAILED) and parsed.output_uri:
        uri = parsed.output_uri.rstrip("/")
        artifacts = {"adapterUri": uri, "manifestUri": f"{uri}/manifest.json"}
        if parsed.job is not None and parsed.job.spec.output.merge:
            artifacts["mergedUri"] = f"{uri}/merged"
        new["artifacts"] = artifacts
        if new.get("progress", {}).get("totalSteps"):
            new["progress"] = {
                **new["progress"],
                "step": new["progress"]["totalSteps"],
                "percent": 100.0,
                "etaSeconds": 0.0,
                "eta": "0s",
            }
    elif old.get("artifacts") is not None:
        new["artifacts"] = old["artifacts"]

    events = _events(old, new, verdict)
    if (
        verdict.phase == Phase.SUCCEEDED.value
        and (new.get("evaluation") or {}).get("promoted")
        and not old.get("evaluation")
    ):
        events.append(("Normal", Reason.EVALUATION_PASSED, evaluation_message(new["evaluation"])))
    if children and verdict.reason == Reason.POD_PENDING:  # the phase event of this pass says what it did
        events = [
            (kind, Reason.CREATED, message.replace(": ", ": created ConfigMap, Service and Job; ", 1))
            if reason == verdict.reason
            else (kind, reason, message)
            for kind, reason, message in events
        ]
    return Decision(
        status=new,
        children=children,
        suspend_job=suspend_job,
        job_annotations=job_annotations,
        events=events,
        poll_progress=verdict.phase == Phase.RUNNING.value,
        output_uri=parsed.output_uri,
    )


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


def _events(old: dict[str, Any], new: dict[str, Any], verdict: st.Verdict) -> list[Event]:
    """The Events of a status transition: a new Validated=False, Stalled or Waiting reason, a phase change; at
    most one per reason (a refused child is Stalled and Failed at once: one Warning says it)."""
    events: list[Event] = []
    old_valid = st.condition(old, C.VALIDATED.value) or {}
    new_valid = st.condition(new, C.VALIDATED.value) or {}
    if new_valid.get("status") == "False" and (old_valid.get("status"), old_valid.get("message")) != (
        "False",
        new_valid.get("message"),
    ):
        events.append(("Warning", new_valid["reason"], new_valid["message"]))
    old_stalled = st.condition(old, C.STALLED.value) or {}
    new_stalled = st.condition(new, C.STALLED.value) or {}
    if (
        verdict.stalled
        and new_stalled.get("status") == "True"
        and (old_stalled.get("status"), old_stalled.get("reason")) != ("True", new_stalled.get("reason"))
    ):
        events.append(("Warning", new_stalled["reason"], new_stalled["message"]))
    old_wait = st.condition(old, C.WAITING.value) or {}
    new_wait = st.condition(new, C.WAITING.value) or {}
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
