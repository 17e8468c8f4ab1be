"""spec.training.reportTo: [wandb] with no network: an offline W&B run is written and published with the artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import ROOT, write_job

pytest.importorskip("wandb")


def test_wandb_offline_run_is_published_with_the_artifact(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.cli import main

    for key in ("WANDB_MODE", "WANDB_DIR", "WANDB_API_KEY", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    shutil.copy(ROOT / "examples" / "data" / "identity.json", tmp_path / "identity.json")
    job = write_job(
        tmp_path / "job.yaml",
        {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": "file://identity.json"}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": 4,
                "batchSize": 2,
                "learningRate": 0.01,
                "cutoffLen": 64,
                "loggingSteps": 1,
                "reportTo": ["wandb"],
            },
            "output": {"uri": "file://out"},
        },
    )
    assert main(["run", str(job), "--cache-dir", str(tmp_path / "cache")]) == 0
    out = tmp_path / "out"
    runs = list((out / "logs" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, sorted(p.relative_to(out) for p in out.rglob("*"))
    assert b"train/loss" in runs[0].read_bytes(), "the offline run holds the logged loss"
    assert not any(p.is_symlink() for p in (out / "logs").rglob("*")), "W&B's latest-run link is not copied"
    listed = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert str(runs[0].relative_to(out)) in listed, "the run is covered by the manifest's hashes"
    assert main(["artifacts", "verify", str(out)]) == 0
