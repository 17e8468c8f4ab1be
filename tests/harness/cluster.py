"""The controllers a real cluster would run, for tests: a Job controller and a kubelet.

A test fixture, not shipped code. It works on the :class:`KubeEmulator`'s store in the
same event loop (every write goes through the emulator, so watchers see it):

- **Job controller** (``batch/v1``, Indexed): one pod per pending completion index, named
  ``<job>-<index>-<suffix>`` with hostname ``<job>-<index>``, the
  ``batch.kubernetes.io/job-completion-index`` annotation and label, an ownerReference to
  the Job; ``active``/``succeeded``/``failed`` counts, ``startTime``; ``podFailurePolicy``
  (``FailJob`` on listed exit codes), ``backoffLimit`` (a failed pod is replaced until it is
  exceeded), ``activeDeadlineSeconds``, ``suspend`` (active pods deleted, ``Suspended``
  condition; pods come back on resume), ``Complete``/``SuccessCriteriaMet``/``Failed``.
- **kubelet**: Pending → Running (a pod IP, a running container status). What the container
  does is either decided by the test (:meth:`ClusterSimulator.finish`) or, with
  ``run_commands=True``, the pod's real command runs as a local process: volumes become
  local folders (ConfigMaps written out, emptyDirs and PVCs as folders), the pod's mount
  paths are rewritten to those folders in the command, the env and the mounted files,
  ``fieldRef`` env values are resolved, and the termination message file is read back
  into ``containerStatuses[].state.terminated.message`` like the real kubelet does.
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import os
import re
import shutil
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from tests.harness.emulator import KubeEmulator

JOBS, PODS, CONFIGMAPS = "batch/v1/jobs", "v1/pods", "v1/configmaps"
INDEX = "batch.kubernetes.io/job-completion-index"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _job_of(pod: dict[str, Any]) -> str | None:
    return (pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-name")


def _cond(obj: dict[str, Any], ctype: str) -> bool:
    return any(
        c.get("type") == ctype and c.get("status") == "True" for c in (obj.get("status") or {}).get("conditions") or []
    )


@dataclass
class ClusterSimulator:
    api: KubeEmulator
    run_commands: bool = False
    workdir: Path | None = None
    pod_ip: str = "127.0.0.1"
    tick: float = 0.05
    start_after: float = 0.0
    """Seconds a pod stays Pending before the kubelet starts it."""
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    _task: asyncio.Task | None = None
    _started: dict[str, float] = field(default_factory=dict)

    # ------------------------------------------------------------------------------------------ control

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        for proc in self.processes.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    def pods(self, job: str, namespace: str = "default") -> list[dict[str, Any]]:
        return self.api.list(PODS, namespace, labels=f"batch.kubernetes.io/job-name={job}")

    def finish(self, job: str, index: int, exit_code: int = 0, message: str = "", namespace: str = "default") -> None:
        """End the running container of one index, as if the trainer exited with ``exit_code``."""
        for pod in self.pods(job, namespace):
            if pod["metadata"]["annotations"][INDEX] == str(index) and pod["status"]["phase"] == "Running":
                self._terminate(pod, exit_code, message)
                return
        raise AssertionError(f"no running pod of {job} index {index}")

    def restart_container(self, job: str, index: int, namespace: str = "default") -> None:
        for pod in self.pods(job, namespace):
            if pod["metadata"]["annotations"][INDEX] == str(index):
                cs = pod["status"]["containerStatuses"][0]
                self.api.update(
                    PODS,
                    namespace,
                    pod["metadata"]["name"],
                    {"status": {"containerStatuses": [{**cs, "restartCount": cs.get("restartCount", 0) + 1}]}},
                    status=True,
                )
                return

    # ------------------------------------------------------------------------------------------ loop

    async def _loop(self) -> None:
        while True:
            by_job: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for pod in self.api.list(PODS):  # once per tick, not once per Job: the loop stays linear
                by_job.setdefault((pod["metadata"]["namespace"], _job_of(pod)), []).append(pod)
            for job in self.api.list(JOBS):
                self._job_controller(job, by_job.get((job["metadata"]["namespace"], job["metadata"]["name"]), []))
            for pod in self.api.list(PODS):
                await self._kubelet(pod)
            await asyncio.sleep(self.tick)

    def _job_controller(self, job: dict[str, Any], pods: list[dict[str, Any]]) -> None:
        meta, spec = job["metadata"], job["spec"]
        ns, name = meta["namespace"], meta["name"]
        status = dict(job.get("status") or {})
        if _cond(job, "Complete") or _cond(job, "Failed"):
            return
        by_phase = {
            ph: [p for p in pods if p["status"]["phase"] == ph] for ph in ("Pending", "Running", "Succeeded", "Failed")
        }
        active = by_phase["Pending"] + by_phase["Running"]
        done = {p["metadata"]["annotations"][INDEX] for p in by_phase["Succeeded"]}
        conditions = [c for c in status.get("conditions") or [] if c["type"] != "Suspended"]
        new = {**status, "active": len(active), "succeeded": len(done), "failed": len(by_phase["Failed"])}
        completions = int(spec.get("completions", 1))

        def fail(reason: str, message: str) -> None:
            for p in active:
                self.api.delete(PODS, ns, p["metadata"]["name"])
            now = _now()
            conds = [
                *conditions,
                {
                    "type": "FailureTarget",
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": now,
                },
                {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now},
            ]
            self.api.update(JOBS, ns, name, {"status": {**new, "active": 0, "conditions": conds}}, status=True)

        if len(done) >= completions:
            now = _now()
            conds = [
                *conditions,
                {
                    "type": "SuccessCriteriaMet",
                    "status": "True",
                    "reason": "CompletionsReached",
                    "lastTransitionTime": now,
                },
                {"type": "Complete", "status": "True", "reason": "CompletionsReached", "lastTransitionTime": now},
            ]
            self.api.update(
                JOBS, ns, name, {"status": {**new, "completionTime": now, "conditions": conds}}, status=True
            )
            return
        for pod in by_phase["Failed"]:
            code = pod["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
            for rule in (spec.get("podFailurePolicy") or {}).get("rules", []):
                on = rule.get("onExitCodes")
                if rule["action"] == "FailJob" and on and (code in on["values"]) == (on["operator"] == "In"):
                    fail(
                        "PodFailurePolicy",
                        f"Container trainer for pod {ns}/{pod['metadata']['name']} failed with exit code "
                        f"{code} matching FailJob rule at index 0",
                    )
                    return
        if len(by_phase["Failed"]) > int(spec.get("backoffLimit", 6)):
            fail("BackoffLimitExceeded", "Job has reached the specified backoff limit")
            return
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and status.get("startTime"):
            started = dt.datetime.fromisoformat(status["startTime"])
            if (dt.datetime.now(dt.UTC) - started).total_seconds() > deadline:
                fail("DeadlineExceeded", "Job was active longer than specified deadline")
                return
        if spec.get("suspend"):
            for p in active:
                self.api.delete(PODS, ns, p["metadata"]["name"])
            new["active"] = 0
            conds = [
                *conditions,
                {
                    "type": "Suspended",
                    "status": "True",
                    "reason": "JobSuspended",
                    "message": "Job suspended",
                    "lastTransitionTime": _now(),
                },
            ]
            if new != status or conds != status.get("conditions"):
                self.api.update(JOBS, ns, name, {"status": {**new, "conditions": conds}}, status=True)
            return
        have = {p["metadata"]["annotations"][INDEX] for p in active} | done
        for index in range(completions):
            if str(index) not in have and len(active) < int(spec.get("parallelism", 1)):
                active.append(self._create_pod(job, index))
        new["active"] = len(active)
        new.setdefault("startTime", _now())
        if new != status or conditions != (status.get("conditions") or []):
            self.api.update(JOBS, ns, name, {"status": {**new, "conditions": conditions or None}}, status=True)

    def _create_pod(self, job: dict[str, Any], index: int) -> dict[str, Any]:
        meta = job["metadata"]
        template = copy.deepcopy(job["spec"]["template"])
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "batch.kubernetes.io/job-name": meta["name"],
            "job-name": meta["name"],
            "batch.kubernetes.io/controller-uid": meta["uid"],
            INDEX: str(index),
        }
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{meta['name']}-{index}-{uuid.uuid4().hex[:5]}",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": {INDEX: str(index)},
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**template["spec"], "hostname": f"{meta['name']}-{index}"},
            "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]},
        }
        for c in pod["spec"]["containers"]:
            c["env"] = [
                *c.get("env", []),
                {
                    "name": "JOB_COMPLETION_INDEX",
                    "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX}']"}},
                },
            ]
        return self.api.create(PODS, pod)

    async def _kubelet(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod["status"]
        key = f"{meta['namespace']}/{meta['name']}"
        if status["phase"] == "Pending":
            first = self._started.setdefault(key, asyncio.get_running_loop().time())
            if asyncio.get_running_loop().time() - first < self.start_after:
                return
            running = {
                "phase": "Running",
                "podIP": self.pod_ip,
                "hostIP": self.pod_ip,
                "startTime": _now(),
                "containerStatuses": [
                    {
                        "name": c["name"],
                        "ready": True,
                        "restartCount": 0,
                        "started": True,
                        "image": c["image"],
                        "state": {"running": {"startedAt": _now()}},
                    }
                    for c in pod["spec"]["containers"]
                ],
            }
            self.api.update(PODS, meta["namespace"], meta["name"], {"status": running}, status=True)
            if self.run_commands:
                await self._start_process(self.api.get(PODS, meta["namespace"], meta["name"]))
        elif status["phase"] == "Running" and key in self.processes:
            proc = self.processes[key]
            if proc.returncode is not None:
                message = ""
                term = self._files.get(key)
                if term is not None and term.exists():
                    message = term.read_text(encoding="utf-8", errors="replace")[-4096:]
                del self.processes[key]
                self._terminate(pod, proc.returncode, message)

    def _terminate(self, pod: dict[str, Any], exit_code: int, message: str) -> None:
        meta = pod["metadata"]
        if self.api.get(PODS, meta["namespace"], meta["name"]) is None:
            return
        cs = pod["status"]["containerStatuses"][0]
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "finishedAt": _now(),
        }
        if message:
            terminated["message"] = message
        self.api.update(
            PODS,
            meta["namespace"],
            meta["name"],
            {
                "status": {
                    "phase": "Succeeded" if exit_code == 0 else "Failed",
                    "containerStatuses": [
                        {**cs, "ready": False, "started": False, "state": {"terminated": terminated}}
                    ],
                }
            },
            status=True,
        )

    # ------------------------------------------------------------------------------------------ real commands

    _files: dict[str, Path] = field(default_factory=dict)

    async def _start_process(self, pod: dict[str, Any] | None) -> None:
        if pod is None:
            return
        assert self.workdir is not None, "run_commands needs a workdir"
        meta, spec = pod["metadata"], pod["spec"]
        root = self.workdir / meta["name"]
        container = spec["containers"][0]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mapping: list[tuple[str, str]] = []
        for m in container.get("volumeMounts", []):
            vol = volumes[m["name"]]
            if m["mountPath"] == "/tmp":  # the pod's scratch /tmp: a local process uses the host's own
                continue
            if "persistentVolumeClaim" in vol:
                local = self.workdir / "pvc" / vol["persistentVolumeClaim"]["claimName"]
            else:
                local = root / "volumes" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            mapping.append((m["mountPath"], str(local)))
        mapping.sort(key=lambda p: -len(p[0]))
        term_path = container.get("terminationMessagePath", "/dev/termination-log")
        term_local = root / "termination-log"
        mapping.insert(0, (term_path, str(term_local)))

        # one pass, longest mount first: a rewritten path is never rewritten again (a /tmp mount and a workdir
        # under /tmp would otherwise nest)
        targets = dict(mapping)
        pattern = re.compile("|".join(re.escape(src) for src, _ in mapping) + r"(?=$|[/\"'\s,])")

        def rewrite(text: str) -> str:
            return pattern.sub(lambda m: targets[m.group(0)], text)

        for m in container.get("volumeMounts", []):
            vol = volumes[m["name"]]
            if "configMap" in vol:
                cm = self.api.get(CONFIGMAPS, meta["namespace"], vol["configMap"]["name"])
                assert cm is not None, f"ConfigMap {vol['configMap']['name']} is missing: the pod could not start"
                local = Path(dict(mapping)[m["mountPath"]])
                for k, v in (cm.get("data") or {}).items():
                    (local / k).write_text(rewrite(v), encoding="utf-8")
        env = dict(os.environ)
        for e in container.get("env", []):
            if "value" in e:
                env[e["name"]] = rewrite(e["value"])
            else:
                path = e["valueFrom"]["fieldRef"]["fieldPath"]
                m = re.match(r"metadata\.(annotations|labels)\['(.+)'\]", path)
                env[e["name"]] = (
                    meta[m.group(1)][m.group(2)]
                    if m
                    else {
                        "metadata.name": meta["name"],
                        "metadata.namespace": meta["namespace"],
                        "status.podIP": self.pod_ip,
                    }[path]
                )
        argv = [rewrite(a) for a in container["command"] + container.get("args", [])]
        exe = shutil.which(argv[0], path=str(Path(sys.executable).parent)) or shutil.which(argv[0])
        assert exe, f"{argv[0]} not found next to {sys.executable}"
        log = open(root / "container.log", "wb")  # noqa: SIM115, ASYNC230 - closed with the process
        proc = await asyncio.create_subprocess_exec(
            exe, *argv[1:], env=env, cwd=str(root), stdout=log, stderr=asyncio.subprocess.STDOUT
        )
        key = f"{meta['namespace']}/{meta['name']}"
        self.processes[key] = proc
        self._files[key] = term_local
