"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok.

Built from upstream Go modules by ``scripts/tools.d/40-controlplane.sh`` (``make tools``) into
``~/.cache/kubetune/controlplane/<key>/bin``, linked at ``.tools/controlplane``. No container runtime,
no registry, no download at test time. Without the binaries the tests skip with the reason, unless
``KUBETUNE_REQUIRE_CONTROLPLANE`` is set (``make test``/``make test-k8s`` set it): then they fail.

Fixtures (``tests/k8s/conftest.py`` imports them; copy that import to use them elsewhere):

``control_plane`` (session)
    A :class:`ControlPlane`: etcd → kube-apiserver (secure port 127.0.0.1, the fixture's own CA and
    serving cert, a static admin token, service-account keys and issuer, ``--authorization-mode=Node,RBAC``,
    ``OwnerReferencesPermissionEnforcement`` among the admission plugins, an audit log) →
    kube-controller-manager (real Job controller, garbage collector, EndpointSlices, namespace and
    service-account controllers) → kube-scheduler → kwok (fake nodes ``kwok-gpu-0..3`` with 16
    ``nvidia.com/gpu`` each, and ``kwok-imagepull``, tainted ``kubetune.test/behaviour=image-pull-backoff:NoSchedule``,
    whose pods stay in ImagePullBackOff). ``crds/`` and the kopf peering CRD are applied and Established;
    the chart's ServiceAccount, ClusterRole and binding (``helm template``) are applied in namespace
    ``kubetune`` and ``control_plane.operator_kubeconfig`` holds a ``kubectl create token`` of that
    ServiceAccount: the operator is judged by the real RBAC authorizer. Everything stops at session end.

