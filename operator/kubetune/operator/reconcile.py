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
from kubetune.operator.manifests.labels import SPEC_HASH_ANNOTATION
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
    events: list[Event] = field(default_factory=list)
    poll_progress: bool = False
    output_uri: str | None = None  # parsed once here, for the progress scrape's lastCheckpoint


def parse(body: dict[str, Any], options: BuildOptions) -> Parsed:
    meta = body.get("metadata") or {}
    parsed = Parsed(name=meta.get("name", ""), namespace=meta.get("namespace") or "default",
                    generation=meta.get("generation"))
    spec = body.get("spec") or {}
    parsed.spec_hash = spec_hash(spec)
    doc = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
           "metadata": {"name": parsed.name, "namespace": parsed.namespace}, "spec": spec}
    try:
        job = parse_job(doc)
    except InvalidFineTuneJob as exc:
        parsed.problems = [str(p) for p in exc.problems]
        return parsed
    try:
        parsed.output_uri = output_uri(job, options)
    except MissingOutput as exc:
        parsed.problems = [f"{exc.path}: {exc}"]
        return parsed
    parsed.job = job
    parsed.spec_hash = spec_hash(job.spec)  # the same hash the builders annotate the children with
    if job.spec.model.adapter is not None and job.spec.model.adapter.from_job:
        parsed.upstream["spec.model.adapter.fromJob"] = job.spec.model.adapter.from_job
    if job.spec.training.reward_model is not None and job.spec.training.reward_model.from_job:
        parsed.upstream["spec.training.rewardModel.fromJob"] = job.spec.training.reward_model.from_job
    parsed.secrets = credential_secrets(job, options)
    return parsed


def _upstream(parsed: Parsed, upstream: dict[str, dict[str, Any] | None]) -> tuple[st.Verdict | None, dict[str, str]]:
    """(a waiting/failed verdict, or None when every upstream job succeeded; field path -> artifact URI)."""
    sources: dict[str, str] = {}
    for path, name in parsed.upstream.items():
        up = upstream.get(name)
        if up is None:
            msg = f"{path}: FineTuneJob {name!r} not found in namespace {parsed.namespace}; waiting for it"
            return st.Verdict(Phase.PENDING.value, Reason.WAITING_FOR_JOB, msg, waiting=(Reason.WAITING_FOR_JOB, msg)), {}
        ustatus = up.get("status") or {}
        phase = ustatus.get("phase")
        if phase == Phase.FAILED.value:
            why = (st.condition(ustatus, C.FAILED.value) or st.condition(ustatus, C.STALLED.value) or {}).get("message", "")
            msg = f"{path}: FineTuneJob {name!r} failed" + (f": {why}" if why else "")
            return st.Verdict(Phase.FAILED.value, Reason.UPSTREAM_FAILED, msg), {}
        uri = (ustatus.get("artifacts") or {}).get("adapterUri")
        if phase != Phase.SUCCEEDED.value or not uri:
            msg = f"{path}: waiting for FineTuneJob {name!r} to succeed (phase {phase or 'unknown'})"
            return st.Verdict(Phase.PENDING.value, Reason.WAITING_FOR_JOB, msg, waiting=(Reason.WAITING_FOR_JOB, msg)), {}
        sources[path] = uri
    return None, sources


def memory_estimate_gib(job: Any) -> float:
    """Per-GPU memory estimate from ``spec.model.parameters`` (the trainer replaces it with one from the real config)."""
    from kubetune.api.memory import ModelShape, estimate_for_spec, parse_parameters

    shape = ModelShape.from_parameters(parse_parameters(job.spec.model.parameters))
    return round(estimate_for_spec(job.spec, shape).total_gib, 2)


def finished(body: dict[str, Any]) -> bool:
    """Training ended (Succeeded or Failed after its Job ran): the status is final, even once the Job is
    deleted by ``ttlSecondsAfterFinished``; a finished FineTuneJob is never trained again."""
    old = body.get("status") or {}
    return old.get("phase") in st.TERMINAL and bool(old.get("jobName"))


