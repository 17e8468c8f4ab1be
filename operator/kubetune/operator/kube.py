"""The only module that talks to the Kubernetes API server.

It uses the official ``kubernetes`` client (``KUBECONFIG`` or in-cluster config, like any
client), runs its blocking calls in a dedicated thread pool sized with the client's connection
pool (not the event loop's default executor of cpus + 4 threads, which queues calls behind each
other when many FineTuneJobs reconcile at once), and speaks plain dicts: callers never see
client model classes. Every failed call is counted in the operator's metrics.

Every call has a timeout (connect, read): a hung API server costs one pass at most
:data:`TIMEOUT` seconds, never the lock of a FineTuneJob or the resync of all of them. Objects are
created with ``fieldValidation=Strict``, so a field the server does not know is an error, not a
silently pruned value. A request the server refuses for good (400, 403, 413, 422: invalid, forbidden
by RBAC, quota or admission, too large) raises :class:`Refused` with the server's own message;
anything else (timeouts, 429, 5xx) raises ``ApiException`` or ``OSError``-like errors to retry.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.operator import metrics

_api: client.ApiClient | None = None
CONCURRENCY = int(os.environ.get("KUBETUNE_API_CONCURRENCY", "32"))
_executor = ThreadPoolExecutor(max_workers=CONCURRENCY, thread_name_prefix="kube-api")
TIMEOUT = float(os.environ.get("KUBETUNE_API_TIMEOUT", "30"))
"""Seconds a call may take (read timeout); connecting gets at most :data:`CONNECT_TIMEOUT` of them."""
CONNECT_TIMEOUT = 5.0
PERMANENT = (400, 403, 405, 413, 415, 422)


def set_timeout(seconds: float) -> None:
    global TIMEOUT
    TIMEOUT = float(seconds)


def request_timeout() -> tuple[float, float]:
    return (min(CONNECT_TIMEOUT, TIMEOUT), TIMEOUT)


class Conflict(Exception):
    """The object exists already (409 on create)."""


class Unavailable(Exception):
    """The call did not complete: timeout, refused or reset connection (retry later)."""


class Refused(Exception):
    """The API server refused the request for good; ``message`` is the server's own (field paths included)."""

    def __init__(self, verb: str, kind: str, name: str, code: int, reason: str, message: str):
        self.verb, self.kind, self.name, self.code, self.reason, self.message = verb, kind, name, code, reason, message
        super().__init__(f"{verb} {kind} {name}: {code} {reason}: {message}")


class OwnedByOther(Exception):
    """A child's name is taken by an object owned by another object (an earlier FineTuneJob of the same name)."""

    def __init__(self, kind: str, name: str):
        self.kind, self.name = kind, name
        super().__init__(f"{kind} {name} belongs to another owner")


def _refusal(exc: ApiException) -> tuple[str, str]:
    """(reason, message) of a failed call, from the Status object the server sends."""
    try:
        body = json.loads(exc.body or "{}")
    except (TypeError, ValueError):
        body = {}
    if not isinstance(body, dict):
        body = {}
    return str(body.get("reason") or exc.reason or ""), str(body.get("message") or exc.reason or "").strip()


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
        "server": cfg.host,
        "ca_path": cfg.ssl_ca_cert,
        "insecure": not cfg.verify_ssl,
        "username": cfg.username or None,
        "password": cfg.password or None,
        "scheme": scheme,
        "token": token,
        "certificate_path": cfg.cert_file,
        "private_key_path": cfg.key_file,
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
        call = functools.partial(fn, *args, _preload_content=False, _request_timeout=request_timeout(), **kwargs)
        return _raw(await asyncio.get_running_loop().run_in_executor(_executor, call))
    except ApiException as exc:
        metrics.API_ERRORS.labels(verb=verb, code=str(exc.status)).inc()
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        metrics.API_ERRORS.labels(verb=verb, code="timeout" if "timed out" in str(exc).lower() else "network").inc()
        raise Unavailable(f"{verb}: {type(exc).__name__}: {exc}") from None


async def _get(fn: Any, *args: Any) -> dict[str, Any] | None:
    try:
        return await _call("get", fn, *args)
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status in PERMANENT:
            raise Refused(
                "get", fn.__name__.removeprefix("read_namespaced_"), str(args[0]), exc.status, *_refusal(exc)
            ) from None
        raise


# ------------------------------------------------------------------------------------------------ reads


async def get_job(namespace: str, name: str) -> dict[str, Any] | None:
    return await _get(client.BatchV1Api(api()).read_namespaced_job, name, namespace)


async def get_finetunejob(namespace: str, name: str) -> dict[str, Any] | None:
    """The FineTuneJob as the API server has it now (not as a lagging watch does); None when it is gone."""
    return await _get(
        client.CustomObjectsApi(api()).get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
    )


