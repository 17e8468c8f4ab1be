"""Flux's health for FineTuneJobs, computed by sigs.k8s.io/cli-utils/pkg/kstatus itself (the Go probe
tests/controlplane/kstatus, built by `make tools`) over the objects a real run produces."""

from __future__ import annotations

import json
import subprocess

from tests.harness.realcluster import FTJ, K8s


def kstatus(k8s: K8s, obj: dict) -> list[dict[str, str]]:
    probe = k8s.cp.bin / "kstatus"
    assert probe.exists(), f"{probe} is missing: run `make tools`"
    proc = subprocess.run([str(probe)], input=json.dumps(obj), capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def health(k8s: K8s, name: str) -> str:
    return kstatus(k8s, k8s.get(FTJ, name))[0]["status"]


async def test_kstatus_in_progress_current_failed(k8s: K8s) -> None:
    await k8s.start_operator()
    k8s.create(k8s.ftj("good", resources={"nodes": 1, "gpusPerNode": 1}))
    k8s.create(k8s.ftj("bad", resources={"nodes": 1, "gpusPerNode": 1}))
    await k8s.wait(lambda: len(k8s.running("good")) == 1 and len(k8s.running("bad")) == 1)
    await k8s.wait(lambda: k8s.status("good").get("phase") == "Running")
    assert health(k8s, "good") == "InProgress"
    k8s.finish("good", 0)
    k8s.finish("bad", 0, exit_code=4, message="dataset identity: no valid rows")
    await k8s.wait(
        lambda: k8s.status("good").get("phase") == "Succeeded" and k8s.status("bad").get("phase") == "Failed"
    )
    assert health(k8s, "good") == "Current"
    failed = kstatus(k8s, k8s.get(FTJ, "bad"))[0]
    assert failed["status"] == "Failed" and "no valid rows" in failed["message"], failed
    # the list form, as `kubectl get ftj -o json` prints it
    listed = {r["name"]: r["status"] for r in kstatus(k8s, json.loads(await k8s.kubectl("get", "ftj", "-o", "json")))}
    assert listed == {"good": "Current", "bad": "Failed"}
