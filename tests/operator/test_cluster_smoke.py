"""A scenario that runs against the emulator by default and against a real cluster on request.

With ``KUBETUNE_TEST_CLUSTER=1`` and ``KUBECONFIG`` pointing at a cluster that has the CRD installed
(``kubectl apply -f crds/``), it uses that cluster instead: the operator runs in this process, only
kubectl talks to the API, and the FineTuneJob is deleted at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.cluster import ClusterSimulator
from tests.harness.fixtures import emulated_api
from tests.operator.test_kubectl_scenario import KUBECTL, ROOT, kubectl

REAL = bool(os.environ.get("KUBETUNE_TEST_CLUSTER"))


@pytest.fixture
async def target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    if REAL:
        if not os.environ.get("KUBECONFIG"):
            pytest.fail("KUBETUNE_TEST_CLUSTER=1 needs KUBECONFIG")
        yield None
        return
    async with emulated_api(tmp_path, monkeypatch) as emulator, ClusterSimulator(emulator):
        yield None


@pytest.mark.cluster
async def test_applied_job_gets_owned_children_and_status(target: None, start_operator: Any, tmp_path: Path) -> None:
    assert KUBECTL.exists()
    await start_operator()
    await kubectl("apply", "--validate=false", "-f", str(ROOT / "tests/operator/fixtures/two-node.yaml"))
    try:

        async def get(*args: str) -> dict[str, Any] | None:
            try:
                return json.loads(await kubectl("get", *args, "-o", "json"))
            except AssertionError:
                return None

        owner = await get("ftj", "two-node")
        assert owner is not None
        for kind, name in (("job", "two-node"), ("configmap", "two-node-trainer"), ("service", "two-node")):
            child = None
            for _ in range(200):
                child = await get(kind, name)
                if child:
                    break
                await __import__("asyncio").sleep(0.1)
            assert child, f"{kind}/{name} was not created"
            assert child["metadata"]["ownerReferences"][0]["uid"] == owner["metadata"]["uid"]
            assert child["metadata"]["labels"]["kubetune.io/finetunejob"] == "two-node"

        async def phase() -> str | None:
            got = await get("ftj", "two-node")
            return ((got or {}).get("status") or {}).get("phase")

        for _ in range(200):
            if await phase() in ("Pending", "Running"):
                break
            await __import__("asyncio").sleep(0.1)
        assert await phase() in ("Pending", "Running")
    finally:
        await kubectl("delete", "ftj", "two-node", "--wait=false")
