"""S3 upload, publish (manifest last), verify and cached download against moto over real HTTP."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from kubetune.trainer.artifacts.manifest import build_manifest, write_manifest
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.cache import COMPLETE, cached
from kubetune.trainer.storage.fetch import fetch
from kubetune.trainer.storage.publish import publish
from kubetune.trainer.storage.s3_verify import verify_remote
from tests.trainer.storage.conftest import LOCAL, object_keys, write_tree

SMALL = s3.TransferConfig(part_size=5 * s3.MiB, threshold=5 * s3.MiB, concurrency=4)


def artifact(tmp: Path, big: int = 0) -> Path:
    root = write_tree(
        tmp / "artifact",
        {
            "adapter_config.json": b'{"r": 8}',
            "tokenizer.json": b"{}" * 100,
            "sub/curves.csv": b"step,loss\n1,2.0\n",
        },
    )
    if big:
        (root / "adapter_model.safetensors").write_bytes(os.urandom(big))
    manifest = build_manifest(
        root, job={"name": "t"}, model={"source": "file:///m"}, datasets=[], config={}, metrics={"loss": 1.0}
    )
    write_manifest(root, manifest)
    return root


def test_upload_files_multipart_etag_and_content(s3_bucket: str, s3c, tmp_path: Path) -> None:
    data = os.urandom(11 * s3.MiB + 123)
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "small.bin").write_bytes(b"hello")
    sent = s3.upload_files(
        s3.client(), s3_bucket, [(tmp_path / "big.bin", "p/big.bin"), (tmp_path / "small.bin", "p/small.bin")], SMALL
    )
    assert sent == len(data) + 5
    head = s3c.head_object(Bucket=s3_bucket, Key="p/big.bin")
    assert head["ETag"].strip('"').endswith("-3")  # three 5 MiB parts
    assert s3c.get_object(Bucket=s3_bucket, Key="p/big.bin")["Body"].read() == data
    assert s3c.get_object(Bucket=s3_bucket, Key="p/small.bin")["Body"].read() == b"hello"
    assert s3c.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []


def test_publish_writes_everything_then_the_manifest_and_verify_passes(
    s3_bucket: str, s3c, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(s3, "TRANSFER", SMALL)
    root = artifact(tmp_path, big=6 * s3.MiB)
    order: list[str] = []
    real_put = s3.put_bytes

    def spy(client, bucket, key, data, **kw):
        order.append(key)
        return real_put(client, bucket, key, data, **kw)

    monkeypatch.setattr(s3, "put_bytes", spy)
    uri = publish(root, f"s3://{s3_bucket}/runs/a", allow=LOCAL)
    assert uri == f"s3://{s3_bucket}/runs/a"
    assert order[-1] == "runs/a/manifest.json"
    assert object_keys(s3c, s3_bucket) == sorted(
        f"runs/a/{p}"
        for p in [
            "adapter_config.json",
            "tokenizer.json",
            "sub/curves.csv",
            "adapter_model.safetensors",
            "manifest.json",
        ]
    )
    manifest = json.loads(s3c.get_object(Bucket=s3_bucket, Key="runs/a/manifest.json")["Body"].read())
    assert {f["path"] for f in manifest["files"]} >= {"adapter_model.safetensors", "sub/curves.csv"}
    assert verify_remote(uri) == []


def test_verify_remote_finds_tampering_missing_and_extra(s3_bucket: str, s3c, tmp_path: Path) -> None:
    uri = publish(artifact(tmp_path), f"s3://{s3_bucket}/out", allow=LOCAL)
    s3c.put_object(Bucket=s3_bucket, Key="out/tokenizer.json", Body=b"[]" * 100)  # same size, other bytes
    s3c.delete_object(Bucket=s3_bucket, Key="out/sub/curves.csv")
    s3c.put_object(Bucket=s3_bucket, Key="out/extra.bin", Body=b"x")
    s3c.put_object(Bucket=s3_bucket, Key="out/checkpoints/step-1/COMPLETE", Body=b"{}")  # not part of the artifact
    assert sorted(verify_remote(uri)) == [
        "extra.bin: not in the manifest",
        "sub/curves.csv: missing",
        "tokenizer.json: sha256 mismatch",
    ]
    s3c.delete_object(Bucket=s3_bucket, Key="out/manifest.json")
    assert "no manifest" in verify_remote(uri)[0]


def test_kubetune_artifacts_verify_cli(s3_bucket: str, tmp_path: Path, capsys) -> None:
    from kubetune.cli import main

    uri = publish(artifact(tmp_path), f"s3://{s3_bucket}/cli", allow=LOCAL)
    assert main(["artifacts", "verify", uri]) == 0
    assert "every file matches" in capsys.readouterr().out
    assert main(["artifacts", "verify", f"s3://{s3_bucket}/nothing-here"]) == 1


def test_republish_replaces_the_old_artifact_and_touches_nothing_else(s3_bucket: str, s3c, tmp_path: Path) -> None:
    old = artifact(tmp_path / "v1")
    (old / "model-00002-of-00002.safetensors").write_bytes(b"old shard")
    write_manifest(old, build_manifest(old, job={}, model={}, datasets=[], config={}, metrics={}))
    publish(old, f"s3://{s3_bucket}/o", allow=LOCAL)
    s3c.put_object(Bucket=s3_bucket, Key="o/checkpoints/step-5/COMPLETE", Body=b"{}")
    s3c.put_object(Bucket=s3_bucket, Key="o/someone-elses/file.txt", Body=b"not ours")
    uri = publish(artifact(tmp_path / "v2"), f"s3://{s3_bucket}/o", allow=LOCAL)
    keys = object_keys(s3c, s3_bucket, "o/")
    assert "o/model-00002-of-00002.safetensors" not in keys  # listed by the old manifest only: replaced
    assert {"o/checkpoints/step-5/COMPLETE", "o/someone-elses/file.txt"} <= set(keys)  # never listed: kept
    assert verify_remote(uri) == ["someone-elses/file.txt: not in the manifest"]


def test_fetch_s3_folder_into_the_cache_once(s3_bucket: str, s3c, tmp_path: Path, proxy) -> None:
    files = {"config.json": b'{"a": 1}', "model.safetensors": os.urandom(300_000), "nested/x.txt": b"x"}
    for rel, data in files.items():
        s3c.put_object(Bucket=s3_bucket, Key=f"models/m1/{rel}", Body=data)
    s3c.put_object(Bucket=s3_bucket, Key="models/m1-other/config.json", Body=b"{}")  # same prefix string, not inside
    cache = tmp_path / "cache"
    path = fetch(
        f"s3://{s3_bucket}/models/m1/",
        field="spec.model.source",
        work_dir=tmp_path,
        cache_dir=cache,
        kind="model",
        allow=LOCAL,
    )
    assert (path / COMPLETE).exists()
    assert {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()} == {*files, COMPLETE}
    assert all((path / rel).read_bytes() == data for rel, data in files.items())
    gets = sum(1 for m, _ in proxy.requests if m == "GET" and "list-type" not in _)
    again = fetch(
        f"s3://{s3_bucket}/models/m1",
        field="spec.model.source",
        work_dir=tmp_path,
        cache_dir=cache,
        kind="model",
        allow=LOCAL,
    )
    assert again == path
    assert sum(1 for m, _ in proxy.requests if m == "GET" and "list-type" not in _) == gets  # no object re-read
    s3c.put_object(Bucket=s3_bucket, Key="models/m1/config.json", Body=b'{"a": 2}')  # a new revision
    newer = fetch(
        f"s3://{s3_bucket}/models/m1/",
        field="spec.model.source",
        work_dir=tmp_path,
        cache_dir=cache,
        kind="model",
        allow=LOCAL,
    )
    assert newer != path and (newer / "config.json").read_bytes() == b'{"a": 2}'


def test_fetch_single_object_and_missing_prefix(s3_bucket: str, s3c, tmp_path: Path) -> None:
    s3c.put_object(Bucket=s3_bucket, Key="data/train.jsonl", Body=b'{"instruction": "a", "output": "b"}\n')
    path = fetch(
        f"s3://{s3_bucket}/data/train.jsonl",
        field="spec.datasets[0].source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        kind="dataset",
        allow=LOCAL,
    )
    assert path.name == "train.jsonl" and path.read_bytes().startswith(b'{"instruction"')
    with pytest.raises(ConfigError, match=r"spec.datasets\[1\].source: nothing at s3://.*/nope/"):
        fetch(
            f"s3://{s3_bucket}/nope/",
            field="spec.datasets[1].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
            kind="dataset",
            allow=LOCAL,
        )
    with pytest.raises(ConfigError, match="spec.model.source: S3 refused .*NoSuchBucket"):
        fetch(
            "s3://no-such-bucket-kt/m/",
            field="spec.model.source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
            allow=LOCAL,
        )


def test_a_failed_download_never_counts_as_cached(s3_bucket: str, s3c, tmp_path: Path, proxy) -> None:
    s3c.put_object(Bucket=s3_bucket, Key="m/config.json", Body=b"{}")
    s3c.put_object(Bucket=s3_bucket, Key="m/weights.bin", Body=os.urandom(50_000))
    proxy.fail_always("m/weights.bin")
    cache = tmp_path / "cache"
    with pytest.raises(s3.StorageError, match="weights.bin"):
        fetch(
            f"s3://{s3_bucket}/m/",
            field="spec.model.source",
            work_dir=tmp_path,
            cache_dir=cache,
            kind="model",
            allow=LOCAL,
        )
    leftovers = [p for p in (cache / "models").iterdir() if not p.name.endswith((".lock", ".lease"))]
    assert leftovers == []  # the partial folder is gone, nothing claims to be complete
    proxy.always.clear()
    path = fetch(f"s3://{s3_bucket}/m/", field="spec.model.source", work_dir=tmp_path, cache_dir=cache, allow=LOCAL)
    assert (path / COMPLETE).exists() and len((path / "weights.bin").read_bytes()) == 50_000


def test_cache_fills_once_while_other_ranks_wait(tmp_path: Path) -> None:
    calls: list[int] = []
    started = threading.Event()

    def fill(tmp: Path) -> None:
        calls.append(1)
        started.set()
        (tmp / "w").write_bytes(hashlib.sha256(b"x").digest())

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(cached(tmp_path / "t", fill))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert calls == [1] and len(set(results)) == 1 and (results[0] / "w").exists()
