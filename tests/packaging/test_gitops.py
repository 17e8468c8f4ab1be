"""GitOps: the Argo CD health check (docs/argocd/health.lua, run by lupa's Lua 5.1 like Argo's gopher-lua)
on statuses the operator's own pure reconcile code writes; kstatus reading of the same statuses; and a
re-applied, server-defaulted spec that must not look changed (so it never retrains)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from kubetune.api.crdgen import build_crd
from kubetune.api.v1alpha1 import FineTuneJobStatus
from kubetune.operator.manifests import BuildOptions
from kubetune.operator.reconcile import decide, parse

ROOT = Path(__file__).resolve().parents[2]
HEALTH_LUA = ROOT / "docs" / "argocd" / "health.lua"
GOLDEN = ROOT / "tests" / "operator" / "golden"
OPTIONS = BuildOptions(trainer_image="ghcr.io/kubetune/kubetune-trainer:0.1.0")
AT = "2026-01-01T00:00:00Z"


def argocd_health(obj: dict[str, Any]) -> dict[str, str]:
    """Run the health script the way Argo CD does: `obj` global, the script's returned table."""
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = lua.eval("function() " + HEALTH_LUA.read_text() + "\nend")()
    return dict(result)


def kstatus(obj: dict[str, Any]) -> str:
    """kstatus' generic rules for custom resources (sigs.k8s.io/cli-utils/pkg/kstatus), as Flux applies them:
    stale observedGeneration or Reconciling=True -> InProgress; Stalled=True -> Failed; else Current."""
    status = obj.get("status") or {}
    generation = obj["metadata"].get("generation")
    if generation is not None and status.get("observedGeneration", -1) < generation:
        return "InProgress"
    conditions = {c["type"]: c["status"] for c in status.get("conditions") or []}
    if conditions.get("Reconciling") == "True":
        return "InProgress"
    if conditions.get("Stalled") == "True":
        return "Failed"
    return "Current"


# --------------------------------------------------------------------------------- statuses from the operator


def _ftj(**spec_changes: Any) -> dict[str, Any]:
    body = {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "sft-demo", "namespace": "ml", "generation": 1, "uid": "u-1"},
        "spec": {
            "stage": "sft",
            "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "datasets": [{"name": "identity", "source": "s3://data/identity.json"}],
            "output": {"uri": "s3://artifacts/sft-demo"},
        },
    }
    body["spec"].update(spec_changes)
    return body


def _job(body: dict[str, Any], *, conditions=(), active=0, suspend=False, spec_hash=None) -> dict[str, Any]:
    parsed = parse(body, OPTIONS)
    return {
        "metadata": {"name": parsed.job_name, "annotations": {"kubetune.io/spec-hash": spec_hash or parsed.spec_hash}},
        "spec": {"parallelism": 1, "suspend": suspend},
        "status": {
            "active": active,
            "conditions": [{"type": t, "status": "True", **extra} for t, extra in conditions],
        },
    }


RUNNING_POD = {
    "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
    "status": {"phase": "Running"},
}
FAILED_POD = {
    "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
    "status": {
        "phase": "Failed",
        "containerStatuses": [
            {"state": {"terminated": {"exitCode": 4, "message": "dataset identity: no valid rows"}}}
        ],
    },
}


def _status(body: dict[str, Any], **observed: Any) -> dict[str, Any]:
    """The whole status the operator's reconcile.decide writes for these observations."""
    parsed = parse(body, OPTIONS)
    decision = decide(body, parsed, OPTIONS, at=AT, **observed)
    FineTuneJobStatus.model_validate(decision.status)  # the operator writes what the CRD describes
    return {**body, "status": decision.status}