``k8s`` (function)
    A :class:`K8s` for one test, in its own fresh namespace ``k8s.ns`` (deleted afterwards):

    - ``k8s.api``: :class:`RealApi` as the admin (``get/list/create/update/patch/delete(resource, ns, name)``,
      the emulator's signatures; resources are written ``"v1/pods"``, ``"batch/v1/jobs"``, ``FTJ``).
    - ``await k8s.start_operator(**settings)``: the real operator (kopf, its own thread and loop, as in
      ``tests/harness/fixtures.py``) watching ``k8s.ns`` with the chart ServiceAccount's token; returns the
      stop flag (``stop.set()`` stops it; restarting is calling it again).
    - ``k8s.pods(job)``, ``k8s.finish(job, index, exit_code=0, message="", reason=None)``: end the running
      container of one completion index, like the trainer exiting: the test annotates the pod
      (``kubetune.test/exit-code``, ``kubetune.test/message``, ``kubetune.test/reason`` e.g. ``OOMKilled``)
      and kwok's stage (``tests/harness/kwok-stages.yaml``) writes the terminated status. The real Job
      controller then applies podFailurePolicy/backoffLimit/completions.
    - ``k8s.ftj(name, **spec)``, ``k8s.status(name)``, ``k8s.cond(name, type)``, ``k8s.events(name)``,
      ``await k8s.wait(check, timeout=90)`` (polls ``check`` until truthy; no fixed sleeps),
      ``await k8s.kubectl(*args)`` (the admin's kubeconfig, ``-n k8s.ns`` added unless given).
    - Audit log: ``mark = k8s.cp.audit_mark()`` then ``k8s.cp.audit(since=mark, user=OPERATOR_USER)``: the
      API server's own record (``verb``, ``objectRef``, ``responseStatus``, ``user``) of every request.
    - Faults: ``k8s.cp.restart_apiserver()`` (watches break; resumed watches get 410 Gone when etcd was
      compacted: ``k8s.cp.compact_etcd()``), ``with k8s.cp.apiserver_paused(): ...`` (SIGSTOP/SIGCONT: hung calls).

Ports: kube-controller-manager and kube-scheduler serve none (``--secure-port=0``), kwok runs no server; etcd,
the API server and Kueue get a port the kernel just handed out and are started again on fresh ports when the
process reports a collision ("address already in use"). Readiness is polled (``/health``, ``/readyz``, the
``default`` ServiceAccount, nodes Ready), never slept for. The node lifecycle controller and the
``TaintNodesByCondition`` admission plugin are off: fake nodes are Ready by fiat (a paused API server would
otherwise taint them NotReady).

:class:`ProcessKubelet` (``tests/harness/processkubelet.py``) registers a node whose pods really run as
local processes, for one end-to-end test with the trainer.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import urllib3
import yaml

ROOT = Path(__file__).resolve().parents[2]
STAGES = Path(__file__).with_name("kwok-stages.yaml")
KUBECTL = Path(sys.executable).parent / "kubectl"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
FTJ = "kubetune.io/v1alpha1/finetunejobs"
OPERATOR_NS = "kubetune"
OPERATOR_SA = "kubetune"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
ADMIN_USER = "kubetune-admin"
INDEX = "batch.kubernetes.io/job-completion-index"
GPU_NODES = 4
GPUS_PER_NODE = 16


class ControlPlaneMissing(Exception):
    """The binaries are not built (``make tools``)."""


def bin_dir() -> Path:
    """The control plane binaries: $KUBETUNE_CONTROLPLANE_BIN, .tools/controlplane/bin, else the newest
    complete build in ~/.cache/kubetune/controlplane/*/bin."""
    candidates = []
    if os.environ.get("KUBETUNE_CONTROLPLANE_BIN"):
        candidates.append(Path(os.environ["KUBETUNE_CONTROLPLANE_BIN"]))
    candidates.append(ROOT / ".tools" / "controlplane" / "bin")
    cache = Path(os.environ.get("KUBETUNE_TOOLS_CACHE", Path.home() / ".cache" / "kubetune")) / "controlplane"
    if cache.is_dir():
        candidates += sorted(cache.glob("*/bin"), key=lambda p: p.stat().st_mtime, reverse=True)
    for d in candidates:
        if all(os.access(d / b, os.X_OK) for b in BINARIES):
            return d
    raise ControlPlaneMissing(
        f"the control plane binaries ({', '.join(BINARIES)}) are not built in {candidates[0]}: run `make tools` "
        "(scripts/tools.d/40-controlplane.sh builds them from Go modules)"
    )


class ApiError(Exception):
    def __init__(self, code: int, body: dict[str, Any] | str):
        self.code = code
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        self.reason = self.body.get("reason", "")
        self.message = self.body.get("message", str(body))
        super().__init__(f"{code} {self.reason}: {self.message}")


def free_port() -> int:
    """A port the kernel just handed out. The caller binds it at once and retries on a collision."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------- API client


def resource_path(resource: str, namespace: str | None, name: str | None = None, sub: str | None = None) -> str:
    """``"v1/pods"`` / ``"batch/v1/jobs"`` → the REST path (namespaced when ``namespace``)."""
    parts = resource.split("/")
    base = f"/api/{parts[0]}" if len(parts) == 2 else f"/apis/{parts[0]}/{parts[1]}"
    path = base + (f"/namespaces/{namespace}" if namespace else "") + f"/{parts[-1]}"
    if name:
        path += f"/{name}"
    if sub:
        path += f"/{sub}"
    return path


class RealApi:
    """A small, thread-safe, synchronous client with the emulator's call shapes (plain dicts)."""

    def __init__(self, server: str, token: str, ca_file: Path, timeout: float = 30.0):
        self.server, self.token = server.rstrip("/"), token
        self.http = urllib3.PoolManager(
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            ca_certs=str(ca_file),
            timeout=urllib3.Timeout(connect=5, read=timeout),
            retries=False,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        url = self.server + path
        if params:
            url += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        r = self.http.request(method, url, body=data, headers=headers)
        text = r.data.decode("utf-8", errors="replace")
        try:
            doc = json.loads(text) if text else {}
        except json.JSONDecodeError:
            doc = {"message": text}
        if r.status >= 400:
            raise ApiError(r.status, doc)
        return doc

    def get(self, resource: str, namespace: str | None, name: str, sub: str | None = None) -> dict[str, Any] | None:
        try:
            return self.request("GET", resource_path(resource, namespace, name, sub))
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def list(
        self, resource: str, namespace: str | None = None, labels: str | None = None, fields: str | None = None
    ) -> list[dict[str, Any]]:
        doc = self.request(
            "GET", resource_path(resource, namespace), params={"labelSelector": labels, "fieldSelector": fields}
        )
        return doc.get("items") or []

    def create(
        self, resource: str, obj: dict[str, Any], namespace: str | None = None, params: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        ns = namespace if namespace is not None else (obj.get("metadata") or {}).get("namespace")
        return self.request("POST", resource_path(resource, ns), obj, params=params)

    def update(
        self, resource: str, namespace: str | None, name: str, patch: dict[str, Any], status: bool = False
    ) -> dict[str, Any]:
        """A JSON merge patch (the emulator's ``update``); ``status=True`` patches the status subresource."""
        return self.patch(resource, namespace, name, patch, sub="status" if status else None)

    def patch(
        self, resource: str, namespace: str | None, name: str, patch: Any, sub: str | None = None, kind: str = "merge"
    ) -> dict[str, Any]:
        ctype = {
            "merge": "application/merge-patch+json",
            "strategic": "application/strategic-merge-patch+json",
            "json": "application/json-patch+json",
        }[kind]
        return self.request("PATCH", resource_path(resource, namespace, name, sub), patch, content_type=ctype)

    def replace(self, resource: str, namespace: str | None, name: str, obj: dict[str, Any]) -> dict[str, Any]:
        return self.request("PUT", resource_path(resource, namespace, name), obj)

    def delete(self, resource: str, namespace: str | None, name: str, **options: Any) -> dict[str, Any] | None:
        try:
            return self.request(
                "DELETE",
                resource_path(resource, namespace, name),
                {"kind": "DeleteOptions", "apiVersion": "v1", **options} if options else None,
            )
        except ApiError as exc:
            if exc.code == 404:
                return None
            raise

    def watch(
        self,
        resource: str,
        namespace: str | None,
        resource_version: str,
        timeout: int = 30,
        labels: str | None = None,
        fields: str | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Watch events (dicts with ``type`` and ``object``) from ``resource_version`` until ``timeout`` s."""
        url = (
            self.server
            + resource_path(resource, namespace)
            + "?"
            + urlencode(
                {
                    k: v
                    for k, v in {
                        "watch": "1",
                        "resourceVersion": resource_version,
                        "timeoutSeconds": timeout,
                        "allowWatchBookmarks": "false",
                        "labelSelector": labels,
                        "fieldSelector": fields,
                    }.items()
                    if v is not None
                }
            )
        )
        r = self.http.request(
            "GET",
            url,
            headers={"Authorization": f"Bearer {self.token}"},
            preload_content=False,
            timeout=urllib3.Timeout(connect=5, read=timeout + 10),
        )
        try:
            if r.status >= 400:
                raise ApiError(r.status, r.data.decode())
            buf = b""
            for chunk in r.stream(65536):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            r.release_conn()


# ---------------------------------------------------------------------------------------------- certificates


def _write_pki(d: Path) -> None:
    """A CA, the API server's serving cert (127.0.0.1, localhost, kubernetes.default.svc), and the SA key pair."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)

    def pem_key(key: Any) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "ca.key").write_bytes(pem_key(ca_key))

    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    sans = [
        x509.DNSName(n)
        for n in (
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        )
    ]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "10.0.0.1")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (d / "serving.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "serving.key").write_bytes(pem_key(key))

    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (d / "sa.key").write_bytes(pem_key(sa))
    (d / "sa.pub").write_bytes(
        sa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def kubeconfig(server: str, ca_file: Path, token: str, user: str = "user") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "kubetune-test",
        "clusters": [{"name": "kubetune-test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "kubetune-test", "context": {"cluster": "kubetune-test", "user": user}}],
    }


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {
            "level": "None",
            "nonResourceURLs": [
                "/readyz*",
                "/healthz*",
                "/livez*",
                "/version",
                "/openapi*",
                "/api",
                "/api/*",
                "/apis",
                "/apis/*",
            ],
        },
        # the control plane's own reads would drown the log; everything else (the operator, the tests) is kept
        {
            "level": "None",
            "verbs": ["get", "list", "watch"],
            "users": ["system:kube-controller-manager", "system:kube-scheduler", "kwok"],
        },
        {"level": "None", "verbs": ["get", "list", "watch"], "userGroups": ["system:serviceaccounts:kube-system"]},
        {"level": "Metadata"},
    ],
}


# ---------------------------------------------------------------------------------------------- processes


@dataclass
class Proc:
    name: str
    argv: list[str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as out:
            # same process group as the tests: killing the test run's group ends the control plane too
            self.popen = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def signal(self, sig: int) -> None:
        if self.alive:
            assert self.popen is not None
            os.kill(self.popen.pid, sig)

    def stop(self, timeout: float = 15.0) -> None:
        if self.popen is None:
            return
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.popen.pid, signal.SIGCONT)  # a paused process cannot handle SIGTERM
                self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.popen = None


def _port_collision(text: str) -> bool:
    return "address already in use" in text.lower()


class StartError(RuntimeError):
    pass


@dataclass
class ControlPlane:
    workdir: Path
    bin: Path = field(default_factory=bin_dir)
    admin_token: str = field(default_factory=lambda: uuid.uuid4().hex)
    procs: dict[str, Proc] = field(default_factory=dict)
    etcd_port: int = 0
    apiserver_port: int = 0
    operator_token: str = ""
    gpu_nodes: int = GPU_NODES
    gpus_per_node: int = GPUS_PER_NODE
    pods_per_node: int = 110

    # -------------------------------------------------------------------------------------- lifecycle

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def pki(self) -> Path:
        return self.workdir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.workdir / "operator.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.workdir / "audit.log"

    def start(self) -> ControlPlane:
        t0 = time.monotonic()
        import atexit

        atexit.register(self.stop)  # also when the session dies without its fixture teardown
        self.workdir.mkdir(parents=True, exist_ok=True)
        _write_pki(self.pki)
        tokens = [
            (self.admin_token, ADMIN_USER, "system:masters"),
            (self._component_token("kcm"), "system:kube-controller-manager", "system:masters"),
            (self._component_token("scheduler"), "system:kube-scheduler", "system:masters"),
            (self._component_token("kwok"), "kwok", "system:masters"),
        ]
        (self.workdir / "tokens.csv").write_text("".join(f'{t},{u},{u},"{g}"\n' for t, u, g in tokens))
        (self.workdir / "audit-policy.yaml").write_text(yaml.safe_dump(AUDIT_POLICY))
        try:
            self._start_etcd()
            self._start_apiserver()
            self.api = RealApi(self.server, self.admin_token, self.ca_file)
            self._write_kubeconfigs()
            self._start_kcm()
            self._start_scheduler()
            self._start_kwok()
            self._bootstrap()
        except BaseException:
            self.stop()
            raise
        self.startup_s = round(time.monotonic() - t0, 1)
        return self

    def stop(self) -> None:
        for name in ("kueue", "kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.procs.get(name)
            if proc is not None:
                proc.stop()
        for name, proc in list(self.procs.items()):
            proc.stop()

    def _component_token(self, name: str) -> str:
        if not hasattr(self, "_tokens"):
            self._tokens: dict[str, str] = {}
        return self._tokens.setdefault(name, uuid.uuid4().hex)

    def _spawn(self, name: str, argv: list[str], ready: Callable[[], bool], timeout: float = 120.0) -> Proc:
        """Start a process and wait until ``ready()``; raises with its log tail if it exits first."""
        proc = Proc(name, argv, self.workdir / "logs" / f"{name}.log")
        self.procs[name] = proc
        proc.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive:
                raise StartError(f"{name} exited ({proc.popen.returncode if proc.popen else '?'}):\n{proc.tail()}")
            try:
                if ready():
                    return proc
            except Exception:  # noqa: BLE001, S110 - not up yet
                pass
            time.sleep(0.2)
        proc.stop()
        raise StartError(f"{name} was not ready in {timeout:.0f} s:\n{proc.tail()}")

    def _with_ports(self, start: Callable[[], None], tries: int = 5) -> None:
        """Run ``start`` (which picks its ports); on a port collision (another process took a port between
        free_port() and the bind) pick new ports and try again."""
        for attempt in range(tries):
            try:
                start()
                return
            except StartError as exc:
                if attempt + 1 < tries and _port_collision(str(exc)):
                    continue
                raise

    def _start_etcd(self) -> None:
        def start() -> None:
            self.etcd_port, peer = free_port(), free_port()
            data = self.workdir / "etcd"
            shutil.rmtree(data, ignore_errors=True)
            url = f"http://127.0.0.1:{self.etcd_port}"
            http = urllib3.PoolManager(retries=False, timeout=2)
            self._spawn(
                "etcd",
                [
                    str(self.bin / "etcd"),
                    "--name=node0",
                    f"--data-dir={data}",
                    f"--listen-client-urls={url}",
                    f"--advertise-client-urls={url}",
                    f"--listen-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                    f"--initial-cluster=node0=http://127.0.0.1:{peer}",
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                    "--quota-backend-bytes=4294967296",
                ],
                ready=lambda: http.request("GET", url + "/health").status == 200,
                timeout=60,
            )

        self._with_ports(start)

    def _apiserver_argv(self) -> list[str]:
        w = self.workdir
        return [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{self.etcd_port}",
            "--bind-address=127.0.0.1",
            f"--secure-port={self.apiserver_port}",
            "--advertise-address=127.0.0.1",
            f"--tls-cert-file={self.pki / 'serving.crt'}",
            f"--tls-private-key-file={self.pki / 'serving.key'}",
            f"--client-ca-file={self.ca_file}",
            f"--token-auth-file={w / 'tokens.csv'}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            # fake nodes: no not-ready taint on create (the node lifecycle controller is off, see _start_kcm)
            "--disable-admission-plugins=TaintNodesByCondition",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            f"--audit-policy-file={w / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=4096",
            "--audit-log-mode=blocking",
            "--profiling=false",
            "--v=1",
        ]

    def _apiserver_ready(self) -> bool:
        http = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=str(self.ca_file), retries=False, timeout=3)
        r = http.request("GET", f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"})
        return r.status == 200

    def _start_apiserver(self) -> None:
        def start() -> None:
            self.apiserver_port = free_port()
            self._spawn("kube-apiserver", self._apiserver_argv(), ready=self._apiserver_ready, timeout=180)

        self._with_ports(start)

    def _write_kubeconfigs(self) -> None:
        self.admin_kubeconfig.write_text(
            yaml.safe_dump(kubeconfig(self.server, self.ca_file, self.admin_token, "admin"))
        )
        for name in ("kcm", "scheduler", "kwok"):
            path = self.workdir / f"{name}.kubeconfig"
            path.write_text(yaml.safe_dump(kubeconfig(self.server, self.ca_file, self._component_token(name), name)))

    def _start_kcm(self) -> None:
        w = self.workdir
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin / "kube-controller-manager"),
                f"--kubeconfig={w / 'kcm.kubeconfig'}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--secure-port=0",
                # fake nodes are Ready by fiat: no lease-based NotReady taints (a paused API server would cause them)
                "--controllers=*,-node-lifecycle-controller",
                "--concurrent-job-syncs=10",
                "--v=1",
            ],
            ready=lambda: self._kcm_up(),
            timeout=120,
        )

    def _kcm_up(self) -> bool:
        # the service-account controller creates "default" in every namespace
        return self.api.get("v1/serviceaccounts", "default", "default") is not None

    def _start_scheduler(self) -> None:
        w = self.workdir
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin / "kube-scheduler"),
                f"--kubeconfig={w / 'scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={w / 'scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={w / 'scheduler.kubeconfig'}",
                "--leader-elect=false",
                "--secure-port=0",
                "--v=1",
            ],
            ready=lambda: self.proc_alive_for("kube-scheduler", 2.0),
            timeout=60,
        )

    def proc_alive_for(self, name: str, seconds: float) -> bool:
        key = f"_since_{name}"
        since = getattr(self, key, None) or time.monotonic()
        setattr(self, key, since)
        return time.monotonic() - since >= seconds

    def _start_kwok(self) -> None:
        w = self.workdir
        self._spawn(
            "kwok",
            [
                str(self.bin / "kwok"),
                f"--kubeconfig={w / 'kwok.kubeconfig'}",
                f"--config={STAGES}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-label-selector=kubetune.test/fake=true",
                "--cidr=10.244.0.0/16",
                "--node-ip=10.243.0.1",
                "--node-lease-duration-seconds=40",
            ],
            ready=lambda: self.proc_alive_for("kwok", 1.0),
            timeout=60,
        )
        for i in range(self.gpu_nodes):
            self._node(f"kwok-gpu-{i}", {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"})
        self._node(
            "kwok-imagepull",
            {"kubetune.test/behaviour": "image-pull-backoff"},
            taints=[{"key": "kubetune.test/behaviour", "value": "image-pull-backoff", "effect": "NoSchedule"}],
        )
        for name in [f"kwok-gpu-{i}" for i in range(self.gpu_nodes)] + ["kwok-imagepull"]:
            self.wait(
                lambda n=name: any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in (self.api.get("v1/nodes", None, n) or {}).get("status", {}).get("conditions", [])
                ),
                60,
                f"node {name} Ready (kwok)",
            )

    def _node(self, name: str, labels: dict[str, str], taints: list[dict[str, str]] | None = None) -> None:
        capacity = {
            "cpu": "64",
            "memory": "512Gi",
            "pods": str(self.pods_per_node),
            "nvidia.com/gpu": str(self.gpus_per_node),
        }
        self.api.create(
            "v1/nodes",
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {
                        "kubetune.test/fake": "true",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                        "type": "kwok",
                        **labels,
                    },
                    "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
                },
                "spec": {"taints": taints or []},
                "status": {"capacity": capacity, "allocatable": capacity},
            },
        )

    def _bootstrap(self) -> None:
        """CRDs, the chart's ServiceAccount and RBAC, and the operator's token."""
        # kopf's peering CRDs as the chart renders them (only with peering on: more than one replica)
        peering = [
            o
            for o in chart_objects(kinds=("CustomResourceDefinition",), values={"replicaCount": 2})
            if o["spec"]["group"] == "kopf.dev"
        ]
        (self.workdir / "peering-crds.yaml").write_text(yaml.safe_dump_all(peering))
        self.kubectl_sync("apply", "-f", str(ROOT / "crds"), "-f", str(self.workdir / "peering-crds.yaml"))
        self.kubectl_sync(
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/finetunejobs.kubetune.io",
            "crd/clusterkopfpeerings.kopf.dev",
        )
        self.api.create("v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NS}})
        objs = chart_objects(kinds=("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"))
        path = self.workdir / "chart-rbac.yaml"
        path.write_text(yaml.safe_dump_all(objs))
        self.kubectl_sync("apply", "-f", str(path))
        self.operator_token = self.kubectl_sync(
            "create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=24h"
        ).strip()
        self.operator_kubeconfig.write_text(
            yaml.safe_dump(kubeconfig(self.server, self.ca_file, self.operator_token, "kubetune-operator"))
        )

    # -------------------------------------------------------------------------------------- helpers

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = check()
                if last:
                    return last
            except (ApiError, urllib3.exceptions.HTTPError, KeyError, TypeError) as exc:
                last = exc
            time.sleep(0.2)
        raise AssertionError(f"{what}: not met in {timeout} s; last: {last!r}")

    def kubectl_sync(
        self,
        *args: str,
        kubeconfig: Path | None = None,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> str:
        proc = subprocess.run(
            [str(KUBECTL), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout if check else proc.stdout + proc.stderr

    def audit_mark(self) -> int:
        """The current end of the audit log: pass it to :meth:`audit` as ``since``."""
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def audit(self, since: int = 0, user: str | None = None, namespace: str | None = None) -> list[dict[str, Any]]:
        """Audit events (ResponseComplete/Panic) after ``since``, optionally of one user / namespace."""
        out = []
        with open(self.audit_log, "rb") as f:
            f.seek(since)
            for line in f:
                try:
                    ev = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line being written
                if user and ev.get("user", {}).get("username") != user:
                    continue
                if namespace and (ev.get("objectRef") or {}).get("namespace") != namespace:
                    continue
                out.append(ev)
        return out

    # -------------------------------------------------------------------------------------- faults

    def restart_apiserver(self) -> None:
        """Stop the API server and start it again on the same port (every watch and connection breaks)."""
        self.procs["kube-apiserver"].stop()
        deadline = time.monotonic() + 60
        while True:
            try:
                self._spawn("kube-apiserver", self._apiserver_argv(), ready=self._apiserver_ready, timeout=180)
                return
            except StartError as exc:  # the old socket lingers for a moment
                if not _port_collision(str(exc)) or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def compact_etcd(self) -> None:
        """Compact etcd's history up to now: a watch resumed from an older resourceVersion gets 410 Gone."""
        http = urllib3.PoolManager(retries=False, timeout=10)
        url = f"http://127.0.0.1:{self.etcd_port}"
        r = http.request("POST", url + "/v3/kv/range", body=json.dumps({"key": base64.b64encode(b"/").decode()}))
        rev = int(json.loads(r.data)["header"]["revision"])
        r = http.request("POST", url + "/v3/kv/compaction", body=json.dumps({"revision": rev, "physical": True}))
        assert r.status == 200, r.data

    @contextlib.contextmanager
    def apiserver_paused(self) -> Iterator[None]:
        """SIGSTOP the API server (connections stay open, calls hang) and SIGCONT it at exit."""
        proc = self.procs["kube-apiserver"]
        proc.signal(signal.SIGSTOP)
        try:
            yield
        finally:
            proc.signal(signal.SIGCONT)
            self.wait(self._apiserver_ready, 120, "kube-apiserver ready after SIGCONT")

    # -------------------------------------------------------------------------------------- namespaces

    def create_namespace(self, name: str, labels: dict[str, str] | None = None) -> str:
        self.api.create(
            "v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels or {}}},
        )
        self.wait(lambda: self.api.get("v1/serviceaccounts", name, "default"), 60, f"ServiceAccount {name}/default")
        return name

    def delete_namespace(self, name: str) -> None:
        self.api.delete("v1/namespaces", None, name)


def chart_objects(kinds: tuple[str, ...], values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``helm template`` of the chart (release kubetune in namespace kubetune), only these kinds."""
    from tests.chart.helm import template

    return [o for o in template(values) if o["kind"] in kinds]


# ---------------------------------------------------------------------------------------------- per test


def namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:48].rstrip("-")
    return f"{base or 't'}-{uuid.uuid4().hex[:6]}"


@dataclass
class K8s:
    """One test's view of the control plane: its namespace, the admin API and helpers (see the module doc)."""

    cp: ControlPlane
    ns: str
    env: Any = None  # a pytest MonkeyPatch: the operator's $KUBECONFIG is set through it (and undone with it)
    _runs: list[tuple[threading.Thread, threading.Event]] = field(default_factory=list)

    @property
    def api(self) -> RealApi:
        return self.cp.api

    # FineTuneJobs ------------------------------------------------------------------------------------

    def ftj(self, name: str = "demo", **spec: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stage": "sft",
            "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "datasets": [{"name": "identity", "source": "s3://data/identity.json"}],
            "resources": {"nodes": 2, "gpusPerNode": 1},
            "output": {"uri": f"s3://out/{name}"},
        }
        body.update(spec)
        return {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": self.ns},
            "spec": body,
        }

    def create(self, obj: dict[str, Any], resource: str = FTJ) -> dict[str, Any]:
        obj.setdefault("metadata", {}).setdefault("namespace", self.ns)
        return self.api.create(resource, obj)

    def get(self, resource: str, name: str) -> dict[str, Any] | None:
        return self.api.get(resource, self.ns, name)

    def status(self, name: str = "demo") -> dict[str, Any]:
        return (self.api.get(FTJ, self.ns, name) or {}).get("status") or {}

    def cond(self, name: str, ctype: str) -> dict[str, Any]:
        return next((c for c in self.status(name).get("conditions", []) if c["type"] == ctype), {})

    def events(self, name: str = "demo") -> list[tuple[str, str]]:
        return [
            (e.get("type"), e.get("reason"))
            for e in self.api.list("v1/events", self.ns, fields=f"involvedObject.name={name}")
        ]

    def event_objects(self, name: str) -> list[dict[str, Any]]:
        return self.api.list("v1/events", self.ns, fields=f"involvedObject.name={name}")

    async def wait(self, check: Callable[[], Any], timeout: float = 90.0, interval: float = 0.25) -> Any:
        """Poll ``check`` (run in a thread: it makes blocking API calls) until it returns a truthy value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while loop.time() < deadline:
            try:
                last = await asyncio.to_thread(check)
            except (KeyError, TypeError, AssertionError, IndexError, ApiError, urllib3.exceptions.HTTPError) as exc:
                last = exc
            else:
                if last:
                    return last
            await asyncio.sleep(interval)
        raise AssertionError(f"condition not met in {timeout}s; last value: {last!r}")

    # pods (kwok) --------------------------------------------------------------------------------------

    def pods(self, job: str) -> list[dict[str, Any]]:
        return self.api.list("v1/pods", self.ns, labels=f"batch.kubernetes.io/job-name={job}")

    def running(self, job: str) -> list[dict[str, Any]]:
        return [
            p
            for p in self.pods(job)
            if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
        ]

    def finish(self, job: str, index: int, exit_code: int = 0, message: str = "", reason: str | None = None) -> None:
        """End the running container of one completion index, as if the trainer exited with ``exit_code``."""
        for pod in self.running(job):
            if pod["metadata"].get("annotations", {}).get(INDEX) == str(index):
                notes = {"kubetune.test/exit-code": str(exit_code)}
                if message:
                    notes["kubetune.test/message"] = message
                if reason:
                    notes["kubetune.test/reason"] = reason
                self.api.update("v1/pods", self.ns, pod["metadata"]["name"], {"metadata": {"annotations": notes}})
                return
        raise AssertionError(
            f"no running pod of {self.ns}/{job} index {index}: "
            f"{[(p['metadata']['name'], p['status'].get('phase')) for p in self.pods(job)]}"
        )

    def restart_container(self, job: str, index: int) -> None:
        """The kubelet restarted the container once (restartCount + 1)."""
        for pod in self.running(job):
            if pod["metadata"].get("annotations", {}).get(INDEX) == str(index):
                cs = pod["status"]["containerStatuses"]
                self.api.patch(
                    "v1/pods",
                    self.ns,
                    pod["metadata"]["name"],
                    {
                        "status": {
                            "containerStatuses": [
                                {"name": c["name"], "restartCount": c.get("restartCount", 0) + 1} for c in cs
                            ]
                        }
                    },
                    sub="status",
                    kind="strategic",
                )
                return
        raise AssertionError(f"no running pod of {self.ns}/{job} index {index}")

    # kubectl -------------------------------------------------------------------------------------------

    async def kubectl(
        self, *args: str, check: bool = True, kubeconfig: Path | None = None, input: str | None = None
    ) -> str:
        if not any(a in ("-n", "--namespace", "-A", "--all-namespaces") or a.startswith("--namespace=") for a in args):
            args = ("-n", self.ns, *args)
        return await asyncio.to_thread(self.cp.kubectl_sync, *args, check=check, kubeconfig=kubeconfig, input=input)

    # the operator -------------------------------------------------------------------------------------

    async def start_operator(self, **overrides: Any) -> threading.Event:
        """The real operator in this process (kopf in its own thread and loop, as in a pod), watching this
        test's namespace, authenticated as the chart's ServiceAccount. Returns its stop flag."""
        from kubetune.operator.__main__ import operate
        from kubetune.operator.settings import OperatorSettings

        if self.env is not None:
            self.env.setenv("KUBECONFIG", str(self.cp.operator_kubeconfig))
            self.env.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        else:  # outside pytest (bench/): the caller owns the process's environment
            os.environ["KUBECONFIG"] = str(self.cp.operator_kubeconfig)
            os.environ.pop("KUBERNETES_SERVICE_HOST", None)
        settings = OperatorSettings(
            **{
                "standalone": True,
                "metrics_port": 0,
                "health_port": 0,
                "sync_interval": 1.0,
                "namespaces": [self.ns],
                "trainer_image": "registry.test/kubetune-trainer:test",
                **overrides,
            }
        )
        ready, stop = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=lambda: asyncio.run(operate(settings, ready_flag=ready, stop_flag=stop)),
            name="kopf-operator",
            daemon=True,
        )
        thread.start()
        self._runs.append((thread, stop))
        assert await asyncio.to_thread(ready.wait, 60), "the operator did not start in 60 s"
        return stop

    async def stop_operators(self) -> None:
        for thread, stop in self._runs:
            stop.set()
        for thread, _ in self._runs:
            await asyncio.to_thread(thread.join, 30)
        self._runs.clear()


def controlplane_or_skip() -> Path:
    """The binaries' folder; skips (or fails under KUBETUNE_REQUIRE_CONTROLPLANE) when they are missing."""
    import pytest

    try:
        return bin_dir()
    except ControlPlaneMissing as exc:
        if os.environ.get("KUBETUNE_REQUIRE_CONTROLPLANE"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------- fixtures

try:
    import pytest
except ImportError:  # pragma: no cover - bench/ imports this module without pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
        binaries = controlplane_or_skip()
        cp = ControlPlane(tmp_path_factory.mktemp("controlplane"), bin=binaries)
        cp.start()
        try:
            yield cp
        finally:
            cp.stop()

    @pytest.fixture
    async def k8s(control_plane: ControlPlane, request: pytest.FixtureRequest) -> Any:
        ns = await asyncio.to_thread(control_plane.create_namespace, namespace_name(request.node.name))
        try:
            with pytest.MonkeyPatch.context() as env:  # the environment the operators get is undone after the test
                view = K8s(control_plane, ns, env=env)
                try:
                    yield view
                finally:
                    await view.stop_operators()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(control_plane.delete_namespace, ns)
