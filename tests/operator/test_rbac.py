"""rbac.RULES is exact: every API request the operator makes in a full lifecycle is allowed by it,
and every rule (but the HA-only peering one) is used."""

from __future__ import annotations

from typing import Any

from kubetune.operator import rbac
from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import eventually
from tests.operator.test_lifecycle import NS, ftj, status


def verb(request: Any) -> str:
    method = request.method.value.lower()
    if method == "get":
        if request.params.get("watch", "").lower() in ("true", "1"):
            return "watch"
        return "get" if request.name else "list"
    return {"post": "create", "patch": "patch", "put": "update", "delete": "delete"}[method]


async def test_every_request_is_allowed_by_the_rules(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create("v1/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "hf", "namespace": NS}})
    kube_api.create(FTJ, ftj("up", model={"source": "hf://a/b", "credentialsSecret": "hf"}, suspend=True))
    kube_api.create(FTJ, ftj("down", model={"source": "hf://a/b", "adapter": {"fromJob": "up"}}))
    await eventually(lambda: status(kube_api, "up").get("phase") == "Suspended")
    kube_api.update(FTJ, NS, "up", {"spec": {"suspend": False}})
    await eventually(lambda: status(kube_api, "up").get("phase") == "Running")
    cluster.finish("up", 0)
    cluster.finish("up", 1)
    await eventually(lambda: status(kube_api, "down").get("phase") == "Running")
    kube_api.delete(FTJ, NS, "down")
    await eventually(lambda: kube_api.get(FTJ, NS, "down") is None)

    used: set[tuple[str, str, str]] = set()
    for request in kube_api:
        if request.resource is None or not request.resource.plural:
            continue  # discovery
        resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
        key = (request.resource.group, resource, verb(request))
        assert rbac.allows(*key), f"the operator made a request its ClusterRole does not allow: {key}"
        used.add(key)
    granted = {
        (g, r, v) for rule in rbac.RULES for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]
    }
    unused = {k for k in granted - used if k[0] != "kopf.dev"}
    # namespaces are watched by kopf only with namespace patterns; the CRD watch is kopf's resource discovery;
    # a Job is read only when the status names one the Job watch has not delivered yet (a lagging watch);
    # FineTuneJobs are patched only with peering (kopf's finalizer for its per-object timers); update of
    # finetunejobs/finalizers is never requested: OwnerReferencesPermissionEnforcement checks it when a child
    # with blockOwnerDeletion is created; children are read (and a ConfigMap patched) only after a 409; a
    # pod's Warning Events are listed only while it is stuck being created
    rare = {
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("batch", "jobs", "get"),
        ("kubetune.io", "finetunejobs", "patch"),
        ("kubetune.io", "finetunejobs/finalizers", "update"),
        ("", "configmaps", "get"),
        ("", "configmaps", "patch"),
        ("", "services", "get"),
        ("", "events", "list"),
    }
    assert unused <= rare, f"rules granted but never used: {sorted(unused)}"
