"""A "process kubelet": a Node of the real control plane whose pods really run, as local processes.

For end-to-end tests that need the trainer to actually run (no container runtime here). Usage::

    from tests.harness.processkubelet import ProcessKubelet
    with ProcessKubelet(control_plane.api, tmp_path) as kubelet:     # registers node "proc-0"
        spec["resources"] = {..., "nodeSelector": ProcessKubelet.NODE_SELECTOR,
                             "tolerations": ProcessKubelet.TOLERATIONS}
        ...   # the real scheduler binds the Job's pod to proc-0; this class runs it

What it does, as a kubelet would:

- registers Node ``proc-0`` (label ``kubetune.test/node=proc``, taint ``kubetune.test/node=proc:NoSchedule`` so
  that no other pod lands on it; capacity cpu/memory/pods and optionally ``nvidia.com/gpu``), keeps its
  Ready condition and its ``kube-node-lease`` Lease fresh every ~10 s (kwok does not manage it: it has no
  ``kubetune.test/fake`` label);
- watches pods with ``fieldSelector=spec.nodeName=proc-0`` and runs the first container's
  ``command + args`` (``argv[0]`` resolved next to this Python first, so ``kubetune-train`` is the venv's):
  volumes become folders under ``workdir/<pod>/`` (ConfigMap and Secret volumes written out, emptyDir as
  folders, PVCs as ``workdir/pvc/<claim>``), every mount path in the command, args, env values and
  ConfigMap files is rewritten to its folder, ``env`` values, ``valueFrom`` (fieldRef incl.
  ``metadata.annotations['batch.kubernetes.io/job-completion-index']``, secretKeyRef, configMapKeyRef) and
  ``envFrom`` (Secrets, ConfigMaps) are resolved from the API;
- PATCHes ``pods/status``: Running with ``podIP=127.0.0.1``, then ``terminated{exitCode, message}`` with the
  message read from the container's termination-log file (as the kubelet does), phase Succeeded/Failed;
- on ``deletionTimestamp`` kills the process and deletes the pod with ``gracePeriodSeconds=0``.

Limits: one container per pod, no DNS (a multi-node job's MASTER_ADDR must be rewritten to 127.0.0.1 by the
test), no ServiceAccount token (the trainer pods disable automounting anyway), no image: the "image" is the
local installation. A pod's log is ``workdir/<pod>/container.log``.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, ClassVar, Self

from tests.harness.realcluster import ApiError, RealApi


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ProcessKubelet:
    NODE_LABEL = "kubetune.test/node"
    NODE_SELECTOR: ClassVar[dict[str, str]] = {"kubetune.test/node": "proc"}
    TOLERATIONS: ClassVar[list[dict[str, str]]] = [
        {"key": "kubetune.test/node", "operator": "Equal", "value": "proc", "effect": "NoSchedule"}
    ]

    def __init__(
        self,
        api: RealApi,
        workdir: Path,
        node: str = "proc-0",
        pod_ip: str = "127.0.0.1",
        gpus: int = 0,
        extra_env: dict[str, str] | None = None,
        heartbeat_s: float = 10.0,
    ):
        self.api, self.workdir, self.node, self.pod_ip = api, Path(workdir), node, pod_ip
        self.gpus, self.extra_env, self.heartbeat_s = gpus, dict(extra_env or {}), heartbeat_s
        self.processes: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        self._term_files: dict[str, Path] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.errors: list[str] = []

    # ------------------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._register()
        for target in (self._heartbeat, self._watch_pods, self._reap):
            t = threading.Thread(target=target, name=f"process-kubelet-{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            procs = list(self.processes.values())
        for proc in procs:
            self._kill(proc)
        for t in self._threads:
            t.join(5)
        with contextlib.suppress(Exception):
            self.api.delete("v1/nodes", None, self.node)

    # ------------------------------------------------------------------------------------------ the node

    def _register(self) -> None:
        capacity = {"cpu": str(os.cpu_count() or 2), "memory": "64Gi", "pods": "20"}
        if self.gpus:
            capacity["nvidia.com/gpu"] = str(self.gpus)
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {self.NODE_LABEL: "proc", "kubernetes.io/hostname": self.node, "kubernetes.io/os": "linux"},
            },
            "spec": {"taints": [{"key": self.NODE_LABEL, "value": "proc", "effect": "NoSchedule"}]},
            "status": {"capacity": capacity, "allocatable": capacity},
        }
        try:
            self.api.create("v1/nodes", body)
        except ApiError as exc:
            if exc.code != 409:
                raise
        self._ready()

    def _ready(self) -> None:
        now = _now()
        self.api.patch(
            "v1/nodes",
            None,
            self.node,
            {
                "status": {
                    "conditions": [
                        {
                            "type": "Ready",
                            "status": "True",
                            "reason": "KubeletReady",
                            "message": "process kubelet",
                            "lastHeartbeatTime": now,
                            "lastTransitionTime": now,
                        }
                    ],
                    "addresses": [
                        {"type": "InternalIP", "address": self.pod_ip},
                        {"type": "Hostname", "address": self.node},
                    ],
                }
            },
            sub="status",
            kind="strategic",
        )
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": 40,
                "renewTime": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            },
        }
        try:
            self.api.create("coordination.k8s.io/v1/leases", lease)
        except ApiError as exc:
            if exc.code != 409:
                raise
            self.api.update("coordination.k8s.io/v1/leases", "kube-node-lease", self.node, {"spec": lease["spec"]})

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._ready()
            except Exception as exc:  # noqa: BLE001 - the API server may be paused by a fault test
                self.errors.append(f"heartbeat: {exc}")

    # ------------------------------------------------------------------------------------------ pods

    def _watch_pods(self) -> None:
        fields = f"spec.nodeName={self.node}"
        while not self._stop.is_set():
            try:
                doc = self.api.request("GET", "/api/v1/pods", params={"fieldSelector": fields})
                for pod in doc.get("items") or []:
                    self._sync(pod)
                rv = doc["metadata"]["resourceVersion"]
                for event in self.api.watch("v1/pods", None, rv, timeout=10, fields=fields):
                    if self._stop.is_set():
                        return
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._sync(event["object"])
                    elif event["type"] == "ERROR":
                        break
            except Exception as exc:  # noqa: BLE001 - re-list after any watch failure (410 Gone, restarts)
                self.errors.append(f"watch: {exc}")
                self._stop.wait(0.5)

    @staticmethod
    def _key(pod: dict[str, Any]) -> str:
        return f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"

    def _sync(self, pod: dict[str, Any]) -> None:
        key, meta = self._key(pod), pod["metadata"]
        if meta.get("deletionTimestamp"):
            with self._lock:
                proc = self.processes.pop(key, None)
            if proc is not None:
                self._kill(proc)
            with contextlib.suppress(ApiError):
                self.api.delete("v1/pods", meta["namespace"], meta["name"], gracePeriodSeconds=0)
            return
        if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
            return
        with self._lock:
            if key in self.processes:
                return
        try:
            proc = self._run(pod)
        except Exception as exc:  # noqa: BLE001 - a pod that cannot start fails like CreateContainerConfigError
            self.errors.append(f"{key}: {exc}")
            self._set_terminated(pod, 128, f"process kubelet could not start the container: {exc}")
            return
        with self._lock:
            self.processes[key] = proc
        self._patch_status(
            pod,
            {
                "phase": "Running",
                "podIP": self.pod_ip,
                "podIPs": [{"ip": self.pod_ip}],
                "hostIP": self.pod_ip,
                "startTime": _now(),
                "conditions": [
                    {"type": t, "status": "True", "lastTransitionTime": _now()}
                    for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "ready": True,
                        "started": True,
                        "restartCount": 0,
                        "state": {"running": {"startedAt": _now()}},
                    }
                    for c in pod["spec"]["containers"]
                ],
            },
        )

    def _reap(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                done = [(k, p) for k, p in self.processes.items() if p.poll() is not None]
                for k, _ in done:
                    del self.processes[k]
            for key, proc in done:
                ns, name = key.split("/", 1)
                message = ""
                term = self._term_files.get(key)
                if term is not None and term.exists():
                    message = term.read_text(encoding="utf-8", errors="replace")[-4096:]
                pod = self.api.get("v1/pods", ns, name)
                if pod is not None and not pod["metadata"].get("deletionTimestamp"):
                    self._set_terminated(
                        pod, proc.returncode if proc.returncode >= 0 else 128 - proc.returncode, message
                    )

    def _set_terminated(self, pod: dict[str, Any], code: int, message: str) -> None:
        terminated = {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "finishedAt": _now(),
            "startedAt": (pod.get("status") or {}).get("startTime") or _now(),
        }
        if message:
            terminated["message"] = message
        self._patch_status(
            pod,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [
                    {"type": t, "status": "False", "lastTransitionTime": _now()} for t in ("Ready", "ContainersReady")
                ],
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "image": c.get("image", ""),
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                    for c in pod["spec"]["containers"]
                ],
            },
        )

    def _patch_status(self, pod: dict[str, Any], status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            self.api.patch(
                "v1/pods", meta["namespace"], meta["name"], {"status": status}, sub="status", kind="strategic"
            )
        except ApiError as exc:
            if exc.code != 404:
                self.errors.append(f"status {meta['name']}: {exc}")

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    # ------------------------------------------------------------------------------------------ the container

    def _secret(self, ns: str, name: str) -> dict[str, str]:
        secret = self.api.get("v1/secrets", ns, name)
        if secret is None:
            raise RuntimeError(f'secret "{name}" not found')
        return {
            k: base64.b64decode(v).decode("utf-8", errors="replace") for k, v in (secret.get("data") or {}).items()
        }

    def _configmap(self, ns: str, name: str) -> dict[str, str]:
        cm = self.api.get("v1/configmaps", ns, name)
        if cm is None:
            raise RuntimeError(f'configmap "{name}" not found')
        return dict(cm.get("data") or {})

    def _run(self, pod: dict[str, Any]) -> subprocess.Popen:
        meta, spec = pod["metadata"], pod["spec"]
        ns = meta["namespace"]
        root = self.workdir / meta["name"]
        root.mkdir(parents=True, exist_ok=True)
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mapping: list[tuple[str, str]] = []
        for m in container.get("volumeMounts", []):
            vol = volumes[m["name"]]
            if "persistentVolumeClaim" in vol:
                local = self.workdir / "pvc" / vol["persistentVolumeClaim"]["claimName"]
            else:
                local = root / "volumes" / m["name"]
            if m.get("subPath"):
                local = local / m["subPath"]
            local.mkdir(parents=True, exist_ok=True)
            mapping.append((m["mountPath"], str(local)))
        mapping.sort(key=lambda p: -len(p[0]))
        term_local = root / "termination-log"
        term_local.unlink(missing_ok=True)
        mapping.insert(0, (container.get("terminationMessagePath", "/dev/termination-log"), str(term_local)))

        def rewrite(text: str) -> str:
            for src, dst in mapping:
                text = re.sub(re.escape(src) + r"(?=$|[/\"'\s,:;])", dst, text)
            return text

        for m in container.get("volumeMounts", []):
            vol, local = volumes[m["name"]], Path(dict(mapping)[m["mountPath"]])
            files: dict[str, str] = {}
            if "configMap" in vol:
                files = self._configmap(ns, vol["configMap"]["name"])
            elif "secret" in vol:
                files = self._secret(ns, vol["secret"]["secretName"])
            for k, v in files.items():
                (local / k).write_text(rewrite(v), encoding="utf-8")

        env = dict(os.environ)
        env.update(self.extra_env)
        for source in container.get("envFrom", []):
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                try:
                    values = self._secret(ns, source["secretRef"]["name"])
                except RuntimeError:
                    if not source["secretRef"].get("optional"):
                        raise
                    values = {}
            else:
                values = self._configmap(ns, source["configMapRef"]["name"])
            env.update({prefix + k: v for k, v in values.items()})
        for e in container.get("env", []):
            if "value" in e or "valueFrom" not in e:
                env[e["name"]] = rewrite(e.get("value", ""))
                continue
            src = e["valueFrom"]
            if "fieldRef" in src:
                path = src["fieldRef"]["fieldPath"]
                m = re.match(r"metadata\.(annotations|labels)\['(.+)'\]", path)
                env[e["name"]] = (
                    (meta.get(m.group(1)) or {}).get(m.group(2), "")
                    if m
                    else {
                        "metadata.name": meta["name"],
                        "metadata.namespace": ns,
                        "metadata.uid": meta.get("uid", ""),
                        "spec.nodeName": self.node,
                        "status.podIP": self.pod_ip,
                        "status.hostIP": self.pod_ip,
                        "spec.serviceAccountName": spec.get("serviceAccountName", ""),
                    }.get(path, "")
                )
            elif "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                env[e["name"]] = self._secret(ns, ref["name"]).get(ref["key"], "")
            elif "configMapKeyRef" in src:
                ref = src["configMapKeyRef"]
                env[e["name"]] = self._configmap(ns, ref["name"]).get(ref["key"], "")

        # $(VAR) references in command and args, as the kubelet expands them
        def expand(text: str) -> str:
            return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda mm: env.get(mm.group(1), mm.group(0)), text)

        argv = [expand(rewrite(a)) for a in container.get("command", []) + container.get("args", [])]
        if not argv:
            raise RuntimeError("the container has no command: a process kubelet cannot use an image entrypoint")
        exe = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or shutil.which(argv[0])
        if not exe:
            raise RuntimeError(f"{argv[0]} not found next to {sys.executable} nor on PATH")
        key = self._key(pod)
        log = root / "container.log"
        self.logs[key], self._term_files[key] = log, term_local
        with open(log, "ab") as out:
            return subprocess.Popen(
                [exe, *argv[1:]],
                env=env,
                cwd=str(root),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_idle(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self.processes:
                    return
            time.sleep(0.2)
        raise AssertionError(f"processes still running after {timeout} s: {list(self.processes)}")
