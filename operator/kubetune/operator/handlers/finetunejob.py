"""The FineTuneJob handlers: glue between kopf, the pure decisions and :mod:`kube`.

Informer-style: kopf indexes keep the FineTuneJobs, their training Jobs and pods in memory (filled from
watches), and every watch event of one of them runs :func:`reconcile_once` for its FineTuneJob at once:
read the indexes → decide → ensure children → patch the status when it changed → post Events. Nothing
is read from the API server on a pass except, rarely, a Job the index has not seen yet, the existence of
credential Secrets, a child whose name is taken (409: whose is it?) and, on the resync, the Warning
Events of a pod stuck being created. Passes for one FineTuneJob never overlap. Children are this
object's by owner UID, never by label alone.

No exception on the decision path becomes a retry loop: whatever parsing, deciding or building raises
ends as ``Validated=False``, a child or status the API server refuses ends as ``Stalled`` with the
server's words, each with one Event; only transient API failures are retried (next event or resync).

Every ``--sync-interval`` seconds each unfinished FineTuneJob is passed again (a resync that also pulls
progress from the rank-0 pod and retries what failed). A single replica (``--standalone``) does that
in one loop over the index, so kopf puts no finalizer on the objects; with peering it is a kopf timer
per object, which kopf pauses on the replicas that must not act (kopf adds a finalizer for it).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.operator import config, cost, kube, metrics, progress, reconcile
from kubetune.operator import status as st
from kubetune.operator.manifests import BuildOptions
from kubetune.operator.manifests.labels import COMPONENT_LABEL, FINETUNEJOB_LABEL, TRAINER
from kubetune.operator.settings import OperatorSettings

Key = tuple[str, str]  # (namespace, FineTuneJob name)
UPSTREAM_FIELDS = (
    ("model", "adapter"),
    ("training", "rewardModel"),
    ("evaluation", "rewardModel"),
)  # spec.<a>.<b>.fromJob
EVENT_MESSAGE_BYTES = 1024  # the API server's limit on an Event's message, in bytes


def plain(value: Any) -> Any:
    """A kopf Body/view as plain JSON data."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def slim(body: Any) -> dict[str, Any]:
    """What the decisions read of an object: metadata without managedFields (often larger than the rest), spec,
    status."""
    doc = plain(body)
    meta = {k: v for k, v in (doc.get("metadata") or {}).items() if k != "managedFields"}
    return {"metadata": meta, "spec": doc.get("spec") or {}, "status": doc.get("status") or {}}


def key_of(namespace: str | None, name: str) -> Key:
    """The index key of a namespaced object (kopf types ``namespace`` as optional, for cluster-scoped kinds)."""
    return (namespace or "", name)


def as_kopf_body(obj: Mapping[str, Any]) -> kopf.Body:
    """kopf's view of a plain object, for the kopf helpers that take one (owner references, Events)."""
    return kopf.Body(cast(kopf.RawBody, obj))


def first(values: Iterable[Any] | None) -> Any:
    return next(iter(values), None) if values is not None else None


def upstream_names(spec: Any) -> list[str]:
    """FineTuneJobs this spec trains on top of (``spec.model.adapter.fromJob``, ``spec.training.rewardModel.fromJob``);
    none for a spec of any other shape (the pass reports that one)."""
    spec = plain(spec)
    names = []
    for section, field in UPSTREAM_FIELDS:
        part = spec.get(section) if isinstance(spec, Mapping) else None
        ref = part.get(field) if isinstance(part, Mapping) else None
        if isinstance(ref, Mapping) and ref.get("fromJob"):
            names.append(str(ref["fromJob"]))
    return names


TRANSIENT = (ApiException, kube.Unavailable, TimeoutError)


def gpu_type(body: dict[str, Any]) -> str | None:
    """``spec.resources.gpuType`` of a body of any shape (a spec the pass reported as invalid included)."""
    spec = body.get("spec")
    resources = spec.get("resources") if isinstance(spec, Mapping) else None
    value = resources.get("gpuType") if isinstance(resources, Mapping) else None
    return value if isinstance(value, str) else None


