"""The exact API rules the operator uses: the chart's ClusterRole must grant these (a test checks).

Every verb here is used by :mod:`kubetune.operator.kube` or by kopf itself; nothing more.
The training pods get no API access at all (``automountServiceAccountToken: false``):
progress is pulled by the operator from the rank-0 pod's metrics endpoint.
"""

from __future__ import annotations

from kubetune.api.v1alpha1 import GROUP, PLURAL

RULES: list[dict[str, list[str]]] = [
    # the FineTuneJobs: watched by kopf (and indexed: upstream jobs are looked up there); patched only with
    # peering, for the finalizer kopf puts on objects with per-object timers; the status through /status; read
    # once before its children are created (a watch that lags may still list a FineTuneJob already deleted)
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["get", "list", "watch", "patch"]},
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/status"], "verbs": ["patch"]},
    # the children's owner references set blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement
    # admission plugin (OpenShift and others) allows only to who may update the owner's finalizers
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
    # children: created once; on a 409 the existing one is read to check its owner (an earlier FineTuneJob of the
    # same name leaves children until the garbage collector runs); a ConfigMap of ours built from an older spec
    # (its Job was refused, then the spec changed) is patched. Deleted by the garbage collector through
    # ownerReferences, not by the operator. Jobs are watched (kopf index + event trigger), read when the
    # index has not seen a new one yet, and patched to (un)suspend them and record their spec hash
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create", "get", "patch"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get"]},
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch", "create", "patch"]},
    # pods, watched: restarts, termination messages, the rank-0 pod's IP for progress
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list", "watch"]},
    # existence check of the credential Secrets named in the spec (values are never read into status or logs)
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]},
    # Events for phase changes and rejections (kopf posts core/v1 Events); a pending pod's Warning Events are
    # listed to explain it (the kubelet reports a failed mount only there)
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "list"]},
    # kopf: CRDs watched for resource discovery; namespaces watched only for glob patterns in --namespace
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
    # kopf peering (HA: several replicas, one acts); unused with --standalone
    {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings", "kopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    },
]


def allows(group: str, resource: str, verb: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"] for r in RULES)
