"""Shared helpers for the stage tests: a FineTuneJob on the tiny model, run through `kubetune run`'s path."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from kubetune.api.validation import load_jobs
from kubetune.trainer.artifacts.manifest import verify_dir
from kubetune.trainer.local import run_local
from tests.conftest import write_job

ROOT = Path(__file__).resolve().parents[3]
DATA = ROOT / "examples" / "data"

DATASETS: dict[str, dict[str, Any]] = {
    "text": {"name": "text", "source": "file://kubetune_text.json", "columns": {"prompt": "text"}},
    "sft": {"name": "identity", "source": "file://identity.json"},
    "pairwise": {
        "name": "pref",
        "source": "file://identity_preference.json",
        "ranking": True,
        "columns": {"chosen": "chosen", "rejected": "rejected"},
    },
    "kto": {"name": "kto", "source": "file://identity_kto.json", "columns": {"ktoTag": "label"}},
    "prompts": {"name": "prompts", "source": "file://identity_prompts.json"},
}
FILES = {
    "text": "kubetune_text.json",
    "sft": "identity.json",
    "pairwise": "identity_preference.json",
    "kto": "identity_kto.json",
    "prompts": "identity_prompts.json",
}


def tiny_job(
    tmp_path: Path, model_dir: Path, stage: str, data: str, name: str | None = None, **overrides: Any
) -> Path:
    shutil.copy(DATA / FILES[data], tmp_path / FILES[data])
    spec: dict[str, Any] = {
        "stage": stage,
        "model": {"source": f"file://{model_dir}"},
        "datasets": [DATASETS[data]],
        "method": {"type": "lora", "lora": {"rank": 8}},
        "training": {"maxSteps": 8, "batchSize": 4, "learningRate": 0.01, "cutoffLen": 64, "scheduler": "constant"},
        "output": {"uri": "file://out"},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return write_job(tmp_path / "job.yaml", spec, name=name or f"t-{stage}")


def run_job(job_file: Path, cache_dir: Path) -> int:
    (job,) = load_jobs(job_file)
    return run_local(job, job_file, cache_dir=cache_dir)


def history(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]


def losses(out: Path, key: str = "loss") -> list[float]:
    values = [h[key] for h in history(out) if key in h]
    assert values, f"no {key!r} in the training log"
    assert all(math.isfinite(v) for v in values), values
    return values


def manifest(out: Path) -> dict[str, Any]:
    data = json.loads((out / "manifest.json").read_text())
    assert verify_dir(out) == []
    assert data["baseModel"]["source"] and data["datasets"] and data["metrics"]
    return data


def decreasing(values: list[float], head: int = 2, tail: int = 2) -> bool:
    return sum(values[-tail:]) / tail < sum(values[:head]) / head