def untimed(status: dict[str, Any]) -> dict[str, Any]:
    """A status patch without the conditions' lastTransitionTime (a status never written gets a new one each pass)."""
    conds = status.get("conditions")
    if not isinstance(conds, list):
        return status
    return {
        **status,
        "conditions": [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} if isinstance(c, dict) else c for c in conds
        ],
    }


def owned(bodies: Iterable[Any] | None, uid: str) -> dict[str, Any] | None:
    """The indexed child owned by the object ``uid`` (by owner reference, never by label alone)."""
    return next((b for b in bodies or () if reconcile.owned_by(b, uid)), None)


async def reconcile_once(
    body: dict[str, Any],
    options: BuildOptions,
    logger: Any,
    *,
    job: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    finetunejobs: Mapping[Key, Any],
    poll: bool = False,
) -> reconcile.Decision:
    """One pass for one FineTuneJob over what the indexes hold; returns the decision (the caller patches
    status and posts events). ``job`` and ``pods`` are this object's own (owner UIDs checked by the caller).

    Nothing raised on the decision path escapes as a retry: an exception while parsing, deciding or building
    becomes ``Validated=False``; a child the API server refuses becomes ``Stalled`` (ChildRejected). Only
    transient API failures (timeouts, 5xx, 429) are raised, for the next event or resync to retry."""
    if reconcile.finished(body):
        return reconcile.Decision(status=dict(body.get("status") or {}))
    parsed = reconcile.parse(body, options)  # never raises
    ns = parsed.namespace
    uid = str((body.get("metadata") or {}).get("uid") or "")
    try:
        if job is None and (body.get("status") or {}).get("jobName"):
            # created by an earlier pass, but its watch event has not reached the index yet
            job = await kube.get_job(ns, parsed.job_name)
            job = job if reconcile.owned_by(job, uid) else None
        upstream: dict[str, dict[str, Any] | None] = {}
        missing: list[str] = []
        if job is None and parsed.job is not None:
            for name in set(parsed.upstream.values()):
                upstream[name] = first(finetunejobs.get((ns, name)))
            missing = [s for s in parsed.secrets if not await kube.secret_exists(ns, s)]
        stuck = st.stuck_creating(pods) if job is not None and poll else []
        pod_events = None
        if stuck:
            try:
                pod_events = await kube.pod_warnings(ns, stuck)
            except kube.Refused as exc:  # only an explanation: without it the status says less, nothing fails
                logger.debug("cannot list the Events of %s's pods: %s", parsed.name, exc)
        decision = reconcile.decide(
            body,
            parsed,
            options,
            job=job,
            pods=pods if job is not None else [],
            upstream=upstream,
            missing_secrets=missing,
            pod_events=pod_events,
        )
    except TRANSIENT:
        raise
    except Exception as exc:  # noqa: BLE001 - a condition and an Event, never a retry loop
        logger.warning("cannot reconcile %s/%s: %s", ns, parsed.name, exc)
        return reconcile.crashed(body, parsed, exc)
    if decision.children and not await still_there(ns, parsed.name, uid):
        # the watch lags behind a delete (or a delete and re-create under the same name): children built for
        # this object would only be orphans for the garbage collector; the new object gets its own pass
        logger.info("%s/%s was deleted before its children were created; nothing created", ns, parsed.name)
        return reconcile.Decision(status=dict(body.get("status") or {}))
    if decision.children:
        kopf.append_owner_reference(decision.children, owner=as_kopf_body(body))
        try:
            created = await kube.ensure(decision.children)
        except kube.Refused as exc:
            logger.warning("the API server refused to %s %s %s: %s", exc.verb, exc.kind, exc.name, exc.message)
            if exc.verb != "create":
                return reconcile.crashed(body, parsed, exc)
            return reconcile.rejected(body, parsed, exc.kind, exc.name, exc.code, exc.reason, exc.message)
        except kube.OwnedByOther as exc:
            return reconcile.previous_children(body, parsed, exc.kind, exc.name)
        if created:
            logger.info("created %s", ", ".join(created))
    if decision.suspend_job is not None or decision.job_annotations:
        try:
            await kube.patch_job(
                ns, parsed.job_name, suspend=decision.suspend_job, annotations=decision.job_annotations or None
            )
        except kube.Refused as exc:
            return reconcile.crashed(body, parsed, exc)
        if decision.suspend_job is not None:
            logger.info("%s the training Job", "suspended" if decision.suspend_job else "resumed")
    return decision


