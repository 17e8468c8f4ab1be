"""HA: two replicas with kopf peering; only the one with the highest priority acts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import eventually
from tests.operator.test_lifecycle import ftj, status

PEERING = "kopf.dev/v1/clusterkopfpeerings"


def use_token(token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the next replica its own credentials, so its requests can be told apart."""
    config = yaml.safe_load(Path(os.environ["KUBECONFIG"]).read_text())
    config["users"][0]["user"]["token"] = token
    path = tmp_path / f"kubeconfig-{token}.yaml"
    path.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", str(path))


def job_reads(api: KubeEmulator, token: str) -> int:
    return sum(1 for r in api if r.resource is not None and r.resource.plural == "jobs" and r.method.value == "GET"
               and r.headers.get("Authorization", r.headers.get("authorization")) == f"Bearer {token}")


async def test_only_one_replica_acts(kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any,
                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kube_api.create(PEERING, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kubetune"}})
    use_token("low", tmp_path, monkeypatch)
    await start_operator(standalone=False, peering_priority=10)
    use_token("high", tmp_path, monkeypatch)
    await start_operator(standalone=False, peering_priority=20)
    peers = await eventually(lambda: len((kube_api.get(PEERING, "", "kubetune") or {}).get("status") or {}) == 2
                             and kube_api.get(PEERING, "", "kubetune")["status"])
    assert sorted(p["priority"] for p in peers.values()) == [10, 20]
    await asyncio.sleep(0.5)  # the lower-priority replica sees its peer and pauses
    kube_api.create(FTJ, ftj("ha"))
    await eventually(lambda: status(kube_api, "ha").get("phase") == "Running")
    await asyncio.sleep(1.0)  # several sync intervals of both replicas
    assert job_reads(kube_api, "high") > 3, "the replica with the highest priority reconciles"
    assert job_reads(kube_api, "low") == 0, "the paused replica must not reconcile"
