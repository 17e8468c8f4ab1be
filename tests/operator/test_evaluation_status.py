"""The operator's side of the evaluation gate: status.evaluation, the artifacts of an unpromoted run, the Events,
and spec.evaluation.rewardModel.fromJob resolved like the other upstream references."""

from __future__ import annotations

import json
from typing import Any

from kubetune.api.conditions import EVALUATION_LINE, EXIT_GATE_FAILED
from kubetune.operator.manifests import BuildOptions
from kubetune.operator.reconcile import decide, parse
from tests.operator.test_lifecycle import ftj

REPORT = {
    "promoted": False,
    "base": {"evalLoss": 3.1, "perplexity": 22.2, "ruleScore": 0.0, "prompts": 8},
    "trained": {"evalLoss": 3.1, "perplexity": 22.2, "ruleScore": 0.0, "prompts": 8},
    "checks": [{"name": "evalLossImprovementPercent", "value": 0.0, "threshold": 10.0, "passed": False}],
}
SUMMARY = "evaluation gate failed: evalLossImprovementPercent 0 (needs >= 10)"


def finished_job(failed: bool) -> dict[str, Any]:
    cond = (
        {"type": "Failed", "status": "True", "reason": "PodFailurePolicy"}
        if failed
        else {"type": "Complete", "status": "True"}
    )
    return {
        "metadata": {"name": "demo", "annotations": {}, "uid": "j1"},
        "spec": {"parallelism": 1},
        "status": {"conditions": [cond], "completionTime": "2026-12-02T10:00:00Z"},
    }


def pod(code: int, message: str) -> dict[str, Any]:
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": "0"}},
        "status": {
            "phase": "Failed" if code else "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": code, "message": message}}}],
        },
    }


def body_with_evaluation() -> dict[str, Any]:
    body = ftj(
        evaluation={"prompts": [{"name": "p", "source": "s3://bkt/p.json"}], "rules": [{"type": "answer"}]},
        resources={"nodes": 1, "gpusPerNode": 1},
    )
    body["metadata"]["generation"] = 1
    body["status"] = {"phase": "Running"}
    return body


def test_a_failed_gate_fails_the_job_keeps_the_artifact_and_reports_both_models() -> None:
    body = body_with_evaluation()
    options = BuildOptions()
    message = f"{SUMMARY}\n{EVALUATION_LINE}{json.dumps(REPORT)}"
    d = decide(body, parse(body, options), options, job=finished_job(True), pods=[pod(EXIT_GATE_FAILED, message)])
    s = d.status
    assert s["phase"] == "Failed"
    failed = next(c for c in s["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "EvaluationGateFailed" and failed["message"] == SUMMARY
    assert s["evaluation"] == REPORT
    assert s["artifacts"]["manifestUri"] == "s3://out/demo/manifest.json"  # kept for inspection
    assert ("Warning", "EvaluationGateFailed") in [(k, r) for k, r, _ in d.events]


def test_a_passed_gate_is_an_event_and_status() -> None:
    body = body_with_evaluation()
    options = BuildOptions()
    report = {**REPORT, "promoted": True, "checks": [{**REPORT["checks"][0], "value": 40.0, "passed": True}]}
    message = f"succeeded: s3://out/demo\n{EVALUATION_LINE}{json.dumps(report)}"
    d = decide(body, parse(body, options), options, job=finished_job(False), pods=[pod(0, message)])
    assert d.status["phase"] == "Succeeded" and d.status["evaluation"]["promoted"] is True
    passed = [m for k, r, m in d.events if r == "EvaluationPassed"]
    assert passed and "promoted" in passed[0] and "evalLossImprovementPercent ok" in passed[0]


def test_a_job_without_an_evaluation_line_gets_no_evaluation_status() -> None:
    body = body_with_evaluation()
    options = BuildOptions()
    d = decide(body, parse(body, options), options, job=finished_job(False), pods=[pod(0, "succeeded: s3://o")])
    assert "evaluation" not in d.status


def test_the_evaluation_reward_model_waits_for_its_rm_job() -> None:
    body = ftj(
        "policy",
        evaluation={
            "prompts": [{"name": "p", "source": "s3://bkt/p.json"}],
            "rewardModel": {"fromJob": "scorer"},
        },
    )
    body["metadata"]["generation"] = 1
    options = BuildOptions()
    parsed = parse(body, options)
    assert parsed.upstream == {"spec.evaluation.rewardModel.fromJob": "scorer"}
    waiting = decide(body, parsed, options, job=None, upstream={"scorer": None})
    assert waiting.status["phase"] == "Pending" and not waiting.children
    up = {"status": {"phase": "Succeeded", "artifacts": {"adapterUri": "s3://out/scorer"}}}
    ready = decide(body, parsed, options, job=None, upstream={"scorer": up})
    config = json.loads(ready.children[0]["data"]["trainer.json"])
    assert config["spec"]["evaluation"]["rewardModel"] == {"source": "s3://out/scorer"}
