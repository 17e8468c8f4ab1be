"""The evaluation gate for real on CPU: the identity quickstart passes it, the same job with a learning rate of 0
fails it (artifact kept, unpromoted, exit 6), and a reward model from an rm job scores both models' answers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.conditions import EVALUATION_LINE, EXIT_GATE_FAILED
from kubetune.api.validation import load_jobs
from kubetune.operator import status
from kubetune.trainer.artifacts.manifest import verify_dir
from kubetune.trainer.local import run_local
from tests.conftest import write_job

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def quickstart(tmp_path: Path, model: Path, **training: Any) -> Path:
    """examples/quickstart.yaml (its data, evaluation and gate) on this model, shortened for a test."""
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    spec = doc["spec"]
    spec["model"]["source"] = f"file://{model}"
    spec["training"].update({"epochs": 1, "maxSteps": 12, **training})
    spec["output"]["uri"] = "file://out"
    shutil.copytree(ROOT / "examples" / "data", tmp_path / "data")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(job_file: Path, cache_dir: Path) -> int:
    (job,) = load_jobs(job_file)
    return run_local(job, job_file, cache_dir=cache_dir)


def test_the_quickstart_passes_its_gate_and_a_learning_rate_of_zero_fails_it(
    tmp_path: Path, smollm_gguf: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "good").mkdir()
    assert run(quickstart(tmp_path / "good", smollm_gguf), cache_dir) == 0
    out = tmp_path / "good" / "out"
    assert verify_dir(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    ev = manifest["evaluation"]
    assert manifest["promoted"] is True and ev["promoted"] is True
    assert ev["trained"]["evalLoss"] < 0.9 * ev["base"]["evalLoss"]
    assert ev["trained"]["perplexity"] < ev["base"]["perplexity"]
    assert ev["trained"]["ruleScore"] >= 0.5 > ev["base"]["ruleScore"]
    assert ev["base"]["prompts"] == ev["trained"]["prompts"] == 8
    assert {c["name"] for c in ev["checks"]} == {"evalLossImprovementPercent", "minRuleScore"}
    assert all(c["passed"] for c in ev["checks"])
    assert (
        "kubetune" in ev["answers"][0]["trained"].lower() and ev["answers"][0]["base"] != ev["answers"][0]["trained"]
    )
    assert "evaluation gate passed" in capsys.readouterr().out

    (tmp_path / "zero").mkdir()
    code = run(quickstart(tmp_path / "zero", smollm_gguf, learningRate=0, maxSteps=1), cache_dir)
    assert code == EXIT_GATE_FAILED
    err = capsys.readouterr().err
    assert "evaluation gate failed: evalLossImprovementPercent" in err and "kept, not promoted" in err
    assert EVALUATION_LINE not in err  # the JSON line is for the operator, not the terminal
    out = tmp_path / "zero" / "out"
    assert verify_dir(out) == [], "a failed gate keeps a complete artifact for inspection"
    manifest = json.loads((out / "manifest.json").read_text())
    ev = manifest["evaluation"]
    assert manifest["promoted"] is False and ev["promoted"] is False
    assert ev["trained"]["evalLoss"] == pytest.approx(ev["base"]["evalLoss"], rel=1e-4)  # nothing learned
    failed = {c["name"] for c in ev["checks"] if not c["passed"]}
    assert failed == {"evalLossImprovementPercent", "minRuleScore"}


def test_a_reward_model_scores_both_models_and_the_pod_reports_to_the_operator(
    tmp_path: Path, tiny_model_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An rm job's output as spec.evaluation.rewardModel; the trainer's entry point writes the result into the
    termination message, from which the operator builds status.evaluation."""
    data = ROOT / "examples" / "data"
    for name in ("identity.json", "identity_eval.json", "identity_preference.json"):
        shutil.copy(data / name, tmp_path / name)
    rm_job = write_job(
        tmp_path / "rm.yaml",
        {
            "stage": "rm",
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [
                {
                    "name": "pref",
                    "source": "file://identity_preference.json",
                    "ranking": True,
                    "columns": {"chosen": "chosen", "rejected": "rejected"},
                }
            ],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {"maxSteps": 3, "batchSize": 4, "learningRate": 0.01, "cutoffLen": 64},
            "output": {"uri": "file://rm-out"},
        },
        name="rm",
    )
    assert run(rm_job, cache_dir) == 0
    sft = write_job(
        tmp_path / "sft.yaml",
        {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": "file://identity.json"}],
            "evalDatasets": [{"name": "held-out", "source": "file://identity_eval.json"}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": 4,
                "batchSize": 4,
                "learningRate": 0.01,
                "cutoffLen": 64,
                "gradientCheckpointing": True,  # a training setting: the evaluation generates with its KV cache
            },
            "evaluation": {
                "prompts": [{"name": "held-out", "source": "file://identity_eval.json"}],
                "rules": [{"type": "exact"}, {"type": "answer", "weight": 2}],
                "rewardModel": {"source": f"file://{tmp_path / 'rm-out'}"},
                "maxPrompts": 3,
                "maxNewTokens": 8,
                "gate": {"minReward": -1e9, "maxEvalLoss": 1e6},
            },
            "output": {"uri": "file://sft-out"},
        },
        name="sft",
    )
    from kubetune.api.trainer_config import TrainerConfig
    from kubetune.trainer.__main__ import main

    (job,) = load_jobs(sft)
    config = TrainerConfig.from_job(
        job,
        output_uri=f"file://{tmp_path / 'sft-out'}",
        work_dir=str(tmp_path),
        cache_dir=str(cache_dir),
        scratch_dir=str(tmp_path / "scratch"),
    )
    (tmp_path / "trainer.json").write_text(config.model_dump_json(by_alias=True))
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(termination))
    monkeypatch.setenv("KUBETUNE_METRICS_LINGER_SECONDS", "0")
    assert main(["--config", str(tmp_path / "trainer.json")]) == 0
    message = termination.read_text()
    assert message.startswith("succeeded: ") and EVALUATION_LINE in message
    pod = {"status": {"containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": message}}}]}}
    report = status.evaluation_report([pod])
    assert report is not None and report["promoted"] is True
    for which in ("base", "trained"):
        assert isinstance(report[which]["reward"], float) and report[which]["prompts"] == 3
        assert 0.0 <= report[which]["ruleScore"] <= 1.0 and report[which]["evalLoss"] > 0
    assert [c["name"] for c in report["checks"]] == ["maxEvalLoss", "minReward"]
    manifest = json.loads((tmp_path / "sft-out" / "manifest.json").read_text())
    assert manifest["evaluation"]["rules"]["trained"].keys() == {"exact_0", "answer_1"}
