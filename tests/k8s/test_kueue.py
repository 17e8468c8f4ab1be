"""Kueue for real: examples/kueue.yaml through Kueue's own controller and webhooks (tests/harness/realkueue.py).
A FineTuneJob is admitted when the ClusterQueue has GPU quota, waits (its Job suspended) when it does not,
and the operator never fights Kueue over `spec.suspend`."""

from __future__ import annotations

from typing import Any

from tests.harness.fixtures import OperatorPasses
from tests.harness.realcluster import OPERATOR_USER, ROOT, K8s

JOBS = "batch/v1/jobs"
WORKLOADS = "kueue.x-k8s.io/v1beta2/workloads"
EXAMPLE = "mistral-7b-dpo-queued"


def workload_of(k8s: K8s, job: str) -> dict[str, Any] | None:
    for wl in k8s.api.list(WORKLOADS, k8s.ns):
        if any(r.get("kind") == "Job" and r.get("name") == job for r in wl["metadata"].get("ownerReferences") or []):
            return wl
    return None


def wl_cond(wl: dict[str, Any] | None, ctype: str) -> str | None:
    return next(
        (c["status"] for c in ((wl or {}).get("status") or {}).get("conditions") or [] if c["type"] == ctype), None
    )


def secret(k8s: K8s, name: str) -> None:
    k8s.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name},
            "stringData": {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "y"},
        },
        "v1/secrets",
    )


async def test_kueue_admits_within_quota_and_queues_beyond(k8s: K8s, kueue: Any) -> None:
    secret(k8s, "s3-credentials")
    await k8s.start_operator()
    out = await k8s.kubectl("apply", "--validate=strict", "-f", str(ROOT / "examples/kueue.yaml"))
    assert f"finetunejob.kubetune.io/{EXAMPLE} created" in out, out
    try:
        # the operator creates the Job suspended and labelled; Kueue admits its Workload (2 of 8 GPUs) and un-suspends it
        wl = await k8s.wait(
            lambda: wl_cond(workload_of(k8s, EXAMPLE), "Admitted") == "True" and workload_of(k8s, EXAMPLE)
        )
        assert wl["spec"]["queueName"] == "team-a"
        await k8s.wait(lambda: k8s.status(EXAMPLE).get("phase") == "Running" and len(k8s.running(EXAMPLE)) == 1)
        assert k8s.get(JOBS, EXAMPLE)["spec"]["suspend"] is False

        # 8 more GPUs do not fit in the 6 left: the Workload waits, the Job stays suspended, the FTJ says Queued
        big = k8s.ftj(
            "big", queueName="team-a", resources={"nodes": 1, "gpusPerNode": 8, "cpu": "4", "memory": "16Gi"}
        )
        k8s.create(big)
        await k8s.wait(
            lambda: (
                workload_of(k8s, "big") is not None and wl_cond(workload_of(k8s, "big"), "QuotaReserved") == "False"
            )
        )
        await k8s.wait(lambda: k8s.cond("big", "Reconciling").get("reason") == "Queued")
        assert k8s.get(JOBS, "big")["spec"]["suspend"] is True and not k8s.pods("big")
        assert k8s.status("big")["phase"] == "Pending"

        # the first job finishes: its quota is released and the waiting one is admitted
        k8s.finish(EXAMPLE, 0)
        await k8s.wait(lambda: k8s.status(EXAMPLE).get("phase") == "Succeeded")
        await k8s.wait(lambda: wl_cond(workload_of(k8s, "big"), "Admitted") == "True", timeout=120)
        await k8s.wait(lambda: k8s.status("big").get("phase") == "Running", timeout=120)
    finally:
        await k8s.kubectl(
            "delete", "-f", str(ROOT / "examples/kueue.yaml"), "--wait=false", "--ignore-not-found", check=False
        )


async def test_queue_label_on_the_finetunejob_causes_no_suspend_fight(
    k8s: K8s, kueue: Any, operator_passes: OperatorPasses
) -> None:
    """A FineTuneJob labelled kueue.x-k8s.io/queue-name (no spec.queueName) on a ClusterQueue without GPU quota:
    whatever the operator makes of the label, it must not flip the Job's suspend against Kueue."""
    cq = f"no-gpus-{k8s.ns}"[:63]
    k8s.api.create(
        "kueue.x-k8s.io/v1beta2/resourceflavors",
        {"apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor", "metadata": {"name": cq}},
    )
    k8s.api.create(
        "kueue.x-k8s.io/v1beta2/clusterqueues",
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "ClusterQueue",
            "metadata": {"name": cq},
            "spec": {
                "namespaceSelector": {},
                "resourceGroups": [
                    {
                        "coveredResources": ["cpu", "memory", "nvidia.com/gpu"],
                        "flavors": [
                            {
                                "name": cq,
                                "resources": [
                                    {"name": "cpu", "nominalQuota": "100"},
                                    {"name": "memory", "nominalQuota": "1000Gi"},
                                    {"name": "nvidia.com/gpu", "nominalQuota": "0"},
                                ],
                            }
                        ],
                    }
                ],
            },
        },
    )
    k8s.create(
        {
            "apiVersion": "kueue.x-k8s.io/v1beta2",
            "kind": "LocalQueue",
            "metadata": {"name": "team-b"},
            "spec": {"clusterQueue": cq},
        },
        "kueue.x-k8s.io/v1beta2/localqueues",
    )
    try:
        await k8s.start_operator()
        body = k8s.ftj("labelled", resources={"nodes": 1, "gpusPerNode": 1})
        body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-b"}
        k8s.create(body)
        job = await k8s.wait(lambda: k8s.get(JOBS, "labelled"))
        await k8s.wait(lambda: k8s.status("labelled").get("phase") in ("Pending", "Running"))
        mark, generation = k8s.cp.audit_mark(), k8s.get(JOBS, "labelled")["metadata"]["generation"]
        for _ in range(3):  # resync passes over the Job as Kueue left it, each after the last: a fighter patches it
            seen = int(k8s.get(JOBS, "labelled")["metadata"]["resourceVersion"])
            await operator_passes.settled(
                k8s.api,
                "labelled",
                lambda p, seen=seen: p.poll and p.job and int(p.job["metadata"]["resourceVersion"]) >= seen,
                ns=k8s.ns,
                timeout=90,
            )
        patches = [
            e
            for e in k8s.cp.audit(mark, user=OPERATOR_USER, namespace=k8s.ns)
            if e["verb"] in ("patch", "update") and (e.get("objectRef") or {}).get("resource") == "jobs"
        ]
        now = k8s.get(JOBS, "labelled")
        assert now["metadata"]["uid"] == job["metadata"]["uid"]
        assert len(patches) <= 1, f"the operator patched the Job {len(patches)} times: a suspend fight"
        assert now["metadata"]["generation"] - generation <= 1, "spec.suspend keeps flipping"
    finally:
        k8s.api.delete("kueue.x-k8s.io/v1beta2/clusterqueues", None, cq)
        k8s.api.delete("kueue.x-k8s.io/v1beta2/resourceflavors", None, cq)
