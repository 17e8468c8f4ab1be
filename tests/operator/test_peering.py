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


def acts(api: KubeEmulator, token: str) -> int:
    """Writes by one replica, kopf's own peering heartbeats aside (children, status, Events)."""
    return sum(
        1
        for r in api
        if r.resource is not None
        and r.resource.group != "kopf.dev"
        and r.method.value in ("POST", "PATCH", "PUT", "DELETE")
        and r.headers.get("Authorization", r.headers.get("authorization")) == f"Bearer {token}"
    )


async def test_only_one_replica_acts(
    kube_api: KubeEmulator,
    cluster: ClusterSimulator,
    start_operator: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube_api.create(
        PEERING, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kubetune"}}
    )
    use_token("low", tmp_path, monkeypatch)
    await start_operator(standalone=False, peering_priority=10)
    use_token("high", tmp_path, monkeypatch)
    await start_operator(standalone=False, peering_priority=20)
    peers = await eventually(
        lambda: (
            len((kube_api.get(PEERING, "", "kubetune") or {}).get("status") or {}) == 2
            and kube_api.get(PEERING, "", "kubetune")["status"]
        )
    )
    assert sorted(p["priority"] for p in peers.values()) == [10, 20]
    await asyncio.sleep(0.5)  # the lower-priority replica sees its peer and pauses
    kube_api.create(FTJ, ftj("ha"))
    await eventually(lambda: status(kube_api, "ha").get("phase") == "Running")
    await asyncio.sleep(1.0)  # several sync intervals of both replicas
    assert acts(kube_api, "high") >= 4, "the replica with the highest priority creates the children and the status"
    assert acts(kube_api, "low") == 0, "the paused replica must not reconcile"