async def still_there(namespace: str, name: str, uid: str) -> bool:
    """Whether the API server still has this FineTuneJob (same uid, not being deleted): one quorum read,
    before children are created."""
    current = await kube.get_finetunejob(namespace, name)
    meta = (current or {}).get("metadata") or {}
    return current is not None and meta.get("uid") == uid and not meta.get("deletionTimestamp")


def register(op: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    options = op.build_options()
    # uid -> (the status we last wrote, when). Until the watch brings our own write back, a pass would
    # decide on a stale status and announce the same transition twice, so it waits (at most STALE_WAIT).
    written: dict[str, tuple[dict[str, Any], float]] = {}
    stale_wait = max(30.0, 10 * op.sync_interval)
    locks: dict[Key, asyncio.Lock] = {}
    # uid -> (the server's reason for refusing our last status write, the refused patch)
    refused_status: dict[str, tuple[str, dict[str, Any] | None]] = {}
    kube.set_timeout(op.api_timeout)
    # a pass makes a handful of calls, each bounded by the client timeout; past this, it is abandoned (its lock freed)
    pass_timeout = 4 * op.api_timeout

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**kube.connection())

    resyncing: list[asyncio.Task[None]] = []

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **kwargs: Any) -> None:
        config.configure(settings, op)
        metrics.serve(op.metrics_port)
        if op.standalone:
            resyncing.append(asyncio.create_task(resync_all(kwargs, logger), name="kubetune-resync"))

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in resyncing:
            task.cancel()
        await asyncio.gather(*resyncing, return_exceptions=True)
        for task in asyncio.all_tasks():
            if task.get_name().startswith("kubetune-resync-"):
                task.cancel()

    # ------------------------------------------------------------------ the in-memory view (kopf indexes)

    # index ids are the kwargs names handlers receive them by
    @kopf.index(GROUP, VERSION, PLURAL, id="finetunejobs", registry=registry)
    def finetunejobs(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
        return {
            key_of(namespace, name): {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), **slim(body)}
        }

    @kopf.index(GROUP, VERSION, PLURAL, id="dependents", registry=registry)
    def dependents(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, str]:
        return {key_of(namespace, upstream): name for upstream in upstream_names(body.get("spec"))}

    @kopf.index("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="training_jobs", registry=registry)
    def training_jobs(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any]:
        return {key_of(namespace, labels[FINETUNEJOB_LABEL]): slim(body)}

    @kopf.index(
        "",
        "v1",
        "pods",
        labels={FINETUNEJOB_LABEL: kopf.PRESENT, COMPONENT_LABEL: TRAINER},
        id="training_pods",
        registry=registry,
    )
    def training_pods(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any]:
        return {key_of(namespace, labels[FINETUNEJOB_LABEL]): slim(body)}

    # ------------------------------------------------------------------ one pass

    async def sync(key: Key, indexes: Mapping[str, Any], logger: Any, *, poll: bool = False) -> None:
        """Reconcile the FineTuneJob ``key`` from the indexes; ``poll`` also scrapes training progress."""
        async with locks.setdefault(key, asyncio.Lock()):
            raw = first(indexes["finetunejobs"].get(key))  # the newest body, read once the lock is ours
            if raw is None or (raw.get("metadata") or {}).get("deletionTimestamp"):
                return
            await _pass(key, raw, indexes, logger, poll=poll)

    async def _pass(key: Key, raw: dict[str, Any], indexes: Mapping[str, Any], logger: Any, *, poll: bool) -> None:
        started = time.monotonic()
        uid = raw["metadata"].get("uid", "")
        if uid in written:
            ours, when = written[uid]
            if st.status_patch(raw.get("status"), ours) and time.monotonic() - when < stale_wait:
                return  # our last write has not reached this body yet
            del written[uid]
        job = owned(indexes["training_jobs"].get(key), uid)
        job_uid = ((job or {}).get("metadata") or {}).get("uid", "")
        pods = [p for p in indexes["training_pods"].get(key, ()) if reconcile.owned_by(p, job_uid)]
        try:
            decision = await reconcile_once(
                raw, options, logger, job=job, pods=pods, finetunejobs=indexes["finetunejobs"], poll=poll
            )
        except ApiException as exc:
            raise kopf.TemporaryError(f"API call failed: {exc.status} {exc.reason}", delay=op.sync_interval) from None
        except (TimeoutError, kube.Unavailable) as exc:
            raise kopf.TemporaryError(f"API call failed: {exc}", delay=op.sync_interval) from None
        finally:
            metrics.RECONCILE_SECONDS.labels(handler="reconcile").observe(time.monotonic() - started)
        new = decision.status
        if decision.poll_progress and poll:
            url = progress.rank0_url(pods, op.trainer_metrics_port)
            if url:
                try:
                    scraped = await progress.scrape(url, output_uri=decision.output_uri)
                    new = {**new, **scraped, "progress": {**(new.get("progress") or {}), **scraped["progress"]}}
                except Exception as exc:  # noqa: BLE001 - a slow or starting trainer must not fail the pass
                    metrics.POLL_FAILURES.inc()
                    logger.debug("progress scrape of %s failed: %s", url, exc)
        new, guard_events = progress.guard_status(raw.get("status"), new, st.now())  # spec.training.guard
        new, stall_events = progress.stall_status(raw.get("status"), new, pods)  # exit 75: the hang watchdog
        old_cost = (raw.get("status") or {}).get("cost")
        if pods or old_cost:  # status.cost: GPU- and node-seconds of every pod, restarts included
            tps = (new.get("progress") or {}).get("tokensPerSecond")
            eta = (new.get("progress") or {}).get("etaSeconds") if new.get("phase") == "Running" else None
            used = cost.cost_status(
                old_cost, raw.get("spec") or {}, pods, tps, op.gpu_hour_prices, dt.datetime.now(dt.UTC), eta
            )
            if used["nodeSeconds"] > 0 or old_cost:  # pending pods cost nothing yet
                new = {**new, "cost": used}
        changes = st.status_patch(raw.get("status"), new)
        if changes and refused_status.get(uid, ("", None))[1] == untimed(changes):
            return  # refused before, nothing new to write: no retry loop on a write the server refuses
        if changes:
            try:
                await kube.patch_status(key[0], key[1], changes)
            except (
                ApiException,
                kube.Unavailable,
            ) as exc:  # events wait for the status they announce; the next pass retries both
                raise kopf.TemporaryError(f"status write failed: {exc}", delay=op.sync_interval) from None
            except kube.Refused as exc:  # the same status would be refused again: say it once, never loop on it
                if refused_status.get(uid, ("", None))[0] != exc.message:
                    logger.error("the API server refused the status of %s/%s: %s", key[0], key[1], exc.message)
                    kopf.event(
                        as_kopf_body(raw),
                        type="Warning",
                        reason="StatusRejected",
                        message=st.truncate_utf8(
                            f"the API server refused the status: {exc.message}", EVENT_MESSAGE_BYTES
                        ),
                    )
                refused_status[uid] = (exc.message, untimed(changes))
                return
            refused_status.pop(uid, None)
            written[uid] = (new, time.monotonic())
        for kind, reason, message in [*decision.events, *guard_events, *stall_events]:
            kopf.event(
                as_kopf_body(raw), type=kind, reason=reason, message=st.truncate_utf8(message, EVENT_MESSAGE_BYTES)
            )
        metrics.observe_phase(key[0], key[1], new.get("phase"))
        metrics.observe_cost(key[0], key[1], gpu_type(raw), new.get("cost"))
        metrics.observe_evaluation(key[0], key[1], new.get("evaluation"))

    # ------------------------------------------------------------------ triggers

    async def resync_all(indexes: Mapping[str, Any], logger: Any) -> None:
        """The standalone resync: every unfinished FineTuneJob, every sync interval, a bounded number at once.

        A FineTuneJob whose last pass is still running (a slow API call, bounded by the client's timeout) is
        skipped this round; the others never wait for it."""
        limit = asyncio.Semaphore(kube.CONCURRENCY)
        running: dict[Key, asyncio.Task[None]] = {}

        async def one(key: Key) -> None:
            async with limit:
                try:
                    await asyncio.wait_for(sync(key, indexes, logger, poll=True), timeout=pass_timeout)
                except kopf.TemporaryError as exc:
                    logger.warning("resync of %s/%s: %s", key[0], key[1], exc)
                except TimeoutError:
                    logger.warning(
                        "resync of %s/%s took over %.0f s; the next resync retries", key[0], key[1], pass_timeout
                    )
                except Exception:  # one FineTuneJob's failure must not end the loop for all of them
                    logger.exception("resync of %s/%s failed; the next resync retries", key[0], key[1])

        while True:
            await asyncio.sleep(op.sync_interval)
            for key, bodies in list(indexes["finetunejobs"].items()):
                if reconcile.finished(first(bodies) or {}) or (key in running and not running[key].done()):
                    continue
                running[key] = asyncio.create_task(one(key), name=f"kubetune-resync-{key[0]}/{key[1]}")
            for key in [k for k, t in running.items() if t.done()]:
                del running[key]

    if not op.standalone:

        @kopf.timer(
            GROUP,
            VERSION,
            PLURAL,
            id="reconcile",
            interval=op.sync_interval,
            backoff=op.sync_interval,
            registry=registry,
        )
        async def resync(namespace: str | None, name: str, logger: kopf.Logger, **kwargs: Any) -> None:
            await sync(key_of(namespace, name), kwargs, logger, poll=True)

    @kopf.on.event(GROUP, VERSION, PLURAL, id="changed", registry=registry)
    async def finetunejob_changed(
        type: str | None,  # None for the objects of the initial listing
        namespace: str | None,
        name: str,
        uid: str,
        status: kopf.Status,
        logger: kopf.Logger,
        **kwargs: Any,
    ) -> None:
        key = key_of(namespace, name)
        if type == "DELETED":
            forget(key, uid)
            return
        await on_event(key, kwargs, logger)
        if status.get("phase") in st.TERMINAL:  # jobs that train on top of this one may start (or fail) now
            for dependent in set(kwargs["dependents"].get(key, ())):
                await on_event(key_of(namespace, dependent), kwargs, logger)

    @kopf.on.event(
        "batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="job-changed", registry=registry
    )
    async def job_changed(namespace: str | None, labels: kopf.Labels, logger: kopf.Logger, **kwargs: Any) -> None:
        await on_event(key_of(namespace, labels[FINETUNEJOB_LABEL]), kwargs, logger)

    @kopf.on.event(
        "",
        "v1",
        "pods",
        labels={FINETUNEJOB_LABEL: kopf.PRESENT, COMPONENT_LABEL: TRAINER},
        id="pod-changed",
        registry=registry,
    )
    async def pod_changed(namespace: str | None, labels: kopf.Labels, logger: kopf.Logger, **kwargs: Any) -> None:
        await on_event(key_of(namespace, labels[FINETUNEJOB_LABEL]), kwargs, logger)

    async def on_event(key: Key, indexes: Mapping[str, Any], logger: Any) -> None:
        """A pass triggered by a watch event; what fails temporarily is retried by the next event or resync."""
        try:
            await sync(key, indexes, logger)
        except kopf.TemporaryError as exc:
            logger.debug("event-triggered pass of %s/%s: %s; the resync retries", key[0], key[1], exc)

    def forget(key: Key, uid: str) -> None:
        written.pop(uid, None)
        refused_status.pop(uid, None)
        locks.pop(key, None)
        # children go with the garbage collector (ownerReferences); only our gauge needs updating
        metrics.observe_phase(key[0], key[1], None)
