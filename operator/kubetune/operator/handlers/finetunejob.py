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
from kubetune.operator.manifests import BuildOptions
from kubetune.operator.manifests.labels import COMPONENT_LABEL, FINETUNEJOB_LABEL, TRAINER
from kubetune.operator.settings import OperatorSettings
from kubetune.operator.status import TERMINAL, now, status_patch, stuck_creating, truncate_utf8

Key = tuple[str, str]  # (namespace, FineTuneJob name)
UPSTREAM_FIELDS = (
    ("model", "adapter"),
    ("training", "rewardModel"),
    ("evaluation", "rewardModel"),
)  # spec.<a>.<b>.fromJob
EVENT_MESSAGE_BYTES = 1024  # the API server's limit on an Event's message, in bytes


def as_plain_data(value: Any) -> Any:
    """A kopf Body/view (or any value inside one) as plain JSON data: dicts, lists and scalars."""
    if isinstance(value, Mapping):
        return {k: as_plain_data(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_plain_data(v) for v in value]
    return value


def essentials(body: Any) -> dict[str, Any]:
    """What the decisions read of an object: metadata without managedFields (often larger than the rest), spec,
    status."""
    doc = as_plain_data(body)
    meta = {k: v for k, v in (doc.get("metadata") or {}).items() if k != "managedFields"}
    return {"metadata": meta, "spec": doc.get("spec") or {}, "status": doc.get("status") or {}}


def key_of(namespace: str | None, name: str) -> Key:
    """The index key of a namespaced object (kopf types ``namespace`` as optional, for cluster-scoped kinds)."""
    return (namespace or "", name)


def as_kopf_body(obj: Mapping[str, Any]) -> kopf.Body:
    """kopf's view of a plain object, for the kopf helpers that take one (owner references, Events)."""
    return kopf.Body(cast(kopf.RawBody, obj))


def first_or_none(values: Iterable[Any] | None) -> Any:
    """The first of ``values`` (a kopf index entry holds one body per key), None when there is none."""
    return next(iter(values), None) if values is not None else None


def upstream_names(spec: Any) -> list[str]:
    """FineTuneJobs this spec trains on top of (``spec.model.adapter.fromJob``, ``spec.training.rewardModel.fromJob``);
    none for a spec of any other shape (the pass reports that one)."""
    spec = as_plain_data(spec)
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
    logger: kopf.Logger,
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
                upstream[name] = first_or_none(finetunejobs.get((ns, name)))
            missing = [s for s in parsed.secrets if not await kube.secret_exists(ns, s)]
        stuck = stuck_creating(pods) if job is not None and poll else []
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


# ---------------------------------------------------------------------------------------------- the in-memory view
# kopf indexes, filled from the watches; their ids are the kwargs names handlers receive them by


def index_finetunejob(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    return {
        key_of(namespace, name): {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), **essentials(body)}
    }


def index_dependents(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Key, str]:
    """upstream FineTuneJob -> the FineTuneJobs that train on top of it."""
    return {key_of(namespace, upstream): name for upstream in upstream_names(body.get("spec"))}


def index_child(namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any) -> dict[Key, Any]:
    """A training Job or pod, under the FineTuneJob its label names (ownership is checked on each pass)."""
    return {key_of(namespace, labels[FINETUNEJOB_LABEL]): essentials(body)}


def register_indexes(registry: kopf.OperatorRegistry) -> None:
    kopf.index(GROUP, VERSION, PLURAL, id="finetunejobs", registry=registry)(index_finetunejob)
    kopf.index(GROUP, VERSION, PLURAL, id="dependents", registry=registry)(index_dependents)
    kopf.index("batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="training_jobs", registry=registry)(
        index_child
    )
    kopf.index(
        "",
        "v1",
        "pods",
        labels={FINETUNEJOB_LABEL: kopf.PRESENT, COMPONENT_LABEL: TRAINER},
        id="training_pods",
        registry=registry,
    )(index_child)


JOB_LABELS = {FINETUNEJOB_LABEL: kopf.PRESENT}
POD_LABELS = {FINETUNEJOB_LABEL: kopf.PRESENT, COMPONENT_LABEL: TRAINER}


# ---------------------------------------------------------------------------------------------- the passes


class Reconciler:
    """One operator's passes over its FineTuneJobs, and what the passes remember between them.

    A pass: decide (:func:`reconcile_once`) → add what the pods report (progress, guard, hang watchdog, cost) →
    write the status where it changed → post the Events and update the metrics. Passes for one FineTuneJob never
    overlap (a lock per object)."""

    def __init__(self, op: OperatorSettings) -> None:
        self.op = op
        self.options = op.build_options()
        # uid -> (the status we last wrote, when). Until the watch brings our own write back, a pass would
        # decide on a stale status and announce the same transition twice, so it waits (at most stale_wait).
        self.written: dict[str, tuple[dict[str, Any], float]] = {}
        self.stale_wait = max(30.0, 10 * op.sync_interval)
        self.locks: dict[Key, asyncio.Lock] = {}
        # uid -> (the server's reason for refusing our last status write, the refused patch)
        self.refused_status: dict[str, tuple[str, dict[str, Any] | None]] = {}
        # a pass makes a handful of calls, each bounded by the client timeout; past this, it is abandoned (its lock
        # freed)
        self.pass_timeout = 4 * op.api_timeout
        self.resyncing: list[asyncio.Task[None]] = []

    # ------------------------------------------------------------------ startup and cleanup

    async def start(self, settings: kopf.OperatorSettings, indexes: Mapping[str, Any], logger: kopf.Logger) -> None:
        config.configure(settings, self.op)  # the metrics endpoint is served before kopf starts (__main__.operate)
        if self.op.standalone:
            self.resyncing.append(asyncio.create_task(self.resync_all(indexes, logger), name="kubetune-resync"))

    async def stop(self) -> None:
        for task in self.resyncing:
            task.cancel()
        await asyncio.gather(*self.resyncing, return_exceptions=True)
        for task in asyncio.all_tasks():
            if task.get_name().startswith("kubetune-resync-"):
                task.cancel()

    # ------------------------------------------------------------------ one pass

    async def sync(self, key: Key, indexes: Mapping[str, Any], logger: kopf.Logger, *, poll: bool = False) -> None:
        """Reconcile the FineTuneJob ``key`` from the indexes; ``poll`` also scrapes training progress."""
        async with self.locks.setdefault(key, asyncio.Lock()):
            raw = first_or_none(indexes["finetunejobs"].get(key))  # the newest body, read once the lock is ours
            if raw is None or (raw.get("metadata") or {}).get("deletionTimestamp"):
                return
            await self.one_pass(key, raw, indexes, logger, poll=poll)

    async def one_pass(
        self, key: Key, raw: dict[str, Any], indexes: Mapping[str, Any], logger: kopf.Logger, *, poll: bool
    ) -> None:
        started = time.monotonic()
        uid = raw["metadata"].get("uid", "")
        if self._own_write_pending(uid, raw):
            return
        job, pods = owned_children(key, uid, indexes)
        try:
            decision = await reconcile_once(
                raw, self.options, logger, job=job, pods=pods, finetunejobs=indexes["finetunejobs"], poll=poll
            )
        except ApiException as exc:
            raise kopf.TemporaryError(
                f"API call failed: {exc.status} {exc.reason}", delay=self.op.sync_interval
            ) from None
        except (TimeoutError, kube.Unavailable) as exc:
            raise kopf.TemporaryError(f"API call failed: {exc}", delay=self.op.sync_interval) from None
        finally:
            metrics.RECONCILE_SECONDS.labels(handler="reconcile").observe(time.monotonic() - started)
        new, observed_events = await self._with_observations(raw, decision, pods, logger, poll=poll)
        if not await self._write_status(key, uid, raw, new, logger):
            return
        self._announce(key, raw, new, [*decision.events, *observed_events])

    def _own_write_pending(self, uid: str, raw: dict[str, Any]) -> bool:
        """Our last status write has not reached this body yet (a pass now would decide on a stale status)."""
        if uid not in self.written:
            return False
        ours, when = self.written[uid]
        if status_patch(raw.get("status"), ours) and time.monotonic() - when < self.stale_wait:
            return True
        del self.written[uid]
        return False

    async def _with_observations(
        self,
        raw: dict[str, Any],
        decision: reconcile.Decision,
        pods: list[dict[str, Any]],
        logger: kopf.Logger,
        *,
        poll: bool,
    ) -> tuple[dict[str, Any], list[reconcile.Event]]:
        """The decided status with what the pods report: training progress (scraped from rank 0 on a poll), the
        divergence guard, the hang watchdog and the cost so far; and the guard's and the watchdog's Events."""
        new = decision.status
        if decision.poll_progress and poll:
            new = await self._with_progress(new, pods, decision.output_uri, logger)
        new, guard_events = progress.guard_status(raw.get("status"), new, now())  # spec.training.guard
        new, stall_events = progress.stall_status(raw.get("status"), new, pods)  # exit 75: the hang watchdog
        return self._with_cost(raw, new, pods), [*guard_events, *stall_events]

    async def _with_progress(
        self, new: dict[str, Any], pods: list[dict[str, Any]], output_uri: str | None, logger: kopf.Logger
    ) -> dict[str, Any]:
        url = progress.rank0_url(pods, self.op.trainer_metrics_port)
        if not url:
            return new
        try:
            scraped = await progress.scrape(url, output_uri=output_uri)
        except Exception as exc:  # noqa: BLE001 - a slow or starting trainer must not fail the pass
            metrics.POLL_FAILURES.inc()
            logger.debug("progress scrape of %s failed: %s", url, exc)
            return new
        return {**new, **scraped, "progress": {**(new.get("progress") or {}), **scraped["progress"]}}

    def _with_cost(self, raw: dict[str, Any], new: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any]:
        """status.cost: GPU- and node-seconds of every pod, restarts included."""
        old_cost = (raw.get("status") or {}).get("cost")
        if not pods and not old_cost:
            return new
        tps = (new.get("progress") or {}).get("tokensPerSecond")
        used = cost.cost_status(
            old_cost, raw.get("spec") or {}, pods, tps, self.op.gpu_hour_prices, dt.datetime.now(dt.UTC)
        )
        if used["nodeSeconds"] > 0 or old_cost:  # pending pods cost nothing yet
            return {**new, "cost": used}
        return new

    async def _write_status(
        self, key: Key, uid: str, raw: dict[str, Any], new: dict[str, Any], logger: kopf.Logger
    ) -> bool:
        """Patch what changed in the status; False when the pass ends here: the server refused it (said once, never
        retried until the status to write changes)."""
        changes = status_patch(raw.get("status"), new)
        if not changes:
            return True
        if self.refused_status.get(uid, ("", None))[1] == untimed(changes):
            return False  # refused before, nothing new to write: no retry loop on a write the server refuses
        try:
            await kube.patch_status(key[0], key[1], changes)
        except (ApiException, kube.Unavailable) as exc:  # events wait for the status they announce; the next pass
            # retries both
            raise kopf.TemporaryError(f"status write failed: {exc}", delay=self.op.sync_interval) from None
        except kube.Refused as exc:  # the same status would be refused again: say it once, never loop on it
            if self.refused_status.get(uid, ("", None))[0] != exc.message:
                logger.error("the API server refused the status of %s/%s: %s", key[0], key[1], exc.message)
                message = f"the API server refused the status: {exc.message}"
                kopf.event(
                    as_kopf_body(raw),
                    type="Warning",
                    reason="StatusRejected",
                    message=truncate_utf8(message, EVENT_MESSAGE_BYTES),
                )
            self.refused_status[uid] = (exc.message, untimed(changes))
            return False
        self.refused_status.pop(uid, None)
        self.written[uid] = (new, time.monotonic())
        return True

    @staticmethod
    def _announce(key: Key, raw: dict[str, Any], new: dict[str, Any], events: list[reconcile.Event]) -> None:
        for kind, reason, message in events:
            kopf.event(
                as_kopf_body(raw), type=kind, reason=reason, message=truncate_utf8(message, EVENT_MESSAGE_BYTES)
            )
        metrics.observe_phase(key[0], key[1], new.get("phase"))
        metrics.observe_cost(key[0], key[1], gpu_type(raw), new.get("cost"))
        metrics.observe_evaluation(key[0], key[1], new.get("evaluation"))

    # ------------------------------------------------------------------ what triggers a pass

    async def on_event(self, key: Key, indexes: Mapping[str, Any], logger: kopf.Logger) -> None:
        """A pass triggered by a watch event; what fails temporarily is retried by the next event or resync."""
        try:
            await self.sync(key, indexes, logger)
        except kopf.TemporaryError as exc:
            logger.debug("event-triggered pass of %s/%s: %s; the resync retries", key[0], key[1], exc)

    async def on_finetunejob_event(
        self,
        event_type: str | None,
        key: Key,
        uid: str,
        phase: str | None,
        indexes: Mapping[str, Any],
        logger: kopf.Logger,
    ) -> None:
        """A FineTuneJob changed: its pass, then those of the FineTuneJobs that train on top of it once it ended
        (they may start, or fail, now); a deleted one is forgotten."""
        if event_type == "DELETED":
            self.forget(key, uid)
            return
        await self.on_event(key, indexes, logger)
        if phase in TERMINAL:
            for dependent in set(indexes["dependents"].get(key, ())):
                await self.on_event((key[0], dependent), indexes, logger)

    def forget(self, key: Key, uid: str) -> None:
        self.written.pop(uid, None)
        self.refused_status.pop(uid, None)
        self.locks.pop(key, None)
        # children go with the garbage collector (ownerReferences); only our gauge needs updating
        metrics.observe_phase(key[0], key[1], None)

    async def resync_all(self, indexes: Mapping[str, Any], logger: kopf.Logger) -> None:
        """The standalone resync: every unfinished FineTuneJob, every sync interval, a bounded number at once.

        A FineTuneJob whose last pass is still running (a slow API call, bounded by the client's timeout) is
        skipped this round; the others never wait for it."""
        limit = asyncio.Semaphore(kube.CONCURRENCY)
        running: dict[Key, asyncio.Task[None]] = {}
        while True:
            await asyncio.sleep(self.op.sync_interval)
            for key, bodies in list(indexes["finetunejobs"].items()):
                if reconcile.finished(first_or_none(bodies) or {}) or (key in running and not running[key].done()):
                    continue
                running[key] = asyncio.create_task(
                    self._resync_one(key, indexes, logger, limit), name=f"kubetune-resync-{key[0]}/{key[1]}"
                )
            for key in [k for k, t in running.items() if t.done()]:
                del running[key]

    async def _resync_one(
        self, key: Key, indexes: Mapping[str, Any], logger: kopf.Logger, limit: asyncio.Semaphore
    ) -> None:
        async with limit:
            try:
                await asyncio.wait_for(self.sync(key, indexes, logger, poll=True), timeout=self.pass_timeout)
            except kopf.TemporaryError as exc:
                logger.warning("resync of %s/%s: %s", key[0], key[1], exc)
            except TimeoutError:
                logger.warning(
                    "resync of %s/%s took over %.0f s; the next resync retries", key[0], key[1], self.pass_timeout
                )
            except Exception:  # one FineTuneJob's failure must not end the loop for all of them
                logger.exception("resync of %s/%s failed; the next resync retries", key[0], key[1])


def owned_children(
    key: Key, uid: str, indexes: Mapping[str, Any]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The FineTuneJob's training Job and that Job's pods, from the indexes (by owner UID, never by label alone)."""
    job = owned(indexes["training_jobs"].get(key), uid)
    job_uid = ((job or {}).get("metadata") or {}).get("uid", "")
    pods = [p for p in indexes["training_pods"].get(key, ()) if reconcile.owned_by(p, job_uid)]
    return job, pods


# ---------------------------------------------------------------------------------------------- the kopf handlers


def register(op: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    """One operator's handlers on ``registry``: login, startup and cleanup, the indexes, the watch events that
    trigger a pass and, with peering, the per-object resync timer. Each hands over to the :class:`Reconciler`."""
    reconciler = Reconciler(op)
    kube.set_timeout(op.api_timeout)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**kube.connection())

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, logger: kopf.Logger, **kwargs: Any) -> None:
        await reconciler.start(settings, kwargs, logger)

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        await reconciler.stop()

    register_indexes(registry)

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
            await reconciler.sync(key_of(namespace, name), kwargs, logger, poll=True)

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
        await reconciler.on_finetunejob_event(type, key_of(namespace, name), uid, status.get("phase"), kwargs, logger)

    @kopf.on.event(
        "batch", "v1", "jobs", labels={FINETUNEJOB_LABEL: kopf.PRESENT}, id="job-changed", registry=registry
    )
    async def job_changed(namespace: str | None, labels: kopf.Labels, logger: kopf.Logger, **kwargs: Any) -> None:
        await reconciler.on_event(key_of(namespace, labels[FINETUNEJOB_LABEL]), kwargs, logger)

    @kopf.on.event(
        "",
        "v1",
        "pods",
        labels={FINETUNEJOB_LABEL: kopf.PRESENT, COMPONENT_LABEL: TRAINER},
        id="pod-changed",
        registry=registry,
    )
    async def pod_changed(namespace: str | None, labels: kopf.Labels, logger: kopf.Logger, **kwargs: Any) -> None:
        await reconciler.on_event(key_of(namespace, labels[FINETUNEJOB_LABEL]), kwargs, logger)
