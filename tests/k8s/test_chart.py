"""The chart and the examples against the real API server: `helm install`, `helm upgrade` (one replica →
two: the peering hook object churns), `helm uninstall` (the CRDs stay: helm.sh/resource-policy keep), and
every examples/*.yaml accepted by a server-side dry run with strict field validation."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.chart.helm import CHART, ensure_helm
from tests.harness.realcluster import FTJ, ROOT, K8s

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def helm(k8s: K8s, *args: str) -> str:
    proc = subprocess.run(
        [str(ensure_helm()), f"--kubeconfig={k8s.cp.admin_kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"helm {' '.join(args[:2])} failed:\n{proc.stderr}\n{proc.stdout[-2000:]}"
    return proc.stdout


async def test_helm_install_upgrade_uninstall(k8s: K8s) -> None:
    release = "kt-chart"
    common = (
        "--namespace",
        k8s.ns,
        "--set-json",
        f'peering.name="{release}-{k8s.ns}"',
        "--set-json",
        'image.repository="registry.test/kubetune-operator"',
        "--take-ownership",
        "--wait",
        "--timeout",
        "180s",
    )
    # the CRDs exist already (the session applied crds/): helm takes them over; the real server validates them
    await asyncio.to_thread(helm, k8s, "install", release, str(CHART), *common)
    deploy = k8s.get("apps/v1/deployments", f"{release}-kubetune")
    assert deploy is not None and deploy["status"].get("readyReplicas") == 1, deploy and deploy["status"]
    role = k8s.api.get("rbac.authorization.k8s.io/v1/clusterroles", None, f"{release}-kubetune")
    assert role is not None
    sa = k8s.get("v1/serviceaccounts", f"{release}-kubetune")
    assert sa is not None and sa["automountServiceAccountToken"] is False
    # the operator pod is on a kwok node (no container runs); its spec is what the real server accepted
    pods = k8s.api.list("v1/pods", k8s.ns, labels="app.kubernetes.io/instance=" + release)
    assert pods and all(p["status"]["phase"] == "Running" for p in pods)

    # upgrade to two replicas: peering on; the post-upgrade hook (re)creates the ClusterKopfPeering
    await asyncio.to_thread(helm, k8s, "upgrade", release, str(CHART), *common, "--set", "replicaCount=2")
    peering = k8s.api.get("kopf.dev/v1/clusterkopfpeerings", None, f"{release}-{k8s.ns}")
    assert peering is not None, "the post-upgrade hook created the peering object"
    await k8s.wait(
        lambda: (
            (k8s.get("apps/v1/deployments", f"{release}-kubetune") or {}).get("status", {}).get("readyReplicas") == 2
        )
    )
    history = json.loads(await asyncio.to_thread(helm, k8s, "history", release, "-n", k8s.ns, "-o", "json"))
    assert [h["status"] for h in history] == ["superseded", "deployed"]
    # a second upgrade with the same values: the hook object churns (deleted, re-created), nothing fails
    await asyncio.to_thread(helm, k8s, "upgrade", release, str(CHART), *common, "--set", "replicaCount=2")
    assert k8s.api.get("kopf.dev/v1/clusterkopfpeerings", None, f"{release}-{k8s.ns}") is not None

    k8s.create(k8s.ftj("survivor"))
    await asyncio.to_thread(helm, k8s, "uninstall", release, "--namespace", k8s.ns, "--wait", "--timeout", "120s")
    await k8s.wait(lambda: k8s.get("apps/v1/deployments", f"{release}-kubetune") is None)
    assert k8s.api.get("rbac.authorization.k8s.io/v1/clusterroles", None, f"{release}-kubetune") is None
    crd = k8s.api.get("apiextensions.k8s.io/v1/customresourcedefinitions", None, "finetunejobs.kubetune.io")
    assert crd is not None, "helm uninstall must not delete the CRD (and every FineTuneJob with it)"
    assert k8s.get(FTJ, "survivor") is not None
    # the session's own RBAC (release "kubetune") still works for the other tests
    assert k8s.api.get("rbac.authorization.k8s.io/v1/clusterroles", None, "kubetune") is not None


def example_ids() -> list[str]:
    return [p.name for p in EXAMPLES]


@pytest.mark.parametrize("example", EXAMPLES, ids=example_ids())
async def test_example_is_accepted_by_the_api_server(k8s: K8s, example: Path, request: pytest.FixtureRequest) -> None:
    kinds = {d.get("kind") for d in yaml.safe_load_all(example.read_text()) if d}
    if kinds & {"ClusterQueue", "LocalQueue", "ResourceFlavor"}:
        request.getfixturevalue("kueue")  # Kueue's CRDs (and its conversion webhook) must be installed
    out = await k8s.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", str(example), check=False)
    warnings = [line for line in out.splitlines() if line.lower().startswith("warning")]
    # Kueue v0.17 serves the example's kueue.x-k8s.io/v1beta1 (what Kueue v0.9-v0.14 clusters have) with a
    # deprecation warning; any other warning (an unknown or duplicate field) fails
    assert "error" not in out.lower() and all("is deprecated" in w for w in warnings), out
    names = [
        d["metadata"]["name"] for d in yaml.safe_load_all(example.read_text()) if d and d.get("kind") == "FineTuneJob"
    ]
    assert names and all(f"finetunejob.kubetune.io/{n} created (server dry run)" in out for n in names), out
