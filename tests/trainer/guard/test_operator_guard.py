"""The operator's side of the divergence guard: the trainer's own exporter → status.guard, the Diverged
condition (kept across passes that do not scrape) and one Warning Event per new rollback."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from kubetune.api.v1alpha1 import FineTuneJobStatus
from kubetune.operator import progress
from kubetune.trainer.callbacks.prometheus import PrometheusCallback, TrainerMetrics

LABELS = {"job": "j", "namespace": "ns", "stage": "sft", "method": "lora", "model": "m"}
BASE = {
    "phase": "Running",
    "conditions": [
        {"type": "Ready", "status": "False", "reason": "Training", "message": "", "lastTransitionTime": "t0"}
    ],
}


def _scrape(callback: PrometheusCallback, metrics: TrainerMetrics, **logs: float) -> dict:
    if logs:
        callback.on_log(None, None, None, logs=logs)
    return progress.facts(generate_latest(metrics.registry).decode())


def _diverged(status: dict) -> dict | None:
    return next((c for c in status.get("conditions", []) if c["type"] == "Diverged"), None)


def test_rollbacks_reach_status_condition_and_events():
    metrics = TrainerMetrics(LABELS, CollectorRegistry())
    callback = PrometheusCallback(metrics)

    facts = _scrape(callback, metrics)
    assert "guard" not in facts
    status, events = progress.guard_status(BASE, {**BASE, **facts}, "t1")
    assert events == [] and _diverged(status) is None  # no rollback: no condition at all

    facts = _scrape(callback, metrics, guard_rollbacks=1.0, guard_diverged=1.0, guard_reason_nan_loss=1.0)
    assert facts["guard"] == {"rollbacks": 1, "diverged": True, "reason": "nan_loss"}
    status, events = progress.guard_status(BASE, {**BASE, **facts}, "t2")
    assert [(kind, reason) for kind, reason, _ in events] == [("Warning", "RolledBack")]
    assert "nan_loss" in events[0][2]
    cond = _diverged(status)
    assert cond["status"] == "True" and cond["reason"] == "RolledBack" and cond["lastTransitionTime"] == "t2"
    FineTuneJobStatus.model_validate(status)  # the CRD's status schema takes it

    again, events = progress.guard_status(status, {**BASE, **facts}, "t3")  # same scrape: no second Event
    assert events == [] and _diverged(again)["lastTransitionTime"] == "t2"
    carried, events = progress.guard_status(again, dict(BASE), "t4")  # a pass without a scrape keeps it
    assert events == [] and _diverged(carried)["status"] == "True" and carried["guard"]["rollbacks"] == 1

    facts = _scrape(callback, metrics, guard_rollbacks=2.0, guard_diverged=1.0, guard_reason_loss_spike=1.0)
    status, events = progress.guard_status(carried, {**BASE, **facts}, "t5")
    assert len(events) == 1 and "2 rollback(s)" in events[0][2] and "loss_spike" in events[0][2]
    assert status["guard"]["reason"] == "loss_spike"

    facts = _scrape(callback, metrics, guard_rollbacks=2.0, guard_diverged=0.0, guard_reason_loss_spike=1.0)
    status, events = progress.guard_status(status, {**BASE, **facts}, "t6")
    cond = _diverged(status)
    assert events == [] and cond["status"] == "False" and cond["reason"] == "Recovered"
    assert cond["lastTransitionTime"] == "t6"
    registry = metrics.registry
    assert registry.get_sample_value("kubetune_train_rollbacks_total", LABELS) == 2
