"""A Python client for FineTuneJobs on a cluster: submit, list, get, logs, wait, cancel, manifest.

For notebooks and scripts, on the same kubeconfig rules as kubectl (``kubeconfig=`` argument, else
``$KUBECONFIG``, else ``~/.kube/config``, else the in-cluster service account)::

    from kubetune.client import KubetuneClient

    kt = KubetuneClient(namespace="ml")
    kt.submit("examples/quickstart.yaml")          # a path, a YAML string, a dict or a kubetune.api FineTuneJob
    for line in kt.logs("quickstart", follow=True):  # the rank-0 trainer, across restarts
        print(line)
    job = kt.wait("quickstart", timeout=3600)       # raises JobFailed / WaitTimeout with the reason
    print(job.status.artifacts.adapter_uri, kt.manifest("quickstart")["files"])

Every error is a :class:`KubetuneError` whose message is one line (what failed and what to do). The module
imports no ML library; :meth:`KubetuneClient.manifest` uses the trainer's storage code when the ``trainer``
extra is installed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.checks import clip_text
from kubetune.api.redact import redact
from kubetune.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION, Condition, FineTuneJob, FineTuneJobStatus
from kubetune.api.validation import InvalidFineTuneJob, jobs_from_documents, parse_job, read_jobs
from kubetune.api.yamlload import load_documents
from kubetune.operator.manifests.labels import COMPONENT_LABEL, FINETUNEJOB_LABEL, TRAINER

__all__ = ["JobFailed", "JobView", "KubetuneClient", "KubetuneError", "WaitTimeout"]

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"
FIELD_MANAGER = "kubetune"
TERMINAL = ("Succeeded", "Failed")
_SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class KubetuneError(RuntimeError):
    """A failed client call; ``str()`` is one line that says what failed and what to do."""


class JobFailed(KubetuneError):
    """:meth:`KubetuneClient.wait` saw the job fail (or vanish); ``job`` is its last view (None when deleted)."""

    def __init__(self, message: str, job: JobView | None = None):
        super().__init__(message)
        self.job = job


class WaitTimeout(KubetuneError):
    """:meth:`KubetuneClient.wait` ran out of time; ``job`` is the last view."""

    def __init__(self, message: str, job: JobView | None = None):
        super().__init__(message)
        self.job = job


@dataclass(frozen=True)
class JobView:
    """One FineTuneJob as the API server holds it: the typed status and the raw object."""

    name: str
    namespace: str
    stage: str | None
    status: FineTuneJobStatus
    created: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def phase(self) -> str | None:
        return self.status.phase

    def condition(self, ctype: str) -> Condition | None:
        """The condition of that type, or None."""
        return next((c for c in self.status.conditions if c.type == ctype), None)

    def reason(self) -> str:
        """Why the job is where it is, from its conditions (Failed, then Stalled, then Ready=False), one line."""
        for ctype, wanted in (("Failed", "True"), ("Stalled", "True"), ("Succeeded", "False"), ("Ready", "False")):
            c = self.condition(ctype)
            if c is not None and c.status == wanted and (c.reason or c.message):
                return clip_text(f"{c.reason}: {c.message}" if c.reason and c.message else c.reason or c.message, 400)
        return f"phase {self.phase or 'unknown'}"

    @classmethod
    def from_object(cls, obj: dict[str, Any]) -> JobView:
        meta = obj.get("metadata") or {}
        raw_status = obj.get("status") or {}
        try:
            status = FineTuneJobStatus.model_validate(raw_status)
        except ValueError:  # a status written by another version: keep what parses
            status = FineTuneJobStatus.model_validate(
                {k: v for k, v in raw_status.items() if k in ("phase", "conditions") and v is not None}
            )
        return cls(
            name=meta.get("name", ""),
            namespace=meta.get("namespace", ""),
            stage=(obj.get("spec") or {}).get("stage"),
            status=status,
            created=meta.get("creationTimestamp"),
            raw=obj,
        )


def _api_message(exc: Any) -> str:
    """The API server's own message of an ApiException (its Status body), one line."""
    try:
        body = json.loads(exc.body or "{}")
        msg = body.get("message") or exc.reason
    except (ValueError, AttributeError):
        msg = getattr(exc, "reason", None) or str(exc)
    return clip_text(redact(" ".join(str(msg).split())), 400)


