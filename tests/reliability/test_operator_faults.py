"""Faults the operator must survive: restarts mid-job, watch expiry (410 Gone), write conflicts (409),
and a batch of invalid FineTuneJobs — no duplicate children, no retry loops, correct status."""

from __future__ import annotations

import threading
from typing import Any

from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import OperatorPasses, eventually, status_writes
from tests.operator.test_lifecycle import NS, cond, events, ftj, status


def children(api: KubeEmulator) -> tuple[int, int, int]:
    return len(api.list("batch/v1/jobs", NS)), len(api.list("v1/configmaps", NS)), len(api.list("v1/services", NS))


async def test_operator_killed_and_restarted_ten_times_mid_job(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    operator = await start_operator()
    kube_api.create(FTJ, ftj("restarts"))
    await eventually(lambda: status(kube_api, "restarts").get("phase") == "Running")
    job_uid = kube_api.get("batch/v1/jobs", NS, "restarts")["metadata"]["uid"]
    for i in range(10):
        await operator.stop()
        if i == 4:
            cluster.finish("restarts", 0)  # rank 0 finishes while no operator runs
        operator = await start_operator()
        # a whole pass of the new operator over the job (children ensured, status written) before looking
        await operator_passes.settled(kube_api, "restarts", replica=operator)
        assert status(kube_api, "restarts")["phase"] == "Running"
        assert children(kube_api) == (1, 1, 1), f"restart {i}: duplicate or missing children"
        assert kube_api.get("batch/v1/jobs", NS, "restarts")["metadata"]["uid"] == job_uid
    cluster.finish("restarts", 1)
    await eventually(lambda: status(kube_api, "restarts").get("phase") == "Succeeded")
    assert cond(kube_api, "Ready", "restarts")["status"] == "True"
    # Events are posted right after the status they announce; wait for it, then make sure no replay adds one
    await eventually(lambda: ("Normal", "TrainingCompleted") in events(kube_api, "restarts"))
    done = int(kube_api.get(FTJ, NS, "restarts")["metadata"]["resourceVersion"])
    await operator_passes.settled(kube_api, "restarts", lambda p: p.rv >= done)  # a whole pass over the result
    assert events(kube_api, "restarts").count(("Normal", "TrainingCompleted")) == 1, events(kube_api, "restarts")


async def test_watch_expiry_410_is_handled_by_relisting(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("gone"))
    await eventually(lambda: status(kube_api, "gone").get("phase") == "Running")
    kube_api.expire_watches()  # every open watch ends before the next event is queued: none of them carries it
    kube_api.create(FTJ, ftj("after-gone"))  # only a re-listed / re-opened watch can see this one
    await eventually(lambda: status(kube_api, "after-gone").get("phase") == "Running", timeout=30)
    cluster.finish("gone", 0)
    cluster.finish("gone", 1)
    await eventually(lambda: status(kube_api, "gone").get("phase") == "Succeeded", timeout=30)
    assert children(kube_api) == (2, 2, 2)


async def test_conflicts_on_status_writes_are_retried(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    kube_api.inject("PATCH", FTJ, subresource="status", count=3, code=409, reason="Conflict")
    kube_api.inject("POST", "batch/v1/jobs", count=2, code=500, reason="InternalError")  # a flaky API server
    await start_operator()
    kube_api.create(FTJ, ftj("conflicts"))
    await eventually(lambda: status(kube_api, "conflicts").get("phase") in ("Running", "Pending"), timeout=30)
    assert kube_api.fault_hits >= 3
    # the Job create failed twice with 500: the operator must retry it on a later pass
    await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "conflicts"), timeout=30)
    await eventually(lambda: status(kube_api, "conflicts").get("phase") == "Running", timeout=30)
    cluster.finish("conflicts", 0)
    cluster.finish("conflicts", 1)
    await eventually(lambda: status(kube_api, "conflicts").get("phase") == "Succeeded", timeout=30)
    assert children(kube_api) == (1, 1, 1)


INVALID = {
    "stage-data-mismatch": ({"stage": "dpo"}, "spec.datasets[0].ranking"),
    "ppo-without-reward-model": ({"stage": "ppo"}, "spec.training.rewardModel"),
    "kto-without-labels": ({"stage": "kto"}, "spec.datasets[0].columns.ktoTag"),
    "quantized-full": (
        {"method": {"type": "full"}, "model": {"source": "hf://a/b", "quantization": {"bits": 4}}},
        "spec.model.quantization",
    ),
    "pt-on-sharegpt": (
        {"stage": "pt", "datasets": [{"name": "d", "source": "s3://bkt/d.json", "formatting": "sharegpt"}]},
        "spec.datasets[0].formatting",
    ),
    "does-not-fit": (
        {
            "model": {"source": "hf://meta-llama/Llama-3.1-70B", "parameters": "70B"},
            "method": {"type": "full"},
            "resources": {"nodes": 1, "gpusPerNode": 1, "gpuType": "T4"},
        },
        "spec.resources.gpuType",
    ),
    "absurd-interleave": (
        {"training": {"mixStrategy": "interleave_under", "interleaveProbs": [0.7, 0.7]}},
        "spec.training.interleaveProbs",
    ),
    "offload-without-deepspeed": ({"distributed": {"strategy": "ddp", "offload": True}}, "spec.distributed.offload"),
    "adapter-with-freeze": (
        {"method": {"type": "freeze"}, "model": {"source": "hf://a/b", "adapter": {"source": "s3://bkt/a"}}},
        "spec.model.adapter",
    ),
    "x" * 70: ({}, "metadata.name"),
}


async def test_a_batch_of_invalid_jobs_is_rejected_once_each_and_the_operator_stays_up(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("good"))
    for name, (spec, _path) in INVALID.items():
        kube_api.create(FTJ, ftj(name, **spec))
    for name, (_spec, path) in INVALID.items():
        await eventually(lambda n=name: cond(kube_api, "Validated", n).get("status") == "False", timeout=30)
        message = cond(kube_api, "Validated", name)["message"]
        assert path in message, (name, message)
        assert status(kube_api, name)["phase"] == "Failed"
    await eventually(lambda: status(kube_api, "good").get("phase") == "Running")
    versions = {n: int(kube_api.get(FTJ, NS, n)["metadata"]["resourceVersion"]) for n in INVALID}
    writes = {n: status_writes(kube_api, n) for n in INVALID}
    for name in INVALID:  # a whole pass over each rejected object (its own status write come back)
        await operator_passes.settled(kube_api, name, lambda p, n=name: p.rv >= versions[n])
    assert {n: status_writes(kube_api, n) for n in INVALID} == writes, "nothing may be retried or re-patched"
    for name in INVALID:
        assert events(kube_api, name).count(("Warning", "InvalidSpec")) == 1, (name, events(kube_api, name))
        assert kube_api.get("batch/v1/jobs", NS, name) is None
    assert children(kube_api) == (1, 1, 1)  # only the valid job has children
    assert any(t.name == "kopf-operator" and t.is_alive() for t in threading.enumerate())
