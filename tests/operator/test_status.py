"""Pure status logic: Job outcome → phase/reason, kstatus conditions, progress parsing."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api import metrics as m
from kubetune.operator import progress, status
from kubetune.operator.manifests import BuildOptions
from kubetune.operator.reconcile import decide, parse
from tests.operator.test_lifecycle import ftj


def job(conditions: list[dict[str, Any]] | None = None, suspend: bool = False, active: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "j", "annotations": {}},
        "spec": {"suspend": suspend, "parallelism": 2},
        "status": {"conditions": conditions or [], "active": active},
    }


def pod(
    phase: str, exit_code: int | None = None, message: str = "", index: str = "0", restarts: int = 0
) -> dict[str, Any]:
    state = {"terminated": {"exitCode": exit_code, "message": message}} if exit_code is not None else {"running": {}}
    return {
        "metadata": {"annotations": {"batch.kubernetes.io/job-completion-index": index}},
        "status": {
            "phase": phase,
            "podIP": "10.0.0.5",
            "containerStatuses": [{"restartCount": restarts, "state": state}],
        },
    }


@pytest.mark.parametrize(
    "kjob, pods, suspended, queued, phase, reason",
    [
        (job([{"type": "Complete", "status": "True"}]), [], False, False, "Succeeded", "TrainingCompleted"),
        (
            job([{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "limit"}]),
            [pod("Failed", 1, "CUDA out of memory")],
            False,
            False,
            "Failed",
            "JobFailed",
        ),
        (
            job([{"type": "Failed", "status": "True", "reason": "DeadlineExceeded", "message": "too long"}]),
            [],
            False,
            False,
            "Failed",
            "DeadlineExceeded",
        ),
        (job(suspend=True), [], True, False, "Suspended", "SuspendedByUser"),
        (job(suspend=True), [], False, True, "Pending", "Queued"),
        (job(active=2), [pod("Running"), pod("Running", index="1")], False, False, "Running", "Training"),
        (job(active=2), [pod("Pending")], False, False, "Pending", "PodsPending"),
    ],
    ids=["complete", "failed", "deadline", "suspended", "kueue-queued", "running", "pods-pending"],
)
def test_job_verdict(kjob: dict, pods: list, suspended: bool, queued: bool, phase: str, reason: str) -> None:
    v = status.job_verdict(kjob, pods, user_suspended=suspended, queued=queued)
    assert (v.phase, v.reason) == (phase, reason)


def test_failure_message_is_the_termination_message() -> None:
    kjob = job([{"type": "Failed", "status": "True", "reason": "PodFailurePolicy", "message": "exit 3"}])
    pods = [pod("Failed", 3, "training.rewardModel: not found", index="1"), pod("Succeeded", 0, "succeeded: s3://x")]
    assert (
        status.job_verdict(kjob, pods, user_suspended=False, queued=False).message == "training.rewardModel: not found"
    )
    assert status.restarts({"status": {"failed": 2}}, [pod("Running", restarts=1)]) == 3


@pytest.mark.parametrize(
    "phase, ready, reconciling, stalled",
    [
        ("Pending", "False", "True", "False"),
        ("Running", "False", "True", "False"),
        ("Succeeded", "True", "False", "False"),
        ("Failed", "False", "False", "True"),
        ("Suspended", "False", "False", "False"),
    ],
)
def test_kstatus_conditions(phase: str, ready: str, reconciling: str, stalled: str) -> None:
    conds = {c["type"]: c for c in status.conditions(status.Verdict(phase, "R", "m"), None, 3, "2026-01-01T00:00:00Z")}
    assert (conds["Ready"]["status"], conds["Reconciling"]["status"], conds["Stalled"]["status"]) == (
        ready,
        reconciling,
        stalled,
    )
    assert conds[phase]["status"] == "True" if phase != "Pending" else True
    assert all(c["observedGeneration"] == 3 and c["reason"] for c in conds.values())


def test_transition_time_kept_while_status_unchanged() -> None:
    first = status.conditions(status.Verdict("Running", "Training"), None, 1, "T1")
    again = status.conditions(status.Verdict("Running", "Training", "2 of 2"), first, 1, "T2")
    done = status.conditions(status.Verdict("Succeeded", "TrainingCompleted"), again, 1, "T3")
    by = lambda cs: {c["type"]: c["lastTransitionTime"] for c in cs}
    assert by(again)["Running"] == "T1" and by(done)["Running"] == "T3" and by(done)["Validated"] == "T1"


def test_status_patch_only_changes() -> None:
    assert status.status_patch({"phase": "Running", "x": 1}, {"phase": "Running", "x": 1}) == {}
    assert status.status_patch({"phase": "Running", "x": 1}, {"phase": "Failed"}) == {"phase": "Failed", "x": None}


def test_progress_from_prometheus_text() -> None:
    text = (
        f'# TYPE {m.GLOBAL_STEP} gauge\n{m.GLOBAL_STEP}{{job="a"}} 40\n'
        f'# TYPE {m.TOTAL_STEPS} gauge\n{m.TOTAL_STEPS}{{job="a"}} 160\n'
        f'# TYPE {m.ETA_SECONDS} gauge\n{m.ETA_SECONDS}{{job="a"}} 95\n'
        f'# TYPE {m.TRAIN_LOSS} gauge\n{m.TRAIN_LOSS}{{job="a"}} NaN\n'
        "# TYPE other_metric gauge\nother_metric 7\n"
    )
    assert progress.progress(progress.parse(text)) == {
        "step": 40,
        "totalSteps": 160,
        "percent": 25.0,
        "etaSeconds": 95.0,
        "eta": "1m35s",
    }
    assert progress.rank0_url([pod("Running", index="1"), pod("Running")], 9400) == "http://10.0.0.5:9400/metrics"
    assert progress.rank0_url([pod("Pending")], 9400) is None


def test_status_facts_from_the_trainers_own_exporter() -> None:
    """The operator parses exactly what the trainer exports (the trainer's TrainerMetrics, a real registry)."""
    from prometheus_client import generate_latest

    from kubetune.trainer.callbacks.prometheus import TrainerMetrics

    labels = {"job": "a", "namespace": "ns", "stage": "sft", "method": "lora", "model": "tiny"}
    metrics = TrainerMetrics(labels)
    metrics.set_facts(
        memory_estimate_gib=3.5,
        datasets=[
            {"name": "b", "rows": 10, "valid": 8, "dropped": 2},
            {"name": "a", "rows": 5, "valid": 5, "dropped": 0},
        ],
    )
    metrics.bind(metrics.checkpoint_step).set(40)
    text = generate_latest(metrics.registry).decode()
    assert progress.facts(text, "s3://out/run/") == {
        "memoryEstimateGib": 3.5,
        "lastCheckpoint": "s3://out/run/checkpoints/step-40",
        "datasets": [
            {"name": "a", "rows": 5, "valid": 5, "dropped": 0},
            {"name": "b", "rows": 10, "valid": 8, "dropped": 2},
        ],
    }


def test_memory_estimate_from_declared_parameters() -> None:
    from kubetune.api.validation import parse_job
    from kubetune.operator.reconcile import memory_estimate_gib

    job = parse_job(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "m"},
            "spec": {
                "model": {"source": "hf://a/b", "parameters": "7B"},
                "method": {"type": "qlora"},
                "training": {"gradientCheckpointing": True},
                "datasets": [{"name": "d", "source": "s3://bkt/d.json"}],
            },
        }
    )
    assert 4 < memory_estimate_gib(job) < 8  # LLaMA-Factory's table: 6 GB for 7B QLoRA 4-bit


def test_decide_waits_for_upstream_then_builds_children() -> None:
    body = ftj("down", model={"source": "hf://a/b", "adapter": {"fromJob": "up"}})
    body["metadata"]["generation"] = 1
    options = BuildOptions()
    parsed = parse(body, options)
    waiting = decide(body, parsed, options, job=None, upstream={"up": None})
    assert waiting.status["phase"] == "Pending" and not waiting.children
    up = {"status": {"phase": "Succeeded", "artifacts": {"adapterUri": "s3://out/up"}}}
    ready = decide(body, parsed, options, job=None, upstream={"up": up})
    assert [c["kind"] for c in ready.children] == ["ConfigMap", "Service", "Job"]
    assert '"source": "s3://out/up"' in ready.children[0]["data"]["trainer.json"]
