"""Secrets only by reference: a planted token never shows up in operator logs, Events, status, ConfigMaps,
Jobs, trainer output, the artifact files or the manifest."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, write_job
from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import eventually
from tests.operator.test_lifecycle import NS, ftj, status

TOKEN = "kt-planted-7f3a9c1e5b2d4f6a8c0e"  # looks like nothing else in the system


async def test_operator_never_copies_a_secret_value(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    kube_api.create(
        "v1/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "creds", "namespace": NS},
            "stringData": {"AWS_SECRET_ACCESS_KEY": TOKEN, "HF_TOKEN": TOKEN},
        },
    )
    await start_operator()
    kube_api.create(
        FTJ,
        ftj(
            "secretive",
            model={"source": "hf://org/private", "credentialsSecret": "creds"},
            output={"uri": "s3://out/secretive", "credentialsSecret": "creds"},
        ),
    )
    await eventually(lambda: status(kube_api, "secretive").get("phase") == "Running")
    cluster.finish("secretive", 0)
    cluster.finish("secretive", 1)
    await eventually(lambda: status(kube_api, "secretive").get("phase") == "Succeeded")
    job = kube_api.get("batch/v1/jobs", NS, "secretive")
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "creds"}}]
    everything = [o for (r, _, _), o in kube_api.store.items() if r != "v1/secrets"]
    kinds = {o["kind"] for o in everything}
    assert {"FineTuneJob", "ConfigMap", "Service", "Job", "Pod", "Event"} <= kinds, kinds
    assert TOKEN not in json.dumps(everything)
    assert TOKEN not in caplog.text


@pytest.mark.slow
def test_trainer_never_writes_a_credential(tmp_path: Path, tiny_model_dir: Path, s3_bucket: str) -> None:
    import boto3

    shutil.copy(ROOT / "examples" / "data" / "identity.json", tmp_path / "identity.json")
    job = write_job(
        tmp_path / "job.yaml",
        {
            "model": {"source": f"file://{tiny_model_dir}"},
            "datasets": [{"name": "identity", "source": "file://identity.json"}],
            "training": {"maxSteps": 2, "batchSize": 4, "cutoffLen": 64},
            "output": {"uri": f"s3://{s3_bucket}/runs/secret"},
        },
        name="secret-run",
    )
    env = {
        **os.environ,
        "AWS_SECRET_ACCESS_KEY": TOKEN,
        "HF_TOKEN": TOKEN,
        "WANDB_API_KEY": TOKEN,
        "PYTHONPATH": f"{ROOT}/operator:{ROOT}/trainer",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kubetune.cli",
            "run",
            str(job),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--allow-private-url",
            "127.0.0.1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert TOKEN not in result.stdout and TOKEN not in result.stderr
    s3c = boto3.client("s3")
    keys = [o["Key"] for o in s3c.list_objects_v2(Bucket=s3_bucket, Prefix="runs/secret/").get("Contents", [])]
    assert "runs/secret/manifest.json" in keys
    for key in keys:
        assert TOKEN.encode() not in s3c.get_object(Bucket=s3_bucket, Key=key)["Body"].read(), key
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert TOKEN.encode() not in path.read_bytes(), path
