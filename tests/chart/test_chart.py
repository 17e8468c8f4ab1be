"""charts/kubetune rendered by the real helm 3.19.0: lint, strict values schema, Kubernetes schemas
(kubernetes-validate, strict, 1.30 and 1.37), operator flags, peering and namespace modes, CRD flags,
Pod Security "restricted", NOTES."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.api.crdgen import build_crd
from kubetune.api.metrics import DEFAULT_METRICS_PORT, OPERATOR_METRICS_PORT
from kubetune.operator import settings as op_settings
from kubetune.operator.manifests.labels import COMPONENT_LABEL, MANAGED_BY, TRAINER
from kubetune.operator.manifests.names import job_name
from tests.chart.helm import CHART, NAMESPACE, find, helm, one, set_args, template
from tests.chart.podsecurity import pod_spec_of, violations
from tests.chart.values_cases import CASES, FULL

KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]
# Custom resources kubernetes-validate has no schema for (kubetune's own CRs, kopf peering objects,
# prometheus-operator objects); their CRDs themselves are validated.
CUSTOM_GROUPS = {"kubetune.io", "kopf.dev", "monitoring.coreos.com"}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: template(values) for name, values in CASES.items()}


def _deployment(objs):
    return one(objs, "Deployment")


def _container(objs):
    return _deployment(objs)["spec"]["template"]["spec"]["containers"][0]


# ------------------------------------------------------------------------------------------ helm lint / schema


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_lint_strict(case):
    proc = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE, *set_args(CASES[case]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "additional properties 'bogus' not allowed"),
        ({"monitoring": {"serviceMonitor": {"enabeld": True}}}, "additional properties 'enabeld' not allowed"),
        ({"replicaCount": 0}, "/replicaCount"),
        ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
        ({"storage": {"defaultOutputUri": "ftp://host/path"}}, "/storage/defaultOutputUri"),
        ({"watch": {"namespaces": ["Not_A_Namespace"]}}, "/watch/namespaces/0"),
        ({"monitoring": {"serviceMonitor": {"interval": "often"}}}, "/monitoring/serviceMonitor/interval"),
    ],
    ids=[
        "unknown-top-key",
        "unknown-nested-key",
        "zero-replicas",
        "bad-enum",
        "bad-uri",
        "bad-namespace",
        "bad-interval",
    ],
)
def test_values_schema_rejects(values, message):
    proc = helm("template", "kubetune", str(CHART), *set_args(values))
    assert proc.returncode != 0, f"helm accepted {values}"
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert message in proc.stderr, proc.stderr


def _leaf_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return {p for k, v in node.items() for p in _leaf_paths(v, f"{prefix}.{k}" if prefix else k)}
    return {prefix}


def _schema_paths(schema: dict[str, Any], prefix: str = "") -> set[str]:
    props = schema.get("properties")
    if schema.get("additionalProperties") is False and props:
        return {p for k, v in props.items() for p in _schema_paths(v, f"{prefix}.{k}" if prefix else k)}
    return {prefix}


def test_values_yaml_and_schema_describe_the_same_keys():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    in_values = _leaf_paths(values)
    in_schema = _schema_paths(schema) - {"global"}
    # A free-form map (e.g. resources, nodeSelector) is one leaf in the schema and may have children in values.
    undescribed = {p for p in in_values if not any(p == s or p.startswith(s + ".") for s in in_schema)}
    assert not undescribed, f"values.yaml keys the schema does not know: {sorted(undescribed)}"
    missing = {s for s in in_schema if not any(p == s or p.startswith(s + ".") for p in in_values)}
    assert not missing, f"schema keys without a default in values.yaml: {sorted(missing)}"


def test_every_value_is_documented():
    """Each value the schema names (a leaf, or a free-form map) has a `# --` comment block right above it."""
    schema_paths = _schema_paths(json.loads((CHART / "values.schema.json").read_text()))
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)([A-Za-z_][\w-]*):", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m.group(2)))
        path = ".".join(k for _, k in stack)
        comment = []
        j = i - 1
        while j >= 0 and lines[j].strip().startswith("#"):
            comment.insert(0, lines[j].strip())
            j -= 1
        if path in schema_paths and not (comment and comment[0].startswith("# --")):
            undocumented.append(f"values.yaml:{i + 1}: {path}")
    assert not undocumented, undocumented


# ------------------------------------------------------------------------------------------ Kubernetes schemas


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_rendered_objects_validate_strictly(rendered, case, version):
    objs = rendered[case]
    checked = 0
    for obj in objs:
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        if group in CUSTOM_GROUPS:
            continue
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(
                f"{case}: {where} is invalid for Kubernetes {version} at {list(exc.absolute_path)}: {exc.message}"
            )
        checked += 1
    assert checked >= 1


def test_kubernetes_validate_catches_a_bad_field(rendered):
    """The validation above can fail: a misspelt field in the rendered Deployment is rejected."""
    deployment = json.loads(json.dumps(_deployment(rendered["default"])))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_every_object_has_the_chart_labels(rendered):
    for obj in rendered["full"]:
        labels = obj["metadata"].get("labels", {})
        if obj["kind"] == "CustomResourceDefinition" and obj["metadata"]["name"] == "finetunejobs.kubetune.io":
            continue  # generated; labelled by crdgen
        assert labels.get("app.kubernetes.io/instance") == "kubetune", obj["metadata"]["name"]
        assert labels.get("team") == "ml-platform", obj["metadata"]["name"]


# ------------------------------------------------------------------------------------------ operator Deployment


def _parse_operator_args(args: list[str]) -> op_settings.OperatorSettings:
    parser = argparse.ArgumentParser(prog="kubetune operator", exit_on_error=False)
    op_settings.add_arguments(parser)
    return op_settings.from_args(parser.parse_args(args))


def test_default_deployment_runs_the_real_operator_flags(rendered):
    container = _container(rendered["default"])
    assert container["image"] == "ghcr.io/kubetune/kubetune-operator:0.1.0"
    settings = _parse_operator_args(container["args"])
    assert settings.namespaces == []
    assert settings.standalone is True
    assert settings.metrics_port == OPERATOR_METRICS_PORT
    assert settings.health_port == 8081
    assert settings.trainer_image == "ghcr.io/kubetune/kubetune-trainer:0.1.0"
    assert settings.gpu_resource == "nvidia.com/gpu"
    assert settings.trainer_metrics_port == DEFAULT_METRICS_PORT
    assert settings.default_output_uri is None
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": settings.metrics_port, "health": settings.health_port}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}


def test_non_default_values_reach_the_operator(rendered):
    objs = rendered["full"]
    container = _container(objs)
    settings = _parse_operator_args(container["args"])
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.standalone is False and settings.peering == "kubetune-ha"
    assert (settings.metrics_port, settings.health_port, settings.sync_interval) == (9090, 9091, 5.0)
    assert settings.trainer_image == "registry.example.com/kubetune-trainer:0.1.0-cu124"
    assert settings.gpu_resource == "amd.com/gpu"
    assert settings.trainer_metrics_port == 9500
    assert settings.default_output_uri == "s3://ml-artifacts/kubetune"
    assert container["image"] == "registry.example.com/kubetune-operator@sha256:" + "a" * 64
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBETUNE_DEFAULT_CREDENTIALS_SECRET"]["value"] == "kubetune-s3"
    assert env["TZ"]["value"] == "UTC"
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    service = find(objs, "Service")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    pod = _deployment(objs)["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]


def test_every_kubetune_env_var_is_an_operator_flag(rendered):
    """KUBETUNE_<FLAG> variables the chart sets must be flags `kubetune operator` reads."""
    parser = argparse.ArgumentParser()
    op_settings.add_arguments(parser)
    flags = {a.dest.upper() for a in parser._actions}
    env = [e["name"] for e in _container(rendered["full"])["env"] if e["name"].startswith("KUBETUNE_")]
    unknown = [name for name in env if name.removeprefix("KUBETUNE_") not in flags]
    assert not unknown


def test_single_replica_is_standalone_and_never_overlaps(rendered):
    objs = rendered["default"]
    deployment = _deployment(objs)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert "--standalone" in _container(objs)["args"]
    assert not [
        o for o in objs if o["apiVersion"].startswith("kopf.dev/") or o["metadata"]["name"].endswith("kopf.dev")
    ]


def test_replicas_share_a_cluster_peering():
    objs = template({"replicaCount": 2})
    settings = _parse_operator_args(_container(objs)["args"])
    assert settings.standalone is False and settings.peering == "kubetune" and settings.namespaces == []
    assert _deployment(objs)["spec"]["strategy"]["type"] == "RollingUpdate"
    peering = one(objs, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "kubetune"
    assert "post-install" in peering["metadata"]["annotations"]["helm.sh/hook"]
    crds = {o["metadata"]["name"] for o in find(objs, "CustomResourceDefinition")}
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev", "finetunejobs.kubetune.io"} <= crds


def test_replicas_share_a_peering_per_watched_namespace(rendered):
    objs = rendered["full"]
    peerings = find(objs, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {"kubetune-ha"}
    assert not find(objs, "ClusterKopfPeering")


def test_namespace_scoped_mode_grants_roles_only_where_watched(rendered):
    objs = rendered["full"]
    roles = find(objs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    bindings = find(objs, "RoleBinding")
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kubetune", "namespace": NAMESPACE}]
    cluster_role = one(objs, "ClusterRole")
    cluster_resources = {r for rule in cluster_role["rules"] for r in rule["resources"]}
    assert not cluster_resources & {"finetunejobs", "jobs", "pods", "secrets", "configmaps"}, cluster_resources


def test_watching_only_the_release_namespace():
    objs = template({"watch": {"allNamespaces": False}})
    assert _parse_operator_args(_container(objs)["args"]).namespaces == [NAMESPACE]
    assert [r["metadata"]["namespace"] for r in find(objs, "Role")] == [NAMESPACE]


def test_minimal_install_creates_only_the_deployment(rendered):
    objs = rendered["minimal"]
    assert sorted(o["kind"] for o in objs) == ["Deployment"]
    pod = _deployment(objs)["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing-operator-sa"
    assert "livenessProbe" not in pod["containers"][0]


def test_network_policy_matches_the_operator_and_trainer_pods(rendered):
    objs = rendered["full"]
    policy = one(objs, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == _deployment(objs)["spec"]["selector"]["matchLabels"]
    trainer_rule = policy["spec"]["egress"][-1]
    assert trainer_rule["to"][0]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/managed-by": MANAGED_BY,
        COMPONENT_LABEL: TRAINER,
    }
    assert trainer_rule["ports"] == [{"port": 9500, "protocol": "TCP"}]
    assert policy["spec"]["ingress"][0]["from"] == FULL["networkPolicy"]["metricsFrom"]


def test_pod_disruption_budget_selects_the_operator(rendered):
    objs = rendered["full"]
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == _deployment(objs)["spec"]["selector"]["matchLabels"]
    pdb = one(template({"podDisruptionBudget": {"enabled": True, "maxUnavailable": 1}}), "PodDisruptionBudget")
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": pdb["spec"]["selector"]}


# ------------------------------------------------------------------------------------------ CRD


def test_crd_is_the_generated_one_and_kept_on_uninstall(rendered):
    crd = find(rendered["default"], "CustomResourceDefinition", "finetunejobs.kubetune.io")[0]
    assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert crd["spec"] == build_crd()["spec"]


def test_crd_flags(rendered):
    crd = find(rendered["full"], "CustomResourceDefinition", "finetunejobs.kubetune.io")[0]
    assert "annotations" not in crd["metadata"]
    assert not find(rendered["minimal"], "CustomResourceDefinition")


# ------------------------------------------------------------------------------------------ Pod Security


@pytest.mark.parametrize("case", sorted(CASES))
def test_operator_pods_meet_pod_security_restricted(rendered, case):
    pods = [(o["metadata"]["name"], pod_spec_of(o)) for o in rendered[case] if pod_spec_of(o) is not None]
    assert pods
    for name, pod in pods:
        assert violations(pod) == [], name


def test_pod_security_check_catches_violations(rendered):
    pod = json.loads(json.dumps(pod_spec_of(_deployment(rendered["default"]))))
    pod["hostNetwork"] = True
    pod["securityContext"] = {"runAsUser": 0}
    container = pod["containers"][0]
    container["securityContext"] = {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]}}
    container["ports"][0]["hostPort"] = 8080
    pod["volumes"].append({"name": "host", "hostPath": {"path": "/"}})
    found = "\n".join(violations(pod))
    for expected in (
        "hostNetwork",
        "runAsUser must not be 0",
        "privileged",
        "allowPrivilegeEscalation",
        "drop must contain ALL",
        "SYS_ADMIN",
        "runAsNonRoot",
        "seccompProfile",
        "hostPort",
        "hostPath",
        "readOnlyRootFilesystem",
    ):
        assert expected in found, expected


def test_service_account_token_is_mounted_only_in_the_operator_pod(rendered):
    objs = rendered["default"]
    assert one(objs, "ServiceAccount")["automountServiceAccountToken"] is False
    assert _deployment(objs)["spec"]["template"]["spec"]["automountServiceAccountToken"] is True


# ------------------------------------------------------------------------------------------ NOTES


def _render_notes(tmp_path: Path, values: dict[str, Any]) -> str:
    """NOTES.txt is not printed by `helm template`: render a copy of the chart with it wrapped in a ConfigMap."""
    chart = tmp_path / "kubetune"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "NOTES.txt").unlink()
    (chart / "templates" / "_notes.tpl").write_text('{{- define "notes" -}}\n' + notes + "{{- end }}\n")
    (chart / "templates" / "notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\ndata:\n  notes: {{ include "notes" . | quote }}\n'
    )
    objs = template(values, "--show-only", "templates/notes.yaml", chart=chart)
    return objs[0]["data"]["notes"]


def test_notes_tell_how_to_submit_and_watch_a_job(tmp_path):
    notes = _render_notes(tmp_path, {})
    assert "kubectl apply -f examples/qlora.yaml" in notes
    assert "kubectl get ftj -w" in notes
    assert f"kubectl logs -f job/{job_name('<name>')} " in notes  # the operator names the Job after the FineTuneJob
    assert "all namespaces" in notes
    assert "must set\nspec.output.uri" in notes
    notes = _render_notes(tmp_path / "full", FULL)
    assert "team-a, team-b" in notes
    assert "s3://ml-artifacts/kubetune/<namespace>/<name>" in notes
    assert 'Secret "kubetune-s3"' in notes
    assert 'peering "kubetune-ha"' in notes
