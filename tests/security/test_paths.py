"""Path escapes: nothing is written or read outside its destination (S3, HTTP, pvc://, configmap://, publish, run)."""

from __future__ import annotations

import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api import trainer_config
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.paths import UnsafePath, check_relative, contained

ESCAPES = [
    "/etc/passwd",
    "//etc/passwd",
    "../x",
    "a/../../x",
    "a/..",
    "..",
    ".",
    "",
    "a//b",
    "./a",
    "a/./b",
    "a\x00b",
    "a\nb",
    "C:x",
    "c:/windows",
    "a\\..\\..\\x",
    "\\\\server\\share\\x",
    "..\\x",
]


@pytest.mark.parametrize("rel", ESCAPES, ids=repr)
def test_escaping_names_are_refused(tmp_path: Path, rel: str) -> None:
    with pytest.raises(UnsafePath):
        contained(tmp_path, rel)


def test_a_symlink_inside_the_destination_cannot_lead_out(tmp_path: Path) -> None:
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    dest.mkdir()
    outside.mkdir()
    (dest / "link").symlink_to(outside)
    (dest / "file").symlink_to(outside / "f")
    for rel in ("link", "link/x", "link/a/b", "file"):
        with pytest.raises(UnsafePath, match="outside"):
            contained(dest, rel)
    (dest / "inner").mkdir()
    (dest / "ok").symlink_to(dest / "inner")
    assert contained(dest, "ok/x") == (dest / "inner" / "x").resolve()
    with pytest.raises(UnsafePath, match="symlink"):
        contained(dest, "ok/x", symlinks=False)


def test_plain_names_stay_plain(tmp_path: Path) -> None:
    assert contained(tmp_path, "a/b.safetensors") == tmp_path.resolve() / "a" / "b.safetensors"
    assert contained(tmp_path, "dir/") == tmp_path.resolve() / "dir"
    assert check_relative("x y/ü.json") == "x y/ü.json"


_parts = st.sampled_from(["a", "b", "..", ".", "", "/", "\\", "\x00", "C:", "~", "%2e%2e", "link", "x y", "é"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    pieces=st.lists(st.one_of(_parts, st.text(alphabet=string.printable, max_size=6)), max_size=8),
    seps=st.lists(st.sampled_from(["/", "//", "\\", ""]), max_size=8),
)
def test_any_key_lands_strictly_inside_or_is_refused(tmp_path: Path, pieces: list[str], seps: list[str]) -> None:
    """Fuzz: whatever the key (an S3 remainder, a manifest path), the result is strictly inside dest or refused."""
    dest = tmp_path / "dest"
    dest.mkdir(exist_ok=True)
    if not (dest / "link").exists():
        (dest / "link").symlink_to(tmp_path)
    rel = "".join(p + (seps[i] if i < len(seps) else "/") for i, p in enumerate(pieces))
    try:
        out = contained(dest, rel)
    except UnsafePath:
        return
    root = dest.resolve()
    assert out != root and out.is_relative_to(root), (rel, out)
    assert root.joinpath(*rel.rstrip("/").split("/")).resolve() == out


# ------------------------------------------------------------------------------------------------ S3 folders


def test_s3_folder_download_never_writes_outside(s3_bucket: str, tmp_path: Path) -> None:
    """A key remainder starting with '/' (``prefix//abs/path``) used to make ``dest / rel`` absolute."""
    import boto3

    from kubetune.trainer.storage.fetch import fetch

    victim = tmp_path / "victim"
    victim.mkdir()
    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    client.put_object(Bucket=s3_bucket, Key="model/config.json", Body=b"{}")
    client.put_object(Bucket=s3_bucket, Key=f"model/{victim}/evil.pth", Body=b"import os")  # model//tmp/.../evil.pth
    cache = tmp_path / "cache"
    with pytest.raises(ConfigError, match="absolute|empty component|outside"):
        fetch(
            f"s3://{s3_bucket}/model/",
            field="spec.model.source",
            work_dir=tmp_path,
            cache_dir=cache,
            kind="model",
            allow=["127.0.0.1"],
        )
    assert not (victim / "evil.pth").exists()
    assert not any(p.name == "evil.pth" for p in tmp_path.rglob("*"))


# --------------------------------------------------------------------------------------------------- pvc://


@pytest.fixture
def pvc_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from kubetune.trainer.storage import uris

    root = tmp_path / "mnt-pvc"
    (root / "claim" / "models" / "m").mkdir(parents=True)
    (root / "claim" / "models" / "m" / "config.json").write_text("{}")
    (tmp_path / "secret").write_text("node secret")
    (root / "claim" / "escape").symlink_to(tmp_path)
    monkeypatch.setattr(uris, "PVC_ROOT", str(root))
    return root


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://claim//etc/passwd",
        "pvc://claim/../../secret",
        "pvc://claim/models/../../x",
        "pvc://claim/escape/secret",
        "pvc://../claim/models",
        "pvc:///etc",
        "pvc://Claim_/x",
        "pvc://claim/a\x00b",
    ],
    ids=repr,
)
def test_pvc_reads_stay_on_the_claim(pvc_root: Path, tmp_path: Path, uri: str) -> None:
    from kubetune.trainer.storage.fetch import fetch

    with pytest.raises(ConfigError) as err:
        fetch(uri, field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path / "c")
    assert str(err.value).startswith("spec.model.source") and "\n" not in str(err.value)


