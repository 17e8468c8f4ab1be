"""FineTuneJob → operator → Indexed Job → the pod's real `kubetune-train` on a tiny model → Succeeded + adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.v1alpha1 import API_VERSION
from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


async def test_finetunejob_trains_for_real(
    kube_api: KubeEmulator, start_operator: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "artifacts" / "e2e"
    port = free_port()
    job = {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": "e2e", "namespace": "default"},
        "spec": {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": f"file://{ROOT / 'examples/data/identity.json'}"}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": 3,
                "batchSize": 4,
                "learningRate": 0.01,
                "cutoffLen": 64,
                "scheduler": "constant",
            },
            "evalDatasets": [{"name": "held-out", "source": f"file://{ROOT / 'examples/data/identity_eval.json'}"}],
            "evaluation": {
                "prompts": [{"name": "held-out", "source": f"file://{ROOT / 'examples/data/identity_eval.json'}"}],
                "rules": [{"type": "regex", "pattern": "(?i)kubetune"}],
                "maxPrompts": 2,
                "maxNewTokens": 4,
                "gate": {"evalLossImprovementPercent": 1},
            },
            "resources": {"nodes": 1, "gpusPerNode": 0},
            "output": {"uri": f"file://{out}"},
        },
    }
    async with ClusterSimulator(kube_api, run_commands=True, workdir=tmp_path / "node") as cluster:
        await start_operator(trainer_metrics_port=port)
        kube_api.create(FTJ, job)
        pod = await eventually(lambda: cluster.pods("e2e") and cluster.pods("e2e")[0], timeout=30)
        log = tmp_path / "node" / pod["metadata"]["name"] / "container.log"

        def phase() -> str | None:
            return ((kube_api.get(FTJ, "default", "e2e") or {}).get("status") or {}).get("phase")

        try:
            await eventually(lambda: phase() in ("Succeeded", "Failed"), timeout=240, interval=0.5)
        finally:
            print(log.read_text() if log.exists() else "no container log")
        status = kube_api.get(FTJ, "default", "e2e")["status"]
        assert status["phase"] == "Succeeded", status["conditions"]
    assert status["artifacts"]["adapterUri"] == f"file://{out}"
    assert status["progress"]["totalSteps"] == 3 and status["progress"]["percent"] == 100.0, "progress was scraped"
    assert sorted(status["datasets"], key=lambda d: d["name"]) == [
        {"name": "held-out", "rows": 8, "valid": 8, "dropped": 0},
        {"name": "identity", "rows": 30, "valid": 30, "dropped": 0},
    ], "dataset report scraped"
    assert 0 < status["memoryEstimateGib"] < 16, "the trainer's estimate from the real model config"
    manifest = json.loads((out / "manifest.json").read_text())
    assert (out / "adapter_model.safetensors").exists() and manifest["config"]["stage"] == "sft"
    pod = kube_api.list("v1/pods", "default")[0]
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["message"].startswith("succeeded")
    # spec.evaluation: the trainer's termination message became status.evaluation, and an Event said it
    ev = status["evaluation"]
    assert ev["promoted"] is True and manifest["promoted"] is True
    assert ev["trained"]["evalLoss"] < ev["base"]["evalLoss"] and ev["trained"]["prompts"] == 2
    assert ev["checks"][0]["name"] == "evalLossImprovementPercent" and ev["checks"][0]["passed"]
    reasons = [e["reason"] for e in kube_api.list("v1/events", "default")]
    assert "EvaluationPassed" in reasons, reasons


async def test_a_failed_evaluation_gate_fails_the_job_once_and_keeps_the_artifact(
    kube_api: KubeEmulator, start_operator: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A learning rate of 0 learns nothing: the gate fails, the pod exits 6, the Job fails at once (podFailurePolicy,
    no retry), the FineTuneJob is Failed with reason EvaluationGateFailed, and the artifact is kept unpromoted."""
    out = tmp_path / "artifacts" / "gated"
    held_out = f"file://{ROOT / 'examples/data/identity_eval.json'}"
    job = {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": "gated", "namespace": "default"},
        "spec": {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": f"file://{ROOT / 'examples/data/identity.json'}"}],
            "evalDatasets": [{"name": "held-out", "source": held_out}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {"maxSteps": 1, "batchSize": 4, "learningRate": 0, "cutoffLen": 64},
            "evaluation": {"gate": {"evalLossImprovementPercent": 1}},
            "resources": {"nodes": 1, "gpusPerNode": 0},
            "runPolicy": {"backoffLimit": 3},
            "output": {"uri": f"file://{out}"},
        },
    }
    async with ClusterSimulator(kube_api, run_commands=True, workdir=tmp_path / "node"):
        await start_operator(trainer_metrics_port=free_port())
        kube_api.create(FTJ, job)

        def phase() -> str | None:
            return ((kube_api.get(FTJ, "default", "gated") or {}).get("status") or {}).get("phase")

        await eventually(lambda: phase() in ("Succeeded", "Failed"), timeout=240, interval=0.5)
        status = kube_api.get(FTJ, "default", "gated")["status"]
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert status["phase"] == "Failed" and failed["reason"] == "EvaluationGateFailed", status["conditions"]
    assert failed["message"].startswith("evaluation gate failed: evalLossImprovementPercent")
    assert "evaluation: {" not in failed["message"]
    assert status["evaluation"]["promoted"] is False and not status["evaluation"]["checks"][0]["passed"]
    assert status["artifacts"]["manifestUri"] == f"file://{out}/manifest.json"
    assert json.loads((out / "manifest.json").read_text())["promoted"] is False
    assert len(kube_api.list("v1/pods", "default")) == 1, "exit 6 is not retried"
    assert status["restarts"] <= 1
