"""The only module that talks to the Kubernetes API server.

It uses the official ``kubernetes`` client (``KUBECONFIG`` or in-cluster config, like any
client), runs its blocking calls in a dedicated thread pool sized with the client's connection
pool (not the event loop's default executor of cpus + 4 threads, which queues calls behind each
other when many FineTuneJobs reconcile at once), and speaks plain dicts: callers never see
client model classes. Every failed call is counted in the operator's metrics.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.operator import metrics

_api: client.ApiClient | None = None
CONCURRENCY = int(os.environ.get("KUBETUNE_API_CONCURRENCY", "32"))
_executor = ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="kube-api")


class Conflict(Exception):
    """The object exists already (409 on create)."""


def configure() -> client.Configuration:
    """(Re)load the connection: in-cluster when running in a pod, else $KUBECONFIG / ~/.kube/config.

    $KUBECONFIG is read now, not at import time (the client library's default is frozen at import)."""
    global _api
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG") or None)
    cfg = client.Configuration.get_default_copy()
    cfg.connection_pool_maxsize = CONCURRENCY  # one connection per worker thread, none discarded
    _api = client.ApiClient(cfg)
    return cfg


def connection() -> dict[str, Any]:
    """The loaded connection as keyword arguments of ``kopf.ConnectionInfo`` (kopf's own client)."""
    cfg = configure()
    header = cfg.get_api_key_with_prefix("BearerToken") or cfg.get_api_key_with_prefix("authorization")
    parts = header.split(" ", 1) if header else []
    scheme, token = (None, None) if not parts else (None, parts[0]) if len(parts) == 1 else (parts[0], parts[1])
    return {
        "server": cfg.host, "ca_path": cfg.ssl_ca_cert, "insecure": not cfg.verify_ssl,
        "username": cfg.username or None, "password": cfg.password or None, "scheme": scheme, "token": token,
        "certificate_path": cfg.cert_file, "private_key_path": cfg.key_file,
    }


def api() -> client.ApiClient:
    if _api is None:
        configure()
    assert _api is not None
    return _api


def _raw(response: Any) -> dict[str, Any]:
    data = response.data if hasattr(response, "data") else response
    return json.loads(data) if data else {}


async def _call(verb: str, fn: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        call = functools.partial(fn, *args, _preload_content=False, **kwargs)
        return _raw(await asyncio.get_running_loop().run_in_executor(_executor, call))
    except ApiException as exc:
        metrics.API_ERRORS.labels(verb=verb, code=str(exc.status)).inc()
        raise


async def _get(fn: Any, *args: Any) -> dict[str, Any] | None:
    try:
        return await _call("get", fn, *args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


# ------------------------------------------------------------------------------------------------ reads


async def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    return await _get(client.BatchV1Api(api()).read_namespaced_job, name, namespace)


async def secret_exists(namespace: str, name: str) -> bool:
    # read only to learn whether it exists; the data is dropped at once and never logged
    return await _get(client.CoreV1Api(api()).read_namespaced_secret, name, namespace) is not None


# ------------------------------------------------------------------------------------------------ writes


async def create(obj: dict[str, Any]) -> dict[str, Any]:
    """Create one child; raise :class:`Conflict` if it exists."""
    ns = obj["metadata"]["namespace"]
    kind = obj["kind"]
    fn = {
        "ConfigMap": client.CoreV1Api(api()).create_namespaced_config_map,
        "Service": client.CoreV1Api(api()).create_namespaced_service,
        "Job": client.BatchV1Api(api()).create_namespaced_job,
    }[kind]
    try:
        return await _call("create", fn, ns, obj)
    except ApiException as exc:
        if exc.status == 409:
            raise Conflict(f"{kind} {ns}/{obj['metadata']['name']} exists") from None
        raise


async def ensure(objs: list[dict[str, Any]]) -> list[str]:
    """Create each object unless it exists (idempotent across restarts and replays); names created."""
    created = []
    for obj in objs:
        try:
            await create(obj)
            created.append(f"{obj['kind']}/{obj['metadata']['name']}")
        except Conflict:
            pass
    return created


async def set_job_suspend(namespace: str, name: str, suspend: bool) -> dict[str, Any]:
    return await _call("patch", client.BatchV1Api(api()).patch_namespaced_job, name, namespace, {"spec": {"suspend": suspend}},
                       _content_type="application/merge-patch+json")


async def patch_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch ``status`` through the status subresource; None if the object is gone.

    Done here rather than through kopf's ``patch`` so a failed write (409, 5xx) surfaces in the
    handler as a retryable error (the next watch event or resync retries it)."""
    try:
        return await _call("patch", client.CustomObjectsApi(api()).patch_namespaced_custom_object_status,
                           GROUP, VERSION, namespace, PLURAL, name, {"status": status},
                           _content_type="application/merge-patch+json")
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