def _scenarios() -> dict[str, tuple[dict[str, Any], str, str]]:
    """name -> (FineTuneJob with status, Argo CD health, kstatus)."""
    out: dict[str, tuple[dict[str, Any], str, str]] = {}
    body = _ftj()
    out["created"] = (_status(body, job=None), "Progressing", "InProgress")
    out["pods-pending"] = (_status(body, job=_job(body)), "Progressing", "InProgress")
    running = _status(body, job=_job(body, active=1), pods=[RUNNING_POD])
    running["status"]["progress"] = {"step": 30, "totalSteps": 120, "percent": 25.0, "loss": 1.2345, "eta": "3m10s"}
    out["running"] = (running, "Progressing", "InProgress")
    out["succeeded"] = (_status(body, job=_job(body, conditions=[("Complete", {})])), "Healthy", "Current")
    out["failed"] = (
        _status(body, job=_job(body, conditions=[("Failed", {"reason": "PodFailurePolicy"})]), pods=[FAILED_POD]),
        "Degraded",
        "Failed",
    )
    out["deadline"] = (
        _status(body, job=_job(body, conditions=[("Failed", {"reason": "DeadlineExceeded"})])),
        "Degraded",
        "Failed",
    )
    invalid = _ftj(method={"type": "lora", "lora": {"rank": 0}})
    out["invalid-spec"] = (_status(invalid, job=None), "Degraded", "Failed")
    suspended = _ftj(suspend=True)
    out["suspended-before-start"] = (_status(suspended, job=None), "Suspended", "Current")
    out["suspended-running"] = (_status(suspended, job=_job(suspended, suspend=True)), "Suspended", "Current")
    queued = _ftj(queueName="team-a")
    out["queued-for-kueue"] = (_status(queued, job=_job(queued, suspend=True)), "Progressing", "InProgress")
    out["spec-changed-while-running"] = (
        _status(body, job=_job(body, active=1, spec_hash="0123456789abcdef"), pods=[RUNNING_POD]),
        "Degraded",
        "Failed",
    )
    waiting = _ftj(model={"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "adapter": {"fromJob": "sft-base"}})
    out["waiting-for-upstream"] = (
        _status(waiting, job=None, upstream={"sft-base": None}),
        "Progressing",
        "InProgress",
    )
    out["secret-missing"] = (
        _status(_ftj(output={"uri": "s3://bkt/b", "credentialsSecret": "s3"}), job=None, missing_secrets=["s3"]),
        "Progressing",
        "InProgress",
    )
    stale = copy.deepcopy(out["succeeded"][0])
    stale["metadata"]["generation"] = 2
    out["new-generation-not-observed"] = (stale, "Progressing", "InProgress")
    out["no-status-yet"] = (_ftj(), "Progressing", "InProgress")
    return out


SCENARIOS = _scenarios()


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_argocd_health_from_operator_status(name):
    obj, health, _ = SCENARIOS[name]
    result = argocd_health(obj)
    assert result["status"] == health, f"{name}: {result} for status {json.dumps(obj.get('status'))[:600]}"
    assert result.get("message"), name


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_kstatus_reads_the_same_statuses(name):
    obj, _, expected = SCENARIOS[name]
    assert kstatus(obj) == expected


def test_health_messages_carry_the_reason():
    assert "dataset identity: no valid rows" in argocd_health(SCENARIOS["failed"][0])["message"]
    assert "InvalidSpec" in argocd_health(SCENARIOS["invalid-spec"][0])["message"]
    assert "SpecChangedAfterStart" in argocd_health(SCENARIOS["spec-changed-while-running"][0])["message"]
    assert "s3://artifacts/sft-demo" in argocd_health(SCENARIOS["succeeded"][0])["message"]
    running = argocd_health(SCENARIOS["running"][0])["message"]
    assert "25%" in running and "ETA 3m10s" in running and running.startswith("Running")


def test_health_falls_back_to_phase_without_conditions():
    base = {"metadata": {"name": "x", "generation": 1}}
    for phase, health in {
        "Pending": "Progressing",
        "Running": "Progressing",
        "Succeeded": "Healthy",
        "Failed": "Degraded",
        "Suspended": "Suspended",
    }.items():
        assert argocd_health({**base, "status": {"phase": phase, "observedGeneration": 1}})["status"] == health


GOLDEN_STATUSES = sorted(GOLDEN.glob("status-*.json"))
PHASE_HEALTH = {
    "Pending": {"Progressing"},
    "Running": {"Progressing", "Degraded"},
    "Succeeded": {"Healthy"},
    "Failed": {"Degraded"},
    "Suspended": {"Suspended", "Degraded"},
}


@pytest.mark.skipif(
    not GOLDEN_STATUSES, reason="the operator tests have not written tests/operator/golden/status-*.json"
)
@pytest.mark.parametrize("path", GOLDEN_STATUSES, ids=[p.stem for p in GOLDEN_STATUSES])
def test_argocd_health_on_recorded_operator_statuses(path):
    """Statuses recorded by the operator's emulator tests: health agrees with their phase and Stalled."""
    recorded = json.loads(path.read_text())
    obj = recorded if "status" in recorded else {"metadata": {"name": path.stem}, "status": recorded}
    status = obj["status"]
    health = argocd_health(obj)["status"]
    stalled = any(c["type"] == "Stalled" and c["status"] == "True" for c in status.get("conditions") or [])
    if obj.get("metadata", {}).get("generation", 0) > status.get("observedGeneration", 0):
        assert health == "Progressing"
    elif stalled:
        assert health == "Degraded"
    else:
        assert health in PHASE_HEALTH[status["phase"]], (path.name, health)


# --------------------------------------------------------------------------------- documentation


def _doc_block(language: str, marker: str) -> str:
    text = (ROOT / "docs" / "gitops.md").read_text()
    blocks = re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)
    found = [b for b in blocks if marker in b]
    assert found, f"docs/gitops.md has no {language} block with {marker!r}"
    return found[0]


def test_argocd_cm_in_the_docs_carries_the_tested_script():
    cm = yaml.safe_load(_doc_block("yaml", "resource.customizations.health.kubetune.io_FineTuneJob"))
    assert cm["kind"] == "ConfigMap" and cm["metadata"]["name"] == "argocd-cm"
    script = cm["data"]["resource.customizations.health.kubetune.io_FineTuneJob"]
    assert script.strip() == HEALTH_LUA.read_text().strip(), "docs/gitops.md and docs/argocd/health.lua differ"


def test_gitops_examples_in_the_docs_are_well_formed():
    app = yaml.safe_load(_doc_block("yaml", "kind: Application"))
    assert app["apiVersion"] == "argoproj.io/v1alpha1"
    assert app["spec"]["source"]["path"] and app["spec"]["destination"]["namespace"]
    docs = list(yaml.safe_load_all(_doc_block("yaml", "kind: Kustomization")))
    kustomization = next(d for d in docs if d["kind"] == "Kustomization")
    assert kustomization["apiVersion"] == "kustomize.toolkit.fluxcd.io/v1"
    assert any(h["kind"] == "FineTuneJob" for h in kustomization["spec"].get("healthChecks", []))


# --------------------------------------------------------------------------------- re-apply never retrains


def _apply_crd_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Structural defaulting as the API server does it: fill `default`s of absent properties, recursively."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, sub in schema["properties"].items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = _apply_crd_defaults(out[key], sub)
        return out
    if isinstance(value, list) and "items" in schema:
        return [_apply_crd_defaults(v, schema["items"]) for v in value]
    return value


EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_reapplied_example_is_not_a_spec_change(path):
    """Argo CD / Flux re-apply the file from Git onto the stored, server-defaulted object: the operator
    must see the same spec hash as for the object it created the Job from, so nothing restarts."""
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "FineTuneJob":
            continue
        doc = {**doc, "metadata": {**doc["metadata"], "namespace": "ml", "generation": 1}}
        stored = _apply_crd_defaults(doc, schema)
        created = parse(stored, OPTIONS)
        reapplied = parse(_apply_crd_defaults(json.loads(json.dumps(doc)), schema), OPTIONS)
        assert created.spec_hash == reapplied.spec_hash
        job = _job(stored, active=1)
        decision = decide(stored, reapplied, OPTIONS, job=job, pods=[RUNNING_POD], at=AT)
        stalled = next(c for c in decision.status["conditions"] if c["type"] == "Stalled")
        assert stalled["status"] == "False", stalled
        assert decision.children == [], "an existing Job must never be rebuilt"
