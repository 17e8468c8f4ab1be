"""The FineTuneJob handlers: glue between kopf, the pure decisions and :mod:`kube`.

One level-triggered timer per FineTuneJob (first tick at once, then every
``--sync-interval`` seconds) runs :func:`reconcile_once`: parse → look up → decide →
ensure children → patch the status when it changed → post Events.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.operator import config, kube, metrics, progress, reconcile
from kubetune.operator import status as st
from kubetune.operator.manifests import BuildOptions
from kubetune.operator.manifests.labels import selector, selector_string
from kubetune.operator.settings import OperatorSettings


def plain(value: Any) -> Any:
    """A kopf Body/view as plain JSON data."""
    if isinstance(value, Mapping):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


async def reconcile_once(body: dict[str, Any], options: BuildOptions, logger: Any) -> reconcile.Decision:
    """One pass for one FineTuneJob; returns the decision (the caller patches status and posts events)."""
    if reconcile.finished(body):
        return reconcile.Decision(status=dict(body.get("status") or {}))
    parsed = reconcile.parse(body, options)
    ns = parsed.namespace
    job = await kube.get_job(ns, parsed.job_name)
    pods: list[dict[str, Any]] = []
    upstream: dict[str, dict[str, Any] | None] = {}
    missing: list[str] = []
    if job is not None:
        pods = await kube.list_pods(ns, selector_string(selector(parsed.name)))
    elif parsed.job is not None:
        for name in set(parsed.upstream.values()):
            upstream[name] = await kube.get_finetunejob(ns, name)
        missing = [s for s in parsed.secrets if not await kube.secret_exists(ns, s)]
    decision = reconcile.decide(body, parsed, options, job=job, pods=pods, upstream=upstream, missing_secrets=missing)
    if decision.children:
        kopf.adopt(decision.children, owner=body)
        created = await kube.ensure(decision.children)
        if created:
            logger.info("created %s", ", ".join(created))
    if decision.suspend_job is not None:
        await kube.set_job_suspend(ns, parsed.job_name, decision.suspend_job)
        logger.info("%s the training Job", "suspended" if decision.suspend_job else "resumed")
    return decision


def register(op: OperatorSettings, registry: kopf.OperatorRegistry) -> None:
    options = op.build_options()
    # uid -> (the status we last wrote, when). Until the watch brings our own write back, a pass would
    # decide on a stale status and announce the same transition twice, so it waits (at most STALE_WAIT).
    written: dict[str, tuple[dict[str, Any], float]] = {}
    stale_wait = max(30.0, 10 * op.sync_interval)

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(**kube.connection())

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        config.configure(settings, op)
        metrics.serve(op.metrics_port)

    @kopf.timer(GROUP, VERSION, PLURAL, id="reconcile", interval=op.sync_interval, backoff=op.sync_interval,
                registry=registry)
    async def reconcile_finetunejob(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, **_: Any) -> None:
        started = time.monotonic()
        raw = plain(body)
        uid = raw["metadata"].get("uid", "")
        if uid in written:
            ours, when = written[uid]
            if st.status_patch(raw.get("status"), ours) and time.monotonic() - when < stale_wait:
                return  # our last write has not reached this body yet
            del written[uid]
        try:
            decision = await reconcile_once(raw, options, logger)
        except ApiException as exc:
            raise kopf.TemporaryError(f"API call failed: {exc.status} {exc.reason}", delay=op.sync_interval) from None
        finally:
            metrics.RECONCILE_SECONDS.labels(handler="reconcile").observe(time.monotonic() - started)
        new = decision.status
        if decision.poll_progress:
            url = progress.rank0_url(await kube.list_pods(raw["metadata"]["namespace"], selector_string(
                selector(raw["metadata"]["name"]))), op.trainer_metrics_port)
            if url:
                try:
                    scraped = await progress.scrape(url, output_uri=reconcile.parse(raw, options).output_uri)
                    new = {**new, **scraped, "progress": {**(new.get("progress") or {}), **scraped["progress"]}}
                except Exception as exc:  # noqa: BLE001 - a slow or starting trainer must not fail the pass
                    metrics.POLL_FAILURES.inc()
                    logger.debug("progress scrape of %s failed: %s", url, exc)
        changes = st.status_patch(raw.get("status"), new)
        if changes:
            try:
                await kube.patch_status(raw["metadata"]["namespace"], raw["metadata"]["name"], changes)
            except ApiException as exc:  # events wait for the status they announce; the next pass retries both
                raise kopf.TemporaryError(f"status write failed: {exc.status} {exc.reason}", delay=op.sync_interval) from None
            written[uid] = (new, time.monotonic())
        for kind, reason, message in decision.events:
            kopf.event(body, type=kind, reason=reason, message=message[:1024])
        metrics.observe_phase(raw["metadata"]["namespace"], raw["metadata"]["name"], new.get("phase"))

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="forget", optional=True, registry=registry)
    def forget(name: str, namespace: str, uid: str, **_: Any) -> None:
        written.pop(uid, None)
        # children go with the garbage collector (ownerReferences); only our gauge needs updating
        metrics.observe_phase(namespace, name, None)
