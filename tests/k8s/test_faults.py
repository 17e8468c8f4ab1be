"""Faults a real control plane can produce: an API server restart mid-job (every watch breaks; with etcd
compacted, resumed watches get 410 Gone and must re-list), a frozen API server (SIGSTOP: calls hang), and
operator restarts. The emulator keeps only the faults a real server cannot be made to produce on demand
(409 on the N-th status patch, 500 on the N-th Job create: tests/reliability/test_operator_faults.py)."""

from __future__ import annotations

import asyncio

from tests.harness.fixtures import OperatorPasses, eventually
from tests.harness.realcluster import K8s

JOBS = "batch/v1/jobs"


def children(k8s: K8s) -> tuple[int, int, int]:
    return (
        len(k8s.api.list(JOBS, k8s.ns)),
        len(k8s.api.list("v1/configmaps", k8s.ns, labels="kubetune.io/finetunejob")),
        len(k8s.api.list("v1/services", k8s.ns)),
    )


async def test_api_server_restart_mid_job_with_compacted_history(k8s: K8s) -> None:
    await k8s.start_operator()
    k8s.create(k8s.ftj("before"))
    await k8s.wait(lambda: k8s.status("before").get("phase") == "Running" and len(k8s.running("before")) == 2)
    # churn, then compact etcd: the operator's last seen resourceVersions are now too old
    for i in range(3):
        k8s.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"churn-{i}"}}, "v1/configmaps")
    await asyncio.to_thread(k8s.cp.compact_etcd)
    await asyncio.to_thread(k8s.cp.restart_apiserver)
    k8s.create(k8s.ftj("after"))  # only a re-opened (re-listed) watch sees this one
    await k8s.wait(lambda: k8s.status("after").get("phase") == "Running", timeout=120)
    k8s.finish("before", 0)
    k8s.finish("before", 1)
    await k8s.wait(lambda: k8s.status("before").get("phase") == "Succeeded", timeout=120)
    assert children(k8s) == (2, 2, 2), "no duplicate or missing children after the restart"


async def test_frozen_api_server_then_progress_resumes(k8s: K8s, operator_passes: OperatorPasses) -> None:
    """SIGSTOP the API server while the operator works: its calls hang (open connections, no answer). After
    SIGCONT every FineTuneJob makes progress again without restarting the operator."""
    await k8s.start_operator()
    k8s.create(k8s.ftj("frozen"))
    await k8s.wait(lambda: k8s.status("frozen").get("phase") == "Running" and len(k8s.running("frozen")) == 2)
    mark = operator_passes.mark()
    with k8s.cp.apiserver_paused():
        # the operator works on while the server is frozen: a resync pass begins, and what it sends hangs
        await eventually(
            lambda: any(p.poll and p.decided for p in operator_passes.of("frozen", k8s.ns, since=mark)), timeout=60
        )
    k8s.finish("frozen", 0)
    k8s.finish("frozen", 1)
    k8s.create(k8s.ftj("thawed", resources={"nodes": 1, "gpusPerNode": 1}))
    await k8s.wait(lambda: k8s.status("frozen").get("phase") == "Succeeded", timeout=150)
    await k8s.wait(lambda: k8s.status("thawed").get("phase") == "Running", timeout=150)
    assert children(k8s) == (2, 2, 2)


async def test_operator_killed_and_restarted_mid_job(k8s: K8s) -> None:
    stop = await k8s.start_operator()
    k8s.create(k8s.ftj("restarts"))
    await k8s.wait(lambda: k8s.status("restarts").get("phase") == "Running")
    job_uid = k8s.get(JOBS, "restarts")["metadata"]["uid"]
    for i in range(4):
        stop.set()
        await k8s.stop_operators()
        if i == 2:
            k8s.finish("restarts", 0)  # rank 0 finishes while no operator runs
        stop = await k8s.start_operator()
        await k8s.wait(lambda: k8s.status("restarts").get("phase") == "Running")
        assert children(k8s) == (1, 1, 1), f"restart {i}: duplicate or missing children"
        assert k8s.get(JOBS, "restarts")["metadata"]["uid"] == job_uid
    k8s.finish("restarts", 1)
    await k8s.wait(lambda: k8s.status("restarts").get("phase") == "Succeeded")
    await k8s.wait(lambda: ("Normal", "TrainingCompleted") in k8s.events("restarts"))
    assert k8s.events("restarts").count(("Normal", "TrainingCompleted")) == 1
