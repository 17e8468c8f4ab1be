"""A store whose ETags are not MD5s (S3 with SSE-KMS or SSE-C default encryption): upload, publish,
download, checkpoints and ``kubetune artifacts verify`` all work, through a proxy in front of moto that
answers opaque ETags the way S3 does (moto itself answers an MD5 even for SSE-KMS)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kubetune.trainer.storage import checkpoints as ck
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.cache import COMPLETE
from kubetune.trainer.storage.fetch import fetch
from kubetune.trainer.storage.publish import publish
from kubetune.trainer.storage.s3_verify import verify_remote
from kubetune.trainer.storage.uploader import CheckpointUploader
from tests.trainer.storage.conftest import LOCAL, object_keys, write_tree
from tests.trainer.storage.test_checkpoints import make_checkpoint
from tests.trainer.storage.test_s3 import SMALL, artifact


def _etag(head: dict) -> str:
    return head["ETag"].strip('"')


def test_the_proxy_answers_etags_that_are_not_md5s(s3_bucket: str, sse_proxy) -> None:
    """The premise: through the proxy, neither a plain nor a multipart ETag can be recomputed from the bytes."""
    client = s3.client()
    data = b"adapter bytes"
    client.put_object(Bucket=s3_bucket, Key="p/one", Body=data)
    head = client.head_object(Bucket=s3_bucket, Key="p/one")
    assert len(_etag(head)) == 32 and _etag(head) != hashlib.md5(data).hexdigest()
    assert head["ServerSideEncryption"] == "aws:kms"


def test_publish_and_verify_with_opaque_etags(s3_bucket: str, sse_proxy, tmp_path: Path, monkeypatch, capsys) -> None:
    from kubetune.cli import main

    monkeypatch.setattr(s3, "TRANSFER", SMALL)
    root = artifact(tmp_path, big=11 * s3.MiB)  # one multipart file (3 parts) and small ones
    uri = publish(root, f"s3://{s3_bucket}/kms/run", allow=LOCAL)
    client = s3.client()
    big = client.head_object(Bucket=s3_bucket, Key="kms/run/adapter_model.safetensors")
    assert _etag(big).endswith("-3")
    digests = b"".join(
        hashlib.md5(chunk).digest() for chunk in _chunks(root / "adapter_model.safetensors", 5 * s3.MiB)
    )
    assert _etag(big) != f"{hashlib.md5(digests).hexdigest()}-3"  # not md5(part md5s)-N either
    assert verify_remote(uri) == []
    assert main(["artifacts", "verify", uri]) == 0
    assert "every file matches" in capsys.readouterr().out
    # tampering is still found: verify re-hashes with sha256, it never trusts an ETag
    client.put_object(Bucket=s3_bucket, Key="kms/run/tokenizer.json", Body=b"[]" * 100)
    assert verify_remote(uri) == ["tokenizer.json: sha256 mismatch"]


def _chunks(path: Path, size: int):
    with path.open("rb") as fh:
        while block := fh.read(size):
            yield block


def test_fetch_folder_and_single_object_with_opaque_etags(
    s3_bucket: str, sse_proxy, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(s3, "TRANSFER", SMALL)
    client = s3.client()
    files = {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(12 * s3.MiB), "nested/x.txt": b"x"}
    src = write_tree(tmp_path / "src", files)
    s3.upload_dir(client, src, s3_bucket, "models/m/", config=SMALL)  # the big one in parts: ETag "...-3"
    path = fetch(
        f"s3://{s3_bucket}/models/m/",
        field="spec.model.source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        kind="model",
        allow=LOCAL,
    )
    assert (path / COMPLETE).exists()
    assert all((path / rel).read_bytes() == data for rel, data in files.items())
    one = fetch(
        f"s3://{s3_bucket}/models/m/config.json",
        field="spec.datasets[0].source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "cache",
        kind="dataset",
        allow=LOCAL,
    )
    assert one.read_bytes() == files["config.json"]
    # ranged GETs of the big object were pinned to its (opaque) ETag, which the store accepted as its own
    ranged = [p for m, p in sse_proxy.requests if m == "GET" and p.endswith("model.safetensors")]
    assert len(ranged) >= 3


def test_checkpoints_with_opaque_etags(s3_bucket: str, sse_proxy, tmp_path: Path) -> None:
    out = f"s3://{s3_bucket}/kms-ckpt"
    for step in (1, 2):
        ck.upload_checkpoint(
            make_checkpoint(tmp_path / "w", step, size=6 * s3.MiB), out, step, allow=LOCAL, config=SMALL
        )
    assert [(c.step, c.complete) for c in ck.list_checkpoints(out, allow=LOCAL)] == [(1, True), (2, True)]
    dest = ck.download_checkpoint(ck.latest_complete_checkpoint(out, allow=LOCAL), tmp_path / "resume", allow=LOCAL)
    src = tmp_path / "w" / "checkpoint-2"
    assert all((dest / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())
    marker = json.loads(s3.get_bytes(s3.client(), s3_bucket, "kms-ckpt/checkpoints/step-2/COMPLETE"))
    assert marker["step"] == 2


def test_background_checkpoint_upload_with_opaque_etags(s3_bucket: str, s3c, sse_proxy, tmp_path: Path) -> None:
    uploader = CheckpointUploader(f"s3://{s3_bucket}/kms-bg", keep=1, allow=LOCAL, on_save=False)
    sse_proxy.inject("503", "drop", method="PUT")
    for step in (3, 4):
        uploader(make_checkpoint(tmp_path, step, size=200_000), step)
        uploader.wait()
    assert uploader.errors == []
    assert [(c.step, c.complete) for c in ck.list_checkpoints(f"s3://{s3_bucket}/kms-bg", allow=LOCAL)] == [(4, True)]
    assert "kms-bg/checkpoints/step-4/COMPLETE" in object_keys(s3c, s3_bucket, "kms-bg/")


def test_uploads_carry_a_flexible_checksum_the_store_keeps(s3_bucket: str, s3c, sse_proxy, tmp_path: Path) -> None:
    """Integrity no longer rests on the ETag: each object (each part) is sent with a CRC32 the store records."""
    (tmp_path / "big.bin").write_bytes(os.urandom(6 * s3.MiB))
    (tmp_path / "small.bin").write_bytes(b"hello")
    s3.upload_files(
        s3.client(), s3_bucket, [(tmp_path / "big.bin", "c/big.bin"), (tmp_path / "small.bin", "c/small")], SMALL
    )
    for key in ("c/big.bin", "c/small"):
        assert s3c.head_object(Bucket=s3_bucket, Key=key, ChecksumMode="ENABLED").get("ChecksumCRC32")


def test_bytes_corrupted_on_the_way_to_the_store_are_caught_when_read(
    s3_bucket: str, sse_proxy, tmp_path: Path
) -> None:
    """moto stores what it gets (S3 would refuse it with BadDigest); the download checks the stored CRC32."""
    client = s3.client()
    sse_proxy.inject("corrupt", method="PUT")
    s3.put_bytes(client, s3_bucket, "bad/data.jsonl", b'{"instruction": "a", "output": "b"}\n' * 50)
    with pytest.raises(s3.StorageError, match=r"s3://.*/bad/data.jsonl.*checksum"):
        fetch(
            f"s3://{s3_bucket}/bad/data.jsonl",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "cache",
            kind="dataset",
            allow=LOCAL,
        )


def test_the_checksum_algorithm_is_configurable_and_checked(
    s3_bucket: str, s3c, sse_proxy, tmp_path: Path, monkeypatch
) -> None:
    (tmp_path / "f.bin").write_bytes(os.urandom(6 * s3.MiB))
    monkeypatch.setenv("KUBETUNE_S3_CHECKSUM", "sha256")
    s3.upload_files(s3.client(), s3_bucket, [(tmp_path / "f.bin", "sha/f.bin")], SMALL)
    assert s3c.head_object(Bucket=s3_bucket, Key="sha/f.bin", ChecksumMode="ENABLED").get("ChecksumSHA256")
    monkeypatch.setenv("KUBETUNE_S3_CHECKSUM", "md5")
    with pytest.raises(s3.StorageError, match="KUBETUNE_S3_CHECKSUM='MD5' is not one of CRC32, "):
        s3.put_bytes(s3.client(), s3_bucket, "sha/x", b"x")
    try:
        import awscrt  # noqa: F401
    except ImportError:
        monkeypatch.setenv("KUBETUNE_S3_CHECKSUM", "CRC64NVME")
        with pytest.raises(s3.StorageError, match=r"CRC64NVME needs the awscrt package"):
            s3.put_bytes(s3.client(), s3_bucket, "sha/x", b"x")