def decide(
    body: dict[str, Any],
    parsed: Parsed,
    options: BuildOptions,
    *,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]] | None = None,
    upstream: dict[str, dict[str, Any] | None] | None = None,
    missing_secrets: list[str] | None = None,
    at: str | None = None,
) -> Decision:
    at = at or st.now()
    pods = pods or []
    old = dict(body.get("status") or {})
    if finished(body):
        return Decision(status=old)
    spec = body.get("spec") or {}
    children: list[dict[str, Any]] = []
    suspend_job: bool | None = None
    stalled: tuple[str, str] | None = None
    created_hash: str | None = None

    if job is None and parsed.problems:
        msg = "; ".join(parsed.problems)
        verdict = st.Verdict(Phase.FAILED.value, Reason.INVALID_SPEC, msg, valid=False,
                             invalid_reason=Reason.INVALID_SPEC, invalid_message=msg)
    elif job is None:
        assert parsed.job is not None
        verdict, sources = _upstream(parsed, upstream or {})
        if verdict is None and missing_secrets:
            msg = (f"Secret(s) {', '.join(missing_secrets)} not found in namespace {parsed.namespace}; "
                   "create them (they are named by spec.model.credentialsSecret / spec.output.credentialsSecret)")
            verdict = st.Verdict(Phase.PENDING.value, Reason.SECRET_MISSING, msg, waiting=(Reason.SECRET_MISSING, msg))
        if verdict is None:
            assert parsed.output_uri is not None
            resolved = Resolved(output_uri=parsed.output_uri,
                                adapter_source=sources.get("spec.model.adapter.fromJob"),
                                reward_model_source=sources.get("spec.training.rewardModel.fromJob"))
            children = build_all(parsed.job, options, resolved)
            created_hash = parsed.spec_hash
            s = parsed.job.spec
            if s.suspend:
                verdict = st.Verdict(Phase.SUSPENDED.value, Reason.SUSPENDED, "spec.suspend is true; the Job is created suspended")
            elif s.queue_name:
                verdict = st.Verdict(Phase.PENDING.value, Reason.QUEUED, f"Job created suspended for Kueue queue {s.queue_name}")
            else:
                # the status the first look at the new Job gives (pods pending), so that look writes nothing;
                # the Event says what this pass did
                verdict = st.Verdict(Phase.PENDING.value, Reason.POD_PENDING, st.POD_PENDING_MESSAGE)
    else:
        user_suspend = bool(spec.get("suspend"))
        queued = bool(spec.get("queueName"))
        job_suspended = bool((job.get("spec") or {}).get("suspend"))
        verdict = st.job_verdict(job, pods, user_suspended=user_suspend, queued=queued)
        terminal = verdict.phase in st.TERMINAL
        if not terminal and user_suspend and not job_suspended:
            suspend_job = True
        elif not terminal and not user_suspend and job_suspended and not queued:
            suspend_job = False
        created_hash = ((job.get("metadata") or {}).get("annotations") or {}).get(SPEC_HASH_ANNOTATION)
        if parsed.problems:
            msg = "; ".join(parsed.problems)
            verdict = st.Verdict(verdict.phase, verdict.reason, verdict.message, valid=False,
                                 invalid_reason=Reason.INVALID_SPEC, invalid_message=msg)
        elif created_hash and created_hash != parsed.spec_hash and not terminal:
            stalled = (Reason.SPEC_CHANGED, ("the spec changed after the training Job was created; the running Job "
                                             "keeps the original spec. Delete and re-create the FineTuneJob to train "
                                             "with the new spec"))
            verdict = st.Verdict(verdict.phase, verdict.reason, verdict.message, stalled=stalled)

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
    if verdict.phase == Phase.SUCCEEDED.value and parsed.output_uri:
        uri = parsed.output_uri.rstrip("/")
        artifacts = {"adapterUri": uri, "manifestUri": f"{uri}/manifest.json"}
        if parsed.job is not None and parsed.job.spec.output.merge:
            artifacts["mergedUri"] = f"{uri}/merged"
        new["artifacts"] = artifacts
        if new.get("progress", {}).get("totalSteps"):
            new["progress"] = {**new["progress"], "step": new["progress"]["totalSteps"], "percent": 100.0,
                               "etaSeconds": 0.0, "eta": "0s"}
    elif old.get("artifacts") is not None:
        new["artifacts"] = old["artifacts"]

    events = _events(old, new, verdict)
    if children and verdict.reason == Reason.POD_PENDING:  # the phase event of this pass says what it did
        events = [(kind, Reason.CREATED, message.replace(": ", ": created ConfigMap, Service and Job; ", 1))
                  if reason == verdict.reason else (kind, reason, message) for kind, reason, message in events]
    return Decision(
        status=new,
        children=children,
        suspend_job=suspend_job,
        events=events,
        poll_progress=verdict.phase == Phase.RUNNING.value,
        output_uri=parsed.output_uri,
    )


def _events(old: dict[str, Any], new: dict[str, Any], verdict: st.Verdict) -> list[Event]:
    events: list[Event] = []
    old_valid = st.condition(old, C.VALIDATED.value) or {}
    new_valid = st.condition(new, C.VALIDATED.value) or {}
    if new_valid.get("status") == "False" and (old_valid.get("status"), old_valid.get("message")) != ("False", new_valid.get("message")):
        events.append(("Warning", new_valid["reason"], new_valid["message"]))
    old_stalled = st.condition(old, C.STALLED.value) or {}
    new_stalled = st.condition(new, C.STALLED.value) or {}
    if (verdict.stalled and new_stalled.get("status") == "True"
            and (old_stalled.get("status"), old_stalled.get("reason")) != ("True", new_stalled.get("reason"))):
        events.append(("Warning", new_stalled["reason"], new_stalled["message"]))
    old_wait = st.condition(old, C.WAITING.value) or {}
    new_wait = st.condition(new, C.WAITING.value) or {}
    if new_wait.get("status") == "True" and (old_wait.get("status"), old_wait.get("reason")) != ("True", new_wait.get("reason")):
        events.append(("Normal", new_wait["reason"], new_wait["message"]))
    if old.get("phase") != new["phase"] and verdict.valid:
        kind = "Warning" if new["phase"] == Phase.FAILED.value else "Normal"
        events.append((kind, verdict.reason, f"phase {old.get('phase') or 'None'} -> {new['phase']}: {verdict.message}"))
    return events
