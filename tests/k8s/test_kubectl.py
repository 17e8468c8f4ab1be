"""`kubetune operator` (the CLI, as a process, with the chart ServiceAccount's token) driven with the real
kubectl against the real API server: strict server-side field validation, `kubectl get ftj` printer
columns, `kubectl wait`, `kubectl delete` through the garbage collector."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from tests.harness.realcluster import FTJ, ROOT, K8s, free_port

BIN = Path(sys.executable).parent


async def start_cli_operator(k8s: K8s, tmp_path: Path, *extra: str) -> asyncio.subprocess.Process:
    """The operator process, up (its /healthz answers). Its health port must be named up front: when another
    process took it since free_port(), the operator exits saying so, and it is started again on another."""
    for _ in range(5):
        health_port = free_port()
        log = open(tmp_path / "operator.log", "wb")  # noqa: SIM115, ASYNC230 - closed when the test ends
        env = {
            **os.environ,
            "KUBECONFIG": str(k8s.cp.operator_kubeconfig),
            "KUBETUNE_HEALTH_PORT": str(health_port),
            "KUBETUNE_TRAINER_IMAGE": "registry.test/trainer:1",
        }
        env.pop("KUBERNETES_SERVICE_HOST", None)
        proc = await asyncio.create_subprocess_exec(
            str(BIN / "kubetune"),
            "operator",
            "--standalone",
            "--namespace",
            k8s.ns,
            "--metrics-port",
            "0",
            "--sync-interval",
            "1",
            *extra,
            env=env,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        await k8s.wait(lambda port=health_port, proc=proc: proc.returncode is not None or healthy(port), timeout=60)
        if proc.returncode is None:
            return proc
        log.close()
        text = (tmp_path / "operator.log").read_text(errors="replace")
        assert "address already in use" in text.lower(), text[-3000:]  # any other exit is the test's failure
    raise AssertionError("five free ports were all taken before the operator could bind them")


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), timeout=20)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def cli_operator(k8s: K8s, tmp_path: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await start_cli_operator(k8s, tmp_path)
    try:
        yield proc
    finally:
        await stop(proc)
        print((tmp_path / "operator.log").read_text(errors="replace")[-3000:])


async def test_kubectl_apply_get_wait_delete(k8s: K8s, cli_operator: asyncio.subprocess.Process) -> None:
    out = await k8s.kubectl(
        "apply",
        "--validate=strict",
        "-f",
        str(ROOT / "tests/operator/fixtures/two-node.yaml"),
        "-f",
        str(ROOT / "examples/quickstart.yaml"),
    )
    assert "finetunejob.kubetune.io/two-node created" in out and "finetunejob.kubetune.io/quickstart created" in out
    await k8s.kubectl("wait", "--for=jsonpath={.status.phase}=Running", "ftj/two-node", "--timeout=120s")
    await k8s.wait(lambda: len(k8s.running("two-node")) == 2)
    job = k8s.get("batch/v1/jobs", "two-node")
    assert job["spec"]["parallelism"] == 2
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/trainer:1"

    table = await k8s.kubectl("get", "ftj")  # server-side printing with the CRD's printer columns
    header, *rows = table.strip().splitlines()
    assert header.split() == ["NAME", "STAGE", "PHASE", "PROGRESS", "LOSS", "ETA", "AGE"], table
    assert any(r.split()[:3] == ["two-node", "sft", "Running"] for r in rows), table
    children = await k8s.kubectl(
        "get", "jobs,configmaps,services", "-l", "kubetune.io/finetunejob=two-node", "-o", "name"
    )
    assert sorted(children.split()) == ["configmap/two-node-trainer", "job.batch/two-node", "service/two-node"]
    assert (
        await k8s.kubectl(
            "get", "ftj", "two-node", "-o", "jsonpath={.status.conditions[?(@.type=='Reconciling')].status}"
        )
        == "True"
    )

    k8s.finish("two-node", 0)
    k8s.finish("two-node", 1)
    await k8s.kubectl("wait", "--for=condition=Ready", "ftj/two-node", "--timeout=120s")
    assert "Succeeded" in await k8s.kubectl("get", "ftj", "two-node")
    await k8s.kubectl("delete", "ftj", "two-node", "--wait=true", "--timeout=120s")
    await k8s.wait(
        lambda: k8s.get("batch/v1/jobs", "two-node") is None and k8s.get("v1/configmaps", "two-node-trainer") is None
    )


async def test_unknown_fields_strict_vs_default_validation(k8s: K8s, tmp_path: Path) -> None:
    """The real server refuses an unknown field only when the client asks for strict validation; otherwise it
    warns and prunes it (the emulator used to answer 422 always)."""
    doc = yaml.safe_load((ROOT / "tests/operator/fixtures/two-node.yaml").read_text())
    doc["spec"]["trainng"] = {"epochs": 3}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(doc))
    out = await k8s.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(path), check=False)
    assert 'unknown field "spec.trainng"' in out, out
    out = await k8s.kubectl("apply", "--validate=strict", "-f", str(path), check=False)
    assert 'unknown field "spec.trainng"' in out, out
    assert k8s.get(FTJ, "two-node") is None
    out = await k8s.kubectl("apply", "--validate=false", "-f", str(path), check=False)
    assert "created" in out, out
    stored = k8s.get(FTJ, "two-node")
    assert "trainng" not in stored["spec"], "the real server prunes unknown fields of a structural schema"