def _reraise(exc: Exception) -> None:
    raise exc


class KubetuneClient:
    """FineTuneJobs on one cluster, through the ``kubernetes`` client.

    :param namespace: default namespace of every call (else the kubeconfig context's, else the pod's, else
        ``default``).
    :param kubeconfig: a kubeconfig file (else ``$KUBECONFIG``, else ``~/.kube/config``, else in-cluster).
    :param context: a context of that kubeconfig (else its current context).
    """

    def __init__(
        self,
        namespace: str | None = None,
        kubeconfig: str | os.PathLike[str] | None = None,
        context: str | None = None,
    ):
        from kubernetes import client, config
        from kubernetes.config.config_exception import ConfigException

        path = str(kubeconfig) if kubeconfig else os.environ.get("KUBECONFIG") or str(Path.home() / ".kube/config")
        files = [p for p in path.split(os.pathsep) if p]
        default_ns = "default"
        try:
            if kubeconfig or any(Path(p).expanduser().exists() for p in files):
                if kubeconfig and not Path(str(kubeconfig)).expanduser().exists():
                    raise KubetuneError(f"kubeconfig {kubeconfig} does not exist")
                self.api = config.new_client_from_config(config_file=path, context=context)
                contexts, active = config.list_kube_config_contexts(config_file=path)
                chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
                default_ns = ((chosen or {}).get("context") or {}).get("namespace") or default_ns
            elif os.environ.get("KUBERNETES_SERVICE_HOST"):
                cfg = client.Configuration()
                config.load_incluster_config(client_configuration=cfg)
                self.api = client.ApiClient(cfg)
                if _SA_NAMESPACE.exists():
                    default_ns = _SA_NAMESPACE.read_text(encoding="utf-8").strip() or default_ns
            else:
                raise KubetuneError(
                    f"no kubeconfig ({path} does not exist) and not in a pod: set KUBECONFIG or pass --kubeconfig"
                )
        except ConfigException as exc:
            raise KubetuneError(f"kubeconfig {path}: {clip_text(redact(' '.join(str(exc).split())), 300)}") from None
        self.namespace = namespace or default_ns
        self._custom = client.CustomObjectsApi(self.api)
        self._core = client.CoreV1Api(self.api)

    # ------------------------------------------------------------------------------------------ plumbing

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one API call; ApiException and connection errors become one-line KubetuneErrors."""
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and "the server could not find the requested resource" in (exc.body or ""):
                raise KubetuneError(
                    f"{what}: the FineTuneJob CRD is not installed on this cluster "
                    "(helm install kubetune charts/kubetune, or kubetune crd | kubectl apply -f -)"
                ) from None
            raise KubetuneError(f"{what}: {_api_message(exc)}") from None
        except HTTPError as exc:
            host = getattr(self.api.configuration, "host", "?")
            raise KubetuneError(
                f"{what}: cannot reach the Kubernetes API at {host} "
                f"({type(exc).__name__}); check the kubeconfig and the cluster"
            ) from None

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.namespace

    def _get_raw(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        ns = self._ns(namespace)
        return self._call(
            f"get FineTuneJob {ns}/{name}", self._custom.get_namespaced_custom_object, GROUP, VERSION, ns, PLURAL, name
        )

    # ------------------------------------------------------------------------------------------ submit

    def _documents(self, job: FineTuneJob | dict[str, Any] | str | os.PathLike[str]) -> list[dict[str, Any]]:
        """Validated documents to send, in kubetune.api's words when invalid."""
        try:
            if isinstance(job, FineTuneJob):
                return [job.model_dump(by_alias=True, exclude_none=True, mode="json")]
            if isinstance(job, dict):
                parse_job(job)
                return [job]
            if isinstance(job, os.PathLike) or (isinstance(job, str) and "\n" not in job and Path(job).is_file()):
                jobs, problems = read_jobs(job)
                source = str(job)
                docs = (
                    [d for d in load_documents(Path(job).read_bytes()) if isinstance(d, dict)] if not problems else []
                )
            elif isinstance(job, str):
                source = "<yaml>"
                docs = load_documents(job)
                jobs, problems = jobs_from_documents(docs)
            else:
                raise KubetuneError(
                    f"submit takes a FineTuneJob, a dict, a YAML string or a path, not {type(job).__name__}"
                )
        except InvalidFineTuneJob as exc:
            raise KubetuneError(f"invalid FineTuneJob: {clip_text(str(exc), 600)}") from None
        except (OSError, ValueError) as exc:
            raise KubetuneError(
                f"cannot read {clip_text(str(job), 120)}: {clip_text(redact(str(exc)), 300)}"
            ) from None
        if problems:
            raise KubetuneError(
                f"invalid FineTuneJob in {source}: "
                + "; ".join(str(p) for p in problems[:5])
                + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else "")
            )
        if not jobs:
            raise KubetuneError(f"{source}: no FineTuneJob found")
        names = {(j.metadata.namespace, j.metadata.name) for j in jobs}
        selected: list[dict[str, Any]] = []
        for doc in docs:
            items = doc["items"] if doc.get("kind") == "List" and isinstance(doc.get("items"), list) else [doc]
            for item in items:
                meta = item.get("metadata") if isinstance(item, dict) else None
                if (
                    isinstance(meta, dict)
                    and item.get("kind") == KIND
                    and (meta.get("namespace"), meta.get("name")) in names
                ):
                    selected.append(item)
        return selected

    def submit_all(
        self, source: FineTuneJob | dict[str, Any] | str | os.PathLike[str], namespace: str | None = None
    ) -> list[JobView]:
        """Validate every FineTuneJob of ``source`` (nothing is sent when one is invalid), then create each, or
        server-side apply it when it exists; the API server checks fields strictly (unknown fields are errors)."""
        docs = self._documents(source)
        out = []
        for doc in docs:
            doc_ns = (doc.get("metadata") or {}).get("namespace")
            if namespace and doc_ns and namespace != doc_ns:
                raise KubetuneError(
                    f"FineTuneJob {doc['metadata']['name']} is in namespace {doc_ns}, not {namespace}: "
                    "drop -n or metadata.namespace"
                )
            ns = doc_ns or self._ns(namespace)
            body = {**doc, "metadata": {**doc["metadata"], "namespace": ns}}
            body.pop("status", None)
            out.append(JobView.from_object(self._create_or_apply(body, ns)))
        return out

    def submit(
        self, job: FineTuneJob | dict[str, Any] | str | os.PathLike[str], namespace: str | None = None
    ) -> JobView:
        """Validate and send one FineTuneJob (a ``kubetune.api`` model, a dict, a YAML string or a path) and return
        it as the API server stored it. A file with several jobs: use :meth:`submit_all`."""
        docs = self._documents(job)
        if len(docs) != 1:
            raise KubetuneError(f"submit takes one FineTuneJob, this holds {len(docs)}: use submit_all")
        return self.submit_all(docs[0], namespace)[0]

    def _create_or_apply(self, body: dict[str, Any], ns: str) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        try:
            return self._custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, PLURAL, body, field_manager=FIELD_MANAGER, field_validation="Strict"
            )
        except ApiException as exc:
            if exc.status != 409:
                raise KubetuneError(f"create FineTuneJob {ns}/{name}: {_api_message(exc)}") from None
        except Exception as exc:  # noqa: BLE001 - connection errors: one line through _call's wording
            self._call(f"create FineTuneJob {ns}/{name}", _reraise, exc)
        return self._call(
            f"apply FineTuneJob {ns}/{name}",
            self._custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            field_validation="Strict",
            _content_type="application/apply-patch+yaml",
        )

    # ------------------------------------------------------------------------------------------ read

    def list(self, namespace: str | None = None, all_namespaces: bool = False) -> list[JobView]:
        """The FineTuneJobs of ``namespace`` (or of every namespace), by name."""
        if all_namespaces:
            data = self._call("list FineTuneJobs", self._custom.list_cluster_custom_object, GROUP, VERSION, PLURAL)
        else:
            ns = self._ns(namespace)
            data = self._call(
                f"list FineTuneJobs in {ns}", self._custom.list_namespaced_custom_object, GROUP, VERSION, ns, PLURAL
            )
        return sorted((JobView.from_object(o) for o in data.get("items") or []), key=lambda j: (j.namespace, j.name))

    def get(self, name: str, namespace: str | None = None) -> JobView:
        """One FineTuneJob: phase, conditions, progress, datasets report, artifacts (``.status``), raw object."""
        return JobView.from_object(self._get_raw(name, namespace))

    # ------------------------------------------------------------------------------------------ logs

    def _rank_pods(self, name: str, rank: int, ns: str) -> list[dict[str, Any]]:
        sel = f"{FINETUNEJOB_LABEL}={name},{COMPONENT_LABEL}={TRAINER}"
        resp = self._call(
            f"list the pods of {ns}/{name}",
            self._core.list_namespaced_pod,
            ns,
            label_selector=sel,
            _preload_content=False,
        )  # plain JSON: no model round trip of fields we do not read
        pods = json.loads(resp.data or b"{}").get("items") or []

        def index(pod: dict[str, Any]) -> str | None:
            meta = pod.get("metadata") or {}
            return (meta.get("labels") or {}).get(COMPLETION_INDEX) or (meta.get("annotations") or {}).get(
                COMPLETION_INDEX
            )

        return sorted(
            (p for p in pods if index(p) == str(rank)), key=lambda p: p["metadata"].get("creationTimestamp") or ""
        )

    @staticmethod
    def _restarts(pod: dict[str, Any]) -> int:
        return sum(int(c.get("restartCount") or 0) for c in (pod.get("status") or {}).get("containerStatuses") or [])

    @staticmethod
    def _container(pod: dict[str, Any]) -> str:
        names = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
        return TRAINER if TRAINER in names else (names[0] if names else TRAINER)

    def logs(
        self, name: str, rank: int = 0, follow: bool = False, namespace: str | None = None, poll_interval: float = 1.0
    ) -> Iterator[str]:
        """The log lines of the trainer pod of ``rank`` (its Job completion index). With ``follow``, lines as they
        come, across container restarts and replacement pods, until the job finishes or is deleted."""
        ns = self._ns(namespace)
        if rank < 0:
            raise KubetuneError(f"--rank must be 0 or more, not {rank}")
        pods = self._rank_pods(name, rank, ns)
        if not pods:
            job = self.get(name, ns)  # raises when the job does not exist
            if not follow:
                raise KubetuneError(
                    f"FineTuneJob {ns}/{name} has no pod of rank {rank} (phase "
                    f"{job.phase or 'Pending'}; {job.reason()})"
                )
        if not follow:
            pod = pods[-1]
            resp = self._call(
                f"logs of pod {pod['metadata']['name']}",
                self._core.read_namespaced_pod_log,
                pod["metadata"]["name"],
                ns,
                container=self._container(pod),
                _preload_content=False,
            )
            yield from (resp.data or b"").decode("utf-8", errors="replace").splitlines()
            return
        yield from self._follow(name, rank, ns, poll_interval)

    def _follow(self, name: str, rank: int, ns: str, poll_interval: float) -> Iterator[str]:
        seen: set[tuple[str, int]] = set()
        while True:
            pods = self._rank_pods(name, rank, ns)
            fresh = [
                p
                for p in pods
                if (p["metadata"]["uid"], self._restarts(p)) not in seen
                and (p.get("status") or {}).get("phase") not in (None, "Pending")
            ]
            if fresh:
                pod = fresh[-1]
                seen.add((pod["metadata"]["uid"], self._restarts(pod)))
                resp = self._call(
                    f"logs of pod {pod['metadata']['name']}",
                    self._core.read_namespaced_pod_log,
                    pod["metadata"]["name"],
                    ns,
                    container=self._container(pod),
                    follow=True,
                    _preload_content=False,
                )
                try:
                    pending = b""
                    for chunk in resp.stream(4096):
                        pending += chunk
                        *lines, pending = pending.split(b"\n")
                        for line in lines:
                            yield line.decode("utf-8", errors="replace")
                    if pending:
                        yield pending.decode("utf-8", errors="replace")
                finally:
                    resp.release_conn()
                continue
            from kubernetes.client.exceptions import ApiException

            try:
                phase = (
                    self._custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
                    .get("status", {})
                    .get("phase")
                )
            except ApiException as exc:
                if exc.status == 404:
                    return
                raise KubetuneError(f"get FineTuneJob {ns}/{name}: {_api_message(exc)}") from None
            if phase in TERMINAL:
                return
            time.sleep(poll_interval)

    # ------------------------------------------------------------------------------------------ wait, cancel

    def wait(
        self, name: str, timeout: float | None = None, namespace: str | None = None, poll_interval: float = 2.0
    ) -> JobView:
        """Block until the job is Succeeded and return it; raise :class:`JobFailed` (Failed or deleted, with the
        reason from its conditions) or :class:`WaitTimeout` (``timeout`` seconds passed)."""
        from kubernetes.client.exceptions import ApiException

        ns = self._ns(namespace)
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(name, ns)
        while True:
            if job.phase == "Succeeded":
                return job
            if job.phase == "Failed":
                raise JobFailed(f"FineTuneJob {ns}/{name} failed: {job.reason()}", job)
            if deadline is not None and time.monotonic() >= deadline:
                progress = job.status.progress
                done = f", {progress.percent:.0f}% done" if progress and progress.percent is not None else ""
                raise WaitTimeout(
                    f"FineTuneJob {ns}/{name} is still {job.phase or 'Pending'}{done} after {timeout:g} s "
                    f"({job.reason()})",
                    job,
                )
            left = poll_interval if deadline is None else max(0.0, min(poll_interval, deadline - time.monotonic()))
            time.sleep(left)
            try:
                job = JobView.from_object(self._custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name))
            except ApiException as exc:
                if exc.status == 404:
                    raise JobFailed(f"FineTuneJob {ns}/{name} was deleted while waiting") from None
                raise KubetuneError(f"get FineTuneJob {ns}/{name}: {_api_message(exc)}") from None

    def cancel(self, name: str, namespace: str | None = None) -> None:
        """Delete the FineTuneJob; its Job, pods, Service and ConfigMap go with it (owner references)."""
        ns = self._ns(namespace)
        self._call(
            f"delete FineTuneJob {ns}/{name}",
            self._custom.delete_namespaced_custom_object,
            GROUP,
            VERSION,
            ns,
            PLURAL,
            name,
            propagation_policy="Background",
        )

    # ------------------------------------------------------------------------------------------ artifacts

    def manifest(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """The artifact's manifest.json (files, hashes, base model, metrics), read from ``status.artifacts
        .manifestUri`` with the trainer's storage code (the ``trainer`` extra)."""
        job = self.get(name, namespace)
        uri = job.status.artifacts.manifest_uri if job.status.artifacts else None
        if not uri:
            raise KubetuneError(
                f"FineTuneJob {job.namespace}/{name} has no manifest yet (phase "
                f"{job.phase or 'Pending'}); it is written when training succeeds"
            )
        try:
            from kubetune.trainer.storage.fetch import fetch
        except ImportError:
            raise KubetuneError(
                "fetching the manifest needs the trainer's storage code: pip install 'kubetune[trainer]' "
                f"(or read {redact(uri)} yourself)"
            ) from None
        cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kubetune"
        with tempfile.TemporaryDirectory(prefix="kubetune-manifest-") as work:
            try:
                path = fetch(
                    uri, field="status.artifacts.manifestUri", work_dir=work, cache_dir=cache, kind="manifest"
                )
                if path.is_dir():
                    path = path / "manifest.json"
                return json.loads(path.read_text(encoding="utf-8"))
            except KubetuneError:
                raise
            except Exception as exc:  # noqa: BLE001 - any storage failure is one line naming the URI
                raise KubetuneError(
                    f"cannot read the manifest {redact(uri)}: {clip_text(redact(str(exc)), 300)}"
                ) from None
