"""End to end: `kubetune run` with the model and the data on S3 and the output to S3 (moto over HTTP),
periodic checkpoints uploaded in the background; then `kubetune artifacts verify s3://...`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kubetune.trainer.storage import checkpoints as ck
from kubetune.trainer.storage import s3
from tests.conftest import ROOT, write_job
from tests.trainer.storage.conftest import LOCAL, object_keys

pytestmark = pytest.mark.slow


def test_run_from_s3_to_s3(tmp_path: Path, tiny_model_dir: Path, s3_bucket: str, s3c, capsys) -> None:
    from kubetune.cli import main

    client = s3.client()
    s3.upload_dir(client, tiny_model_dir, s3_bucket, "models/tiny/")
    s3.upload_files(client, s3_bucket, [(ROOT / "examples" / "data" / "identity.json", "data/identity.json")])
    job = write_job(
        tmp_path / "job.yaml",
        {
            "model": {"source": f"s3://{s3_bucket}/models/tiny/"},
            "datasets": [{"name": "identity", "source": f"s3://{s3_bucket}/data/identity.json"}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": 6,
                "batchSize": 4,
                "learningRate": 0.01,
                "cutoffLen": 64,
                "scheduler": "constant",
            },
            "checkpointing": {"everySteps": 2, "keep": 2, "keepAfterSuccess": True},
            "output": {"uri": f"s3://{s3_bucket}/runs/e2e"},
        },
    )
    cache = tmp_path / "cache"
    # Without the allow list, the loopback S3 endpoint is refused before anything is downloaded.
    assert main(["run", str(job), "--cache-dir", str(cache)]) != 0
    assert "S3 endpoint host '127.0.0.1' is a loopback address" in capsys.readouterr().err
    assert main(["run", str(job), "--cache-dir", str(cache), "--allow-private-url", "127.0.0.1"]) == 0

    uri = f"s3://{s3_bucket}/runs/e2e"
    manifest = json.loads(s3c.get_object(Bucket=s3_bucket, Key="runs/e2e/manifest.json")["Body"].read())
    paths = {f["path"] for f in manifest["files"]}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "trainer_log.jsonl"} <= paths
    assert manifest["baseModel"]["source"] == f"s3://{s3_bucket}/models/tiny/"
    assert manifest["datasets"][0]["sha256"]
    assert main(["artifacts", "verify", uri]) == 0
    # checkpoints every 2 steps, keep 2: the final step 6 and one earlier one remain, both complete (a checkpoint
    # saved while another was uploading may be skipped for a newer one: only the newest matters)
    found = [(c.step, c.complete) for c in ck.list_checkpoints(uri, allow=LOCAL)]
    assert len(found) == 2 and found[-1] == (6, True) and found[0] in [(2, True), (4, True)], found
    latest = ck.latest_complete_checkpoint(uri, allow=LOCAL)
    local = ck.download_checkpoint(latest, tmp_path / "resume" / "checkpoint-6", allow=LOCAL)
    assert json.loads((local / "trainer_state.json").read_text())["global_step"] == 6
    # the model was fetched into the cache once, with its completion marker
    cached = [p for p in (cache / "models").iterdir() if p.name.startswith("s3-")]
    assert len([p for p in cached if not p.name.endswith((".lock", ".lease"))]) == 1
    assert "runs/e2e/manifest.json" in object_keys(s3c, s3_bucket, "runs/e2e/")


@pytest.mark.slow
def test_uploaded_checkpoints_are_deleted_after_publishing(
    tmp_path: Path, tiny_model_dir: Path, s3_bucket: str, s3c
) -> None:
    """By default the checkpoints (optimizer state) go once the manifest is published; the artifact stays."""
    from kubetune.cli import main

    shutil.copy(ROOT / "examples" / "data" / "identity.json", tmp_path / "identity.json")
    job = write_job(
        tmp_path / "job.yaml",
        {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": "file://identity.json"}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": 4,
                "batchSize": 4,
                "learningRate": 0.01,
                "cutoffLen": 64,
                "scheduler": "constant",
            },
            "checkpointing": {"everySteps": 2, "keep": 2},
            "output": {"uri": f"s3://{s3_bucket}/runs/cleaned"},
        },
    )
    assert main(["run", str(job), "--cache-dir", str(tmp_path / "cache"), "--allow-private-url", "127.0.0.1"]) == 0
    uri = f"s3://{s3_bucket}/runs/cleaned"
    assert ck.list_checkpoints(uri, allow=LOCAL) == []
    assert not [k for k in object_keys(s3c, s3_bucket, "runs/cleaned/") if "/checkpoints/" in k]
    assert main(["artifacts", "verify", uri]) == 0
