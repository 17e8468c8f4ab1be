"""HA on the real API server: two `kubetune operator` processes share a kopf peering object; only the one
with the highest priority acts. Each replica has its own token of the chart's ServiceAccount; the API
server's audit log tells their requests apart by the token's credential id (its JTI)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from pathlib import Path

import yaml

from tests.harness.realcluster import OPERATOR_NS, OPERATOR_SA, OPERATOR_USER, K8s, chart_objects, kubeconfig

BIN = Path(sys.executable).parent
CREDENTIAL_ID = "authentication.kubernetes.io/credential-id"


def jti(token: str) -> str:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["jti"]


async def replica(k8s: K8s, tmp_path: Path, name: str, priority: int) -> tuple[asyncio.subprocess.Process, str]:
    token = (await k8s.kubectl("create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=2h")).strip()
    path = tmp_path / f"{name}.kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig(k8s.cp.server, k8s.cp.ca_file, token, name)))
    env = {**os.environ, "KUBECONFIG": str(path), "KUBETUNE_HEALTH_PORT": "0"}
    log = open(tmp_path / f"{name}.log", "wb")  # noqa: SIM115, ASYNC230 - lives as long as the process
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "kubetune"),
        "operator",
        "--namespace",
        k8s.ns,
        "--peering",
        "kubetune",
        "--peering-priority",
        str(priority),
        "--metrics-port",
        "0",
        "--sync-interval",
        "1",
        env=env,
        stdout=log,
        stderr=asyncio.subprocess.STDOUT,
    )
    return proc, f"JTI={jti(token)}"


def acts(k8s: K8s, mark: int, credential: str) -> int:
    """Writes by one replica, kopf's own peering heartbeats aside (children, status, Events)."""
    return sum(
        1
        for e in k8s.cp.audit(mark, user=OPERATOR_USER)
        if credential in (e["user"].get("extra") or {}).get(CREDENTIAL_ID, [])
        and e["verb"] in ("create", "patch", "update", "delete")
        and (e.get("objectRef") or {}).get("apiGroup") != "kopf.dev"
    )


async def test_only_the_highest_priority_replica_acts(k8s: K8s, tmp_path: Path) -> None:
    # the chart's namespaced HA profile: a Role in the watched namespace that grants kopf's namespaced peering
    roles = chart_objects(
        ("Role", "RoleBinding"), {"watch": {"allNamespaces": False, "namespaces": [k8s.ns]}, "replicaCount": 2}
    )
    assert any(r["kind"] == "Role" and any("kopfpeerings" in rule["resources"] for rule in r["rules"]) for r in roles)
    (tmp_path / "roles.yaml").write_text(yaml.safe_dump_all(roles))
    await k8s.kubectl("apply", "-f", str(tmp_path / "roles.yaml"))
    k8s.create(
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "kubetune"}},
        "kopf.dev/v1/kopfpeerings",
    )
    mark = k8s.cp.audit_mark()
    low, low_id = await replica(k8s, tmp_path, "low", 10)
    high, high_id = await replica(k8s, tmp_path, "high", 20)
    try:
        peers = await k8s.wait(
            lambda: (
                len((k8s.get("kopf.dev/v1/kopfpeerings", "kubetune") or {}).get("status") or {}) == 2
                and k8s.get("kopf.dev/v1/kopfpeerings", "kubetune")["status"]
            ),
            timeout=120,
        )
        assert sorted(p["priority"] for p in peers.values()) == [10, 20]
        k8s.create(k8s.ftj("ha"))
        await k8s.wait(lambda: k8s.status("ha").get("phase") == "Running", timeout=120)
        k8s.finish("ha", 0)
        k8s.finish("ha", 1)
        await k8s.wait(lambda: k8s.status("ha").get("phase") == "Succeeded", timeout=120)
        assert acts(k8s, mark, high_id) >= 4, (
            "the replica with the highest priority creates the children and the status"
        )
        assert acts(k8s, mark, low_id) == 0, "the paused replica must not reconcile"
        # the acting replica dies: the other one takes over once the peer entry expires
        high.send_signal(signal.SIGKILL)
        await high.wait()
        k8s.create(k8s.ftj("takeover", resources={"nodes": 1, "gpusPerNode": 1}))
        await k8s.wait(lambda: k8s.status("takeover").get("phase") == "Running", timeout=180)
        assert acts(k8s, mark, low_id) >= 1
    finally:
        for name in ("low", "high"):
            print(f"== {name}.log", (tmp_path / f"{name}.log").read_text(errors="replace")[-3000:])
        for proc in (low, high):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 20)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
