"""The chart's RBAC is exactly what the operator uses (kubetune.operator.rbac.RULES): no more, no less,
no wildcard, in cluster-wide and namespace-scoped mode, with and without kopf peering."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator.rbac import RULES
from tests.chart.helm import NAMESPACE, find, one, template

PEERING = {("kopf.dev", "clusterkopfpeerings"), ("kopf.dev", "kopfpeerings")}
CLUSTER_SCOPED = {
    ("", "namespaces"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("kopf.dev", "clusterkopfpeerings"),
}


def _triples(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}


def _expected(peering_resource: str | None) -> set[tuple[str, str, str]]:
    """RULES, keeping only the kopf peering kind this install uses (none when standalone)."""
    return {t for t in _triples(RULES) if (t[0], t[1]) not in PEERING or t[1] == peering_resource}


MODES = {
    # name: (values, peering resource in use, namespaces with a Role)
    "cluster-standalone": ({}, None, []),
    "cluster-peering": ({"replicaCount": 2}, "clusterkopfpeerings", []),
    "namespaced-standalone": ({"watch": {"allNamespaces": False, "namespaces": ["a", "b"]}}, None, ["a", "b"]),
    "namespaced-peering": (
        {"replicaCount": 3, "watch": {"allNamespaces": False, "namespaces": ["a"]}},
        "kopfpeerings",
        ["a"],
    ),
}


@pytest.fixture(scope="module", params=sorted(MODES))
def mode(request):
    values, peering, namespaces = MODES[request.param]
    return template(values), peering, namespaces


def test_rbac_grants_exactly_the_operator_rules(mode):
    objs, peering, namespaces = mode
    cluster = _triples(one(objs, "ClusterRole")["rules"])
    roles = find(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == namespaces
    granted = cluster | {t for role in roles for t in _triples(role["rules"])}
    expected = _expected(peering)
    assert granted == expected, f"missing: {sorted(expected - granted)}; extra: {sorted(granted - expected)}"
    for role in roles:
        # every watched namespace gets every namespaced rule
        assert _triples(role["rules"]) == {t for t in expected if (t[0], t[1]) not in CLUSTER_SCOPED}
    if namespaces:
        assert {(t[0], t[1]) for t in cluster} <= CLUSTER_SCOPED, "namespace mode leaks namespaced rules cluster-wide"


def test_no_wildcards_anywhere(mode):
    objs, _, _ = mode
    for role in find(objs, "ClusterRole") + find(objs, "Role"):
        for rule in role["rules"]:
            for key in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule.get(key, []), f"{role['kind']} {role['metadata']['name']}: {key} has '*'"
            assert "nonResourceURLs" not in rule and "resourceNames" not in rule


def test_no_escalating_verbs_or_secret_reads_beyond_get(mode):
    objs, _, _ = mode
    granted = set().union(*(_triples(r["rules"]) for r in find(objs, "ClusterRole") + find(objs, "Role")))
    assert not {t for t in granted if t[2] in ("escalate", "bind", "impersonate")}
    assert {t for t in granted if t[1] == "secrets"} == {("", "secrets", "get")}


def test_bindings_point_at_the_operator_service_account(mode):
    objs, _, namespaces = mode
    sa = one(objs, "ServiceAccount")["metadata"]
    for binding in find(objs, "ClusterRoleBinding") + find(objs, "RoleBinding"):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["name"], "namespace": NAMESPACE}]
        kind = "ClusterRole" if binding["kind"] == "ClusterRoleBinding" else "Role"
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": sa["name"]}
    assert len(find(objs, "RoleBinding")) == len(namespaces)
