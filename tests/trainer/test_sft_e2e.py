"""End to end on CPU: a FineTuneJob file → `kubetune run` → adapter + manifest, for real."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from kubetune.api.validation import load_jobs
from kubetune.trainer.artifacts.manifest import sha256_file, verify_dir
from kubetune.trainer.local import run_local
from tests.conftest import write_job

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(job_file: Path, cache_dir: Path) -> int:
    (job,) = load_jobs(job_file)
    return run_local(job, job_file, cache_dir=cache_dir)


def _check_artifact(out: Path) -> dict:
    for name in ("adapter_model.safetensors", "adapter_config.json", "manifest.json", "tokenizer.json"):
        assert (out / name).exists(), name
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["files"]:
        assert sha256_file(out / entry["path"]) == entry["sha256"], entry["path"]
    assert verify_dir(out) == []
    assert manifest["datasets"][0]["sha256"] and manifest["baseModel"]["source"]
    assert manifest["software"]["transformers"] and manifest["config"]["stage"] == "sft"
    return manifest


@pytest.mark.parametrize("formatting, source", [("alpaca", "identity.json"), ("sharegpt", "identity_sharegpt.jsonl")])
def test_tiny_model_sft_lora(tmp_path, tiny_model_dir, cache_dir, formatting, source):
    shutil.copy(ROOT / "examples" / "data" / source, tmp_path / source)
    job = write_job(
        tmp_path / "job.yaml",
        {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": f"file://{source}", "formatting": formatting}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": 10,
                "batchSize": 4,
                "learningRate": 0.01,
                "cutoffLen": 96,
                "scheduler": "constant",
            },
            "output": {"uri": "file://out"},
        },
    )
    assert _run(job, cache_dir) == 0
    manifest = _check_artifact(tmp_path / "out")
    history = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert all(math.isfinite(x) for x in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:2]) / 2, losses
    assert manifest["metrics"]["train_loss"] > 0

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "out")
    assert any("lora_A" in n for n, _ in model.named_parameters())


def test_smollm2_sft_learns_identity(tmp_path, smollm_gguf, cache_dir):
    """The real 135M model: loss falls and the adapter changes the answer to 'Who are you?'."""
    shutil.copy(ROOT / "examples" / "data" / "identity.json", tmp_path / "identity.json")
    job = write_job(
        tmp_path / "job.yaml",
        {
            "model": {"source": f"file://{smollm_gguf}"},
            "datasets": [{"name": "identity", "source": "file://identity.json"}],
            "method": {"type": "lora", "lora": {"rank": 16, "alpha": 32}},
            "training": {
                "maxSteps": 12,
                "batchSize": 4,
                "learningRate": 0.001,
                "cutoffLen": 128,
                "scheduler": "constant",
            },
            "output": {"uri": "file://out"},
        },
    )
    assert _run(job, cache_dir) == 0
    _check_artifact(tmp_path / "out")
    history = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses[-1] < losses[0] / 3, losses

    from kubetune.trainer.inference import generate_answers

    before = generate_answers(f"file://{smollm_gguf}", ["Who are you?"], cache_dir=cache_dir, max_new_tokens=24)
    after = generate_answers(
        f"file://{smollm_gguf}",
        ["Who are you?"],
        adapter=f"file://{tmp_path / 'out'}",
        cache_dir=cache_dir,
        max_new_tokens=24,
    )
    assert before != after
    assert "kubetune" in after[0].lower(), after


def test_tiny_model_sft_with_packing(tmp_path, tiny_model_dir, cache_dir):
    """packing: true → padding-free batches of packed rows (position_ids restart per example)."""
    shutil.copy(ROOT / "examples" / "data" / "identity.json", tmp_path / "identity.json")
    job = write_job(
        tmp_path / "job.yaml",
        {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": "file://identity.json"}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": 6,
                "batchSize": 2,
                "learningRate": 0.01,
                "cutoffLen": 256,
                "packing": True,
                "scheduler": "constant",
            },
            "output": {"uri": "file://out"},
        },
    )
    assert _run(job, cache_dir) == 0
    manifest = _check_artifact(tmp_path / "out")
    history = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses and all(math.isfinite(x) for x in losses)
    assert manifest["datasets"][0]["valid"] == 30
