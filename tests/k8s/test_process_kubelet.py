"""The process kubelet (tests/harness/processkubelet.py): the real scheduler binds a Job's pods to node proc-0,
the pods run as local processes (ConfigMap volume, Secret env, the completion index from the downward API),
their exit code and termination message reach the real Job controller."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.harness.processkubelet import ProcessKubelet
from tests.harness.realcluster import K8s

SCRIPT = """
import os, pathlib, sys
index = os.environ["JOB_COMPLETION_INDEX"]
config = pathlib.Path("/etc/demo/greeting").read_text()
pathlib.Path("/dev/termination-log").write_text(f"index {index}: {config} {os.environ['TOKEN']}")
sys.exit(int(index))
"""


def job(name: str, completions: int) -> dict:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": completions,
            "parallelism": completions,
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "nodeSelector": ProcessKubelet.NODE_SELECTOR,
                    "tolerations": ProcessKubelet.TOLERATIONS,
                    "containers": [
                        {
                            "name": "main",
                            "image": "local/python",
                            "command": [Path(sys.executable).name, "-c", SCRIPT],
                            "env": [
                                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "demo", "key": "token"}}}
                            ],
                            "volumeMounts": [{"name": "config", "mountPath": "/etc/demo"}],
                        }
                    ],
                    "volumes": [{"name": "config", "configMap": {"name": "demo"}}],
                }
            },
        },
    }


async def test_pods_run_as_processes_and_report_their_exit(k8s: K8s, tmp_path: Path) -> None:
    k8s.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo"}, "data": {"greeting": "hello"}},
        "v1/configmaps",
    )
    k8s.create(
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "demo"}, "stringData": {"token": "t0k"}},
        "v1/secrets",
    )
    with ProcessKubelet(k8s.api, tmp_path / "kubelet") as kubelet:
        k8s.create(job("ok", 1), "batch/v1/jobs")
        k8s.create(job("bad", 2), "batch/v1/jobs")

        def cond(name: str, ctype: str) -> bool:
            got = k8s.get("batch/v1/jobs", name) or {}
            return any(
                c["type"] == ctype and c["status"] == "True" for c in (got.get("status") or {}).get("conditions") or []
            )

        await k8s.wait(lambda: cond("ok", "Complete"), timeout=120)
        await k8s.wait(lambda: cond("bad", "Failed"), timeout=120)
        pods = {p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]: p for p in k8s.pods("ok")}
        term = pods["0"]["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 0 and term["message"] == "index 0: hello t0k"
        assert pods["0"]["spec"]["nodeName"] == "proc-0" and pods["0"]["status"]["podIP"] == "127.0.0.1"
        failed = [p for p in k8s.pods("bad") if p["status"]["phase"] == "Failed"]
        assert any(
            p["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "index 1: hello t0k"
            for p in failed
        ), [p["status"] for p in failed]
        assert not kubelet.errors, kubelet.errors
