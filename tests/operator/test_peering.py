"""HA: two replicas with kopf peering; only the one with the highest priority acts."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, PLURAL, KubeEmulator
from tests.harness.fixtures import OperatorPasses, eventually
from tests.operator.test_lifecycle import NS, ftj, status

PEERING = "kopf.dev/v1/clusterkopfpeerings"
PAUSING, RESUMING = "Pausing operations in favour of", "Resuming operations after the pause"  # kopf's log lines


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
    operator_passes: OperatorPasses,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="kopf")
    kube_api.create(
        PEERING, {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": "kubetune"}}
    )

    def said(replica: Any, text: str) -> list[int]:
        """Where in the captured log this replica said ``text``."""
        return [
            i
            for i, r in enumerate(list(caplog.records))
            if r.thread == replica.thread.ident and text in r.getMessage()
        ]

    use_token("low", tmp_path, monkeypatch)
    low = await start_operator(standalone=False, peering_priority=10)
    await eventually(lambda: said(low, RESUMING))  # alone, it leaves the pause every replica starts in
    use_token("high", tmp_path, monkeypatch)
    high = await start_operator(standalone=False, peering_priority=20)
    peers = await eventually(
        lambda: (
            len((kube_api.get(PEERING, "", "kubetune") or {}).get("status") or {}) == 2
            and kube_api.get(PEERING, "", "kubetune")["status"]
        )
    )
    assert sorted(p["priority"] for p in peers.values()) == [10, 20]
    # the lower-priority replica has seen its peer: it paused, and its watch of FineTuneJobs waits for the pause
    paused = (await eventually(lambda: said(low, PAUSING)))[0]
    await eventually(lambda: [i for i in said(low, f"Pausing the watch-stream for {PLURAL}") if i > paused])
    kube_api.create(FTJ, ftj("ha"))
    await eventually(lambda: status(kube_api, "ha").get("phase") == "Running")
    running = int(kube_api.get(FTJ, NS, "ha")["metadata"]["resourceVersion"])
    for _ in range(3):  # three timer passes of the active replica, each after the last, over the running job
        mark = operator_passes.mark()
        await operator_passes.settled(kube_api, "ha", lambda p: p.poll and p.rv >= running, since=mark, replica=high)
    assert acts(kube_api, "high") >= 4, "the replica with the highest priority creates the children and the status"
    assert acts(kube_api, "low") == 0, "the paused replica must not reconcile"
    assert not operator_passes.of("ha", replica=low), "the paused replica must not even look"
    assert not [i for i in said(low, RESUMING) if i > paused], "nothing made the paused replica resume"
