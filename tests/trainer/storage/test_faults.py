"""S3 faults through a proxy in front of moto: 500/503, dropped connections and cut bodies are retried;
an upload that keeps failing publishes no manifest (and removes an older one). Each test runs against a
store with MD5 ETags and one with opaque ETags (S3 with SSE-KMS/SSE-C)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubetune.trainer.storage import s3
from kubetune.trainer.storage.fetch import fetch
from kubetune.trainer.storage.publish import publish
from kubetune.trainer.storage.s3_verify import verify_remote
from tests.trainer.storage.conftest import LOCAL, object_keys
from tests.trainer.storage.faultproxy import FaultProxy
from tests.trainer.storage.test_s3 import SMALL, artifact


@pytest.fixture(params=["md5-etags", "opaque-etags"])
def proxy(request: pytest.FixtureRequest, s3_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    p = FaultProxy(s3_endpoint, opaque_etags=request.param == "opaque-etags")
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    yield p
    p.close()


def test_publish_survives_5xx_and_dropped_connections(s3_bucket: str, s3c, proxy, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(s3, "TRANSFER", SMALL)
    root = artifact(tmp_path, big=11 * s3.MiB)  # 3 parts + 4 small files
    proxy.inject("500", "drop", "503", "drop", "500", method="PUT")
    proxy.inject("503", method="POST")  # create / complete multipart upload
    uri = publish(root, f"s3://{s3_bucket}/faulty", allow=LOCAL)
    assert sorted(proxy.injected) == sorted(["500", "drop", "503", "drop", "500", "503"])
    assert not proxy.faults
    assert verify_remote(uri) == []
    assert s3c.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_download_survives_cut_bodies_and_5xx(s3_bucket: str, s3c, proxy, tmp_path: Path) -> None:
    data = os.urandom(400_000)
    s3c.put_object(Bucket=s3_bucket, Key="m/model.safetensors", Body=data)
    s3c.put_object(Bucket=s3_bucket, Key="m/config.json", Body=b"{}")
    proxy.inject("truncate", "503", "drop", method="GET")
    path = fetch(
        f"s3://{s3_bucket}/m/",
        field="spec.model.source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        kind="model",
        allow=LOCAL,
    )
    assert "truncate" in proxy.injected and (path / "model.safetensors").read_bytes() == data


def test_persistent_failure_leaves_no_manifest(s3_bucket: str, s3c, proxy, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(s3, "TRANSFER", SMALL)
    uri = publish(artifact(tmp_path / "v1"), f"s3://{s3_bucket}/run", allow=LOCAL)
    assert verify_remote(uri) == []  # a complete earlier artifact
    proxy.fail_always("adapter_model.safetensors")  # every part of the big file fails
    with pytest.raises(s3.StorageError, match="adapter_model.safetensors.*after 5 attempts"):
        publish(artifact(tmp_path / "v2", big=11 * s3.MiB), f"s3://{s3_bucket}/run", allow=LOCAL)
    keys = object_keys(s3c, s3_bucket, "run/")
    assert "run/manifest.json" not in keys  # neither the new one nor the old one vouches for this prefix
    assert "run/adapter_model.safetensors" not in keys
    assert s3c.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []  # aborted
    assert "no manifest" in verify_remote(uri)[0]


def test_bytes_the_store_refuses_as_corrupted_fail_the_publish_cleanly(
    s3_bucket: str, s3c, proxy, tmp_path: Path
) -> None:
    """S3 answers 400 BadDigest when a body does not match its CRC: a transfer failure (not a setup problem)."""
    proxy.inject("baddigest", method="PUT")
    with pytest.raises(s3.StorageError, match=r"upload of s3://.*: BadDigest \(The CRC32 you specified"):
        publish(artifact(tmp_path), f"s3://{s3_bucket}/digest", allow=LOCAL)
    assert "digest/manifest.json" not in object_keys(s3c, s3_bucket, "digest/")
