"""fromJob pipelines (sft → dpo, rm → ppo) and progress pulled from the rank-0 metrics endpoint."""

from __future__ import annotations

import json
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, start_http_server

from kubetune.api import metrics as m
from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import eventually
from tests.operator.test_lifecycle import NS, cond, events, ftj, status


async def test_adapter_from_job_waits_then_uses_the_upstream_artifact(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(
        FTJ,
        ftj(
            "continue",
            model={"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": {"fromJob": "sft-base"}},
            output={"uri": "s3://out/continue"},
        ),
    )
    await eventually(lambda: cond(kube_api, "Waiting", "continue").get("reason") == "WaitingForUpstreamJob")
    assert "spec.model.adapter.fromJob" in cond(kube_api, "Waiting", "continue")["message"]
    assert "not found" in cond(kube_api, "Waiting", "continue")["message"]
    kube_api.create(FTJ, ftj("sft-base", output={"uri": "s3://out/sft-base"}))
    await eventually(lambda: status(kube_api, "sft-base").get("phase") == "Running")
    await eventually(lambda: "Running" in cond(kube_api, "Waiting", "continue").get("message", ""))
    assert kube_api.get("batch/v1/jobs", NS, "continue") is None, "must not start before the upstream job succeeded"
    cluster.finish("sft-base", 0)
    cluster.finish("sft-base", 1)
    cm = await eventually(lambda: kube_api.get("v1/configmaps", NS, "continue-trainer"))
    config = json.loads(cm["data"]["trainer.json"])
    assert config["spec"]["model"]["adapter"] == {"source": "s3://out/sft-base"}
    await eventually(lambda: cond(kube_api, "Waiting", "continue").get("status") == "False")
    assert ("Normal", "WaitingForUpstreamJob") in events(kube_api, "continue")


async def test_reward_model_from_a_failed_job_fails(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("rm-job", output={"uri": "s3://out/rm"}))
    kube_api.create(
        FTJ,
        ftj("ppo-job", stage="ppo", training={"rewardModel": {"fromJob": "rm-job"}}, output={"uri": "s3://out/ppo"}),
    )
    await eventually(lambda: status(kube_api, "rm-job").get("phase") == "Running")
    cluster.finish("rm-job", 0, exit_code=3, message="training.rewardModel: bad config")
    await eventually(lambda: status(kube_api, "ppo-job").get("phase") == "Failed")
    failed = cond(kube_api, "Failed", "ppo-job")
    assert (
        failed["reason"] == "UpstreamJobFailed" and "rm-job" in failed["message"] and "bad config" in failed["message"]
    )
    assert kube_api.get("batch/v1/jobs", NS, "ppo-job") is None


async def test_progress_is_pulled_from_rank0(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    registry = CollectorRegistry()
    labels = {"job": "watched", "namespace": NS, "stage": "sft", "method": "lora", "model": "smollm2"}
    values = {
        m.GLOBAL_STEP: 5,
        m.TOTAL_STEPS: 20,
        m.EPOCH: 0.25,
        m.TRAIN_LOSS: 1.75,
        m.LEARNING_RATE: 1e-4,
        m.TOKENS_PER_SECOND: 1234.5,
        m.ETA_SECONDS: 3725,
    }
    for name, value in values.items():
        Gauge(name, name, list(labels), registry=registry).labels(**labels).set(value)
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)  # the port it bound, no race
    port = server.server_port
    try:
        await start_operator(trainer_metrics_port=port)
        kube_api.create(FTJ, ftj("watched", resources={"nodes": 1, "gpusPerNode": 0}))
        got = await eventually(
            lambda: (
                status(kube_api, "watched").get("progress", {}).get("step") == 5
                and status(kube_api, "watched")["progress"]
            )
        )
        assert got == {
            "step": 5,
            "totalSteps": 20,
            "percent": 25.0,
            "epoch": 0.25,
            "loss": 1.75,
            "learningRate": 0.0001,
            "tokensPerSecond": 1234.5,
            "etaSeconds": 3725.0,
            "eta": "1h02m",
        }
        cluster.finish("watched", 0)
        await eventually(lambda: status(kube_api, "watched").get("phase") == "Succeeded")
        assert status(kube_api, "watched")["progress"]["percent"] == 100.0
    finally:
        server.shutdown()