async def secret_exists(namespace: str, name: str) -> bool:
    # read only to learn whether it exists; the data is dropped at once and never logged
    return await _get(client.CoreV1Api(api()).read_namespaced_secret, name, namespace) is not None


# ------------------------------------------------------------------------------------------------ writes


CREATE = {
    "ConfigMap": ("create_namespaced_config_map", "read_namespaced_config_map", "patch_namespaced_config_map", "core"),
    "Service": ("create_namespaced_service", "read_namespaced_service", None, "core"),
    "Job": ("create_namespaced_job", "read_namespaced_job", None, "batch"),
}


def _apis(kind: str) -> tuple[Any, Any, Any]:
    create_fn, read_fn, patch_fn, group = CREATE[kind]
    api_obj = client.CoreV1Api(api()) if group == "core" else client.BatchV1Api(api())
    return getattr(api_obj, create_fn), getattr(api_obj, read_fn), getattr(api_obj, patch_fn) if patch_fn else None


async def create(obj: dict[str, Any]) -> dict[str, Any]:
    """Create one child (strict field validation); :class:`Conflict` if it exists, :class:`Refused` if the
    server refuses it for good."""
    ns = obj["metadata"]["namespace"]
    kind = obj["kind"]
    fn = _apis(kind)[0]
    try:
        return await _call("create", fn, ns, obj, field_validation="Strict")
    except ApiException as exc:
        if exc.status == 409:
            raise Conflict(f"{kind} {ns}/{obj['metadata']['name']} exists") from None
        if exc.status in PERMANENT:
            raise Refused("create", kind, obj["metadata"]["name"], exc.status, *_refusal(exc)) from None
        raise


def _owner_uids(obj: dict[str, Any]) -> set[str]:
    return {r.get("uid") for r in (obj.get("metadata") or {}).get("ownerReferences") or []}


async def ensure(objs: list[dict[str, Any]]) -> list[str]:
    """Create each object unless it exists (idempotent across restarts and replays); names created.

    An existing object counts only if it has the same owner (the owner reference the caller added): one of an
    earlier FineTuneJob of the same name, not yet collected, raises :class:`OwnedByOther`. Our own ConfigMap built
    from another spec (its Job was refused, then the spec changed) is patched to the new content."""
    created = []
    for obj in objs:
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            await create(obj)
            created.append(f"{kind}/{name}")
            continue
        except Conflict:
            pass
        _, read_fn, patch_fn = _apis(kind)
        existing = await _get(read_fn, name, ns)
        if existing is None:  # deleted in between: the next pass creates it
            raise OwnedByOther(kind, name)
        if not _owner_uids(obj) & _owner_uids(existing):
            raise OwnedByOther(kind, name)
        want = (obj["metadata"].get("annotations") or {}).get("kubetune.io/spec-hash")
        have = ((existing.get("metadata") or {}).get("annotations") or {}).get("kubetune.io/spec-hash")
        if patch_fn is not None and want and want != have:
            await _call(
                "patch",
                patch_fn,
                name,
                ns,
                {"metadata": {"annotations": obj["metadata"]["annotations"]}, "data": obj.get("data")},
            )
            created.append(f"{kind}/{name} (updated)")
    return created


async def patch_job(
    namespace: str, name: str, *, suspend: bool | None = None, annotations: dict[str, str | None] | None = None
) -> dict[str, Any]:
    """Merge-patch the Job's ``spec.suspend`` and/or annotations (None removes one)."""
    body: dict[str, Any] = {}
    if suspend is not None:
        body["spec"] = {"suspend": suspend}
    if annotations:
        body["metadata"] = {"annotations": annotations}
    return await _call(
        "patch",
        client.BatchV1Api(api()).patch_namespaced_job,
        name,
        namespace,
        body,
        _content_type="application/merge-patch+json",
    )


async def pod_warnings(namespace: str, pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Warning Events of these pods (the kubelet reports failed mounts only there), newest last."""
    out: list[dict[str, Any]] = []
    for pod in pods:
        uid = (pod.get("metadata") or {}).get("uid")
        if not uid:
            continue
        events = await _call(
            "list",
            client.CoreV1Api(api()).list_namespaced_event,
            namespace,
            field_selector=f"involvedObject.uid={uid},type=Warning",
        )
        out += events.get("items") or []
    return out


async def patch_status(namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any] | None:
    """Merge-patch ``status`` through the status subresource; None if the object is gone.

    Done here rather than through kopf's ``patch`` so a failed write (409, 5xx) surfaces in the
    handler as a retryable error (the next watch event or resync retries it)."""
    try:
        return await _call(
            "patch",
            client.CustomObjectsApi(api()).patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )
    except ApiException as exc:
        if exc.status == 404:
            return None
        if exc.status in PERMANENT:
            raise Refused("patch", "FineTuneJob status", name, exc.status, *_refusal(exc)) from None
        raise