def test_pvc_read_inside_the_claim_works(pvc_root: Path, tmp_path: Path) -> None:
    from kubetune.trainer.storage.fetch import fetch

    (pvc_root / "claim" / "blobs").mkdir()
    (pvc_root / "claim" / "blobs" / "abc").write_text("{}")
    (pvc_root / "claim" / "models" / "m" / "tokenizer.json").symlink_to(pvc_root / "claim" / "blobs" / "abc")
    path = fetch("pvc://claim/models/m/", field="f", work_dir=tmp_path, cache_dir=tmp_path / "c")
    assert (path / "config.json").is_file() and (path / "tokenizer.json").read_text() == "{}"


def test_a_folder_on_the_claim_cannot_link_off_it(pvc_root: Path, tmp_path: Path) -> None:
    """A model folder on a shared claim with a link planted to the node's files is refused, not read."""
    from kubetune.trainer.storage.fetch import fetch

    (pvc_root / "claim" / "models" / "m" / "tokenizer.json").symlink_to(tmp_path / "secret")
    with pytest.raises(ConfigError, match="outside"):
        fetch("pvc://claim/models/m", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path / "c")


@pytest.mark.parametrize("uri", ["pvc://claim//tmp/out", "pvc://claim/../../out", "pvc://claim/escape/out"])
def test_pvc_publish_stays_on_the_claim(pvc_root: Path, tmp_path: Path, uri: str) -> None:
    from kubetune.trainer.storage.publish import publish

    local = tmp_path / "artifact"
    local.mkdir()
    (local / "adapter.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError):
        publish(local, uri)
    assert not (tmp_path / "out").exists()


def test_publish_refuses_a_planted_symlink_in_the_target(pvc_root: Path, tmp_path: Path) -> None:
    """A shared claim may hold a link planted by an earlier job: it is refused, never written through."""
    from kubetune.trainer.storage.publish import publish

    outside = tmp_path / "outside"
    outside.mkdir()
    target = pvc_root / "claim" / "out"
    target.mkdir()
    (target / "sub").symlink_to(outside)
    (target / ".manifest.json.partial").symlink_to(outside / "m.json")
    local = tmp_path / "artifact"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "adapter.safetensors").write_bytes(b"x")
    with pytest.raises(ConfigError, match="outside"):
        publish(local, "pvc://claim/out")
    assert list(outside.iterdir()) == []
    (target / "sub").unlink()
    (local / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="outside"):
        publish(local, "pvc://claim/out")
    assert list(outside.iterdir()) == []


# ------------------------------------------------------------------------------------------------ configmap://


def test_configmap_keys_stay_in_their_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kubetune.trainer.storage.fetch import fetch

    root = tmp_path / "cm"
    (root / "reg").mkdir(parents=True)
    (tmp_path / "secret").write_text("x")
    (root / "reg" / "info.json").symlink_to(tmp_path / "secret")  # a key that leads out of the ConfigMap
    monkeypatch.setattr(trainer_config, "CONFIGMAP_ROOT", str(root))
    monkeypatch.setenv("KUBETUNE_CONFIGMAP_ROOT", str(root))  # what the trainer read before the shared constant
    with pytest.raises(ConfigError, match="outside"):
        fetch("configmap://reg/info.json", field="f", work_dir=tmp_path, cache_dir=tmp_path / "c")
    for uri in ("configmap://../secret/x", "configmap://reg/..", "configmap:///x", "configmap://Bad_Name/k"):
        with pytest.raises(ConfigError):
            fetch(uri, field="spec.datasetRegistry.source", work_dir=tmp_path, cache_dir=tmp_path / "c")
    (root / "reg" / "ok.json").write_text("{}")
    assert fetch("configmap://reg/ok.json", field="f", work_dir=tmp_path, cache_dir=tmp_path / "c").read_text() == "{}"


# ----------------------------------------------------------------------------------------------------- http


@pytest.mark.parametrize("path", ["/a%2F..%2F..%2Fsecret", "/%2e%2e", "/x%00y", "/a%5C..%5Cb"])
def test_http_file_names_cannot_escape_the_cache(tmp_path: Path, path: str) -> None:
    from kubetune.trainer.storage.fetch import fetch

    with pytest.raises(ConfigError):
        fetch(
            f"http://127.0.0.1:1{path}",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
            allow=["127.0.0.1"],
        )


# ------------------------------------------------------------------------------------------- metadata as paths


@pytest.mark.parametrize(
    "field, value",
    [
        ("namespace", "/tmp/evil"),
        ("namespace", "../.."),
        ("namespace", "a\n"),
        ("name", "job\n"),
        ("name", "../x"),
        ("namespace", "a/b"),
        ("namespace", "x" * 64),
    ],
)
def test_metadata_is_a_dns_label_before_it_becomes_a_path(tmp_path: Path, field: str, value: str) -> None:
    import yaml

    from kubetune.cli import main

    doc = yaml.safe_load(Path("examples/quickstart.yaml").read_text())
    doc["metadata"][field] = value
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(job)]) == 1
    assert main(["run", str(job), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert not (tmp_path / "cache").exists()


def test_name_validators_use_full_matches() -> None:
    from kubetune.api.names import is_dns_label, is_dns_subdomain

    assert is_dns_label("job-1") and is_dns_subdomain("a.b-c")
    for bad in ("job\n", "Job", "-a", "a-", "", "a" * 64, "a.b", "a b", "é"):
        assert not is_dns_label(bad), bad
    for bad in ("a..b", ".a", "a.", "a\n", "a" * 254, "A.b"):
        assert not is_dns_subdomain(bad), bad


# ------------------------------------------------------------------------------------------------------- hub


@pytest.mark.parametrize("folder", ["../../..", "//../x", "data/../../x", "a\x00b"])
def test_hub_dataset_folder_cannot_leave_the_snapshot(tmp_path: Path, folder: str) -> None:
    from types import SimpleNamespace

    from kubetune.trainer.storage.fetch import fetch

    with pytest.raises(ConfigError, match=r"spec\.datasets\[0\]\.source: folder"):
        fetch(
            "hf://org/data",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
            kind="dataset",
            dataset=SimpleNamespace(folder=folder),
        )


# -------------------------------------------------------------------------------------------- checkpoint restore


@pytest.mark.parametrize("rel", ["../../outside.bin", "/etc/hostname", "a//b"])
def test_checkpoint_restore_checks_marker_paths(tmp_path: Path, rel: str) -> None:
    import json

    from kubetune.trainer.storage.checkpoints import COMPLETE, download_checkpoint

    (tmp_path / "outside.bin").write_bytes(b"x")
    ckpt = tmp_path / "out" / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    (ckpt / "adapter.safetensors").write_bytes(b"w")
    (ckpt / COMPLETE).write_text(
        json.dumps({"step": 2, "files": [{"path": "adapter.safetensors", "size": 1}, {"path": rel, "size": 1}]})
    )
    with pytest.raises(UnsafePath):
        download_checkpoint(f"file://{ckpt}", tmp_path / "restore" / "x")


def test_checkpoint_restore_refuses_symlinks(tmp_path: Path) -> None:
    import json

    from kubetune.trainer.storage.checkpoints import COMPLETE, download_checkpoint

    (tmp_path / "secret").write_text("node secret")
    ckpt = tmp_path / "out" / "checkpoints" / "step-2"
    ckpt.mkdir(parents=True)
    (ckpt / "optimizer.pt").symlink_to(tmp_path / "secret")
    (ckpt / COMPLETE).write_text(json.dumps({"step": 2, "files": [{"path": "optimizer.pt", "size": 11}]}))
    with pytest.raises(UnsafePath, match="symlink"):
        download_checkpoint(f"file://{ckpt}", tmp_path / "restore")
    assert not (tmp_path / "restore" / "optimizer.pt").exists()


# ------------------------------------------------------------------------------------- dataset_info.json entries


@pytest.mark.parametrize(
    "base",
    [
        "s3://bkt/reg/dataset_info.json",
        "https://h.example/r/dataset_info.json",
        "pvc://claim/reg/dataset_info.json",
        "configmap://reg/dataset_info.json",
    ],
)
@pytest.mark.parametrize(
    "name",
    [
        "/etc/passwd",
        "../../x.json",
        "file:///var/run/secrets/token",
        "pvc://c/x",
        "configmap://other/key",
        "a//b.json",
        "a\\..\\b.json",
    ],
)
def test_a_remote_registry_cannot_point_at_the_pods_files(base: str, name: str) -> None:
    from kubetune.trainer.data.registry import join_relative
    from kubetune.trainer.errors import DataError

    with pytest.raises(DataError):
        join_relative(base, name)


def test_registries_still_name_their_neighbours_and_remote_data() -> None:
    from kubetune.trainer.data.registry import join_relative

    assert join_relative("s3://bkt/reg/dataset_info.json", "d/a.json") == "s3://bkt/reg/d/a.json"
    assert join_relative("https://h/r/dataset_info.json", "s3://other/a.json") == "s3://other/a.json"
    assert join_relative("file:///r/dataset_info.json", "/abs/a.json") == "file:///abs/a.json"  # the user's own file
