"""`kubetune artifacts verify` reads only regular files inside the artifact and says one line per problem."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from kubetune.cli import main


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def artifact(root: Path, files: dict[str, bytes], extra: list[dict] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    entries = []
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        entries.append({"path": rel, "size": len(data), "sha256": _sha(data)})
    manifest = {"manifestVersion": 1, "files": entries + (extra or [])}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def verify(capsys: pytest.CaptureFixture[str], target: str) -> tuple[int, list[str]]:
    code = main(["artifacts", "verify", target])
    out = capsys.readouterr()
    return code, [line for line in (out.err + out.out).splitlines() if line]


def test_a_good_artifact_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = artifact(tmp_path / "a", {"adapter.safetensors": b"w" * 10, "sub/config.json": b"{}"})
    code, lines = verify(capsys, str(root))
    assert code == 0 and lines == [f"{root}: every file matches manifest.json"]


@pytest.mark.parametrize(
    "rel",
    [
        "../outside.bin",
        "/etc/hostname",
        "a/../../outside.bin",
        "//etc/hostname",
        "./adapter.safetensors",
        "a\\..\\..\\outside.bin",
    ],
)
def test_entries_outside_the_artifact_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], rel: str
) -> None:
    data = b"outside"
    (tmp_path / "outside.bin").write_bytes(data)
    root = artifact(
        tmp_path / "a", {"adapter.safetensors": b"w"}, extra=[{"path": rel, "size": len(data), "sha256": _sha(data)}]
    )
    code, lines = verify(capsys, str(root))
    assert code == 1
    assert any(repr(rel) in line and "refusing" in line for line in lines), lines
    assert not any("every file matches" in line for line in lines)


def test_symlinked_entries_are_refused_not_followed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = b"outside"
    (tmp_path / "outside.bin").write_bytes(data)
    root = artifact(
        tmp_path / "a",
        {"adapter.safetensors": b"w"},
        extra=[
            {"path": "link.bin", "size": len(data), "sha256": _sha(data)},
            {"path": "inner.bin", "size": 1, "sha256": _sha(b"w")},
        ],
    )
    (root / "link.bin").symlink_to(tmp_path / "outside.bin")
    (root / "inner.bin").symlink_to(root / "adapter.safetensors")
    code, lines = verify(capsys, str(root))
    assert code == 1
    assert any("link.bin" in line and "refusing" in line for line in lines)
    assert any("inner.bin" in line and "symlink" in line for line in lines)


def test_devices_and_fifos_are_never_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A /dev/zero entry used to make verify read forever."""
    root = artifact(
        tmp_path / "a",
        {"adapter.safetensors": b"w"},
        extra=[
            {"path": "zero", "size": 1 << 40, "sha256": "0" * 64},
            {"path": "fifo", "size": 1, "sha256": "0" * 64},
            {"path": "folder", "size": 0, "sha256": _sha(b"")},
        ],
    )
    (root / "zero").symlink_to("/dev/zero")
    os.mkfifo(root / "fifo")
    (root / "folder").mkdir()
    (root / "stray").symlink_to("/dev/zero")  # not listed: reported, not hashed
    code, lines = verify(capsys, str(root))
    assert code == 1
    assert any("zero" in line and "refusing" in line for line in lines)
    assert any("fifo" in line and "not a regular file" in line for line in lines)
    assert any("folder" in line and "a folder" in line for line in lines)
    assert any("stray: not in the manifest" in line for line in lines)


@pytest.mark.parametrize(
    "content, expected",
    [
        ("{}", "missing 'manifestVersion', 'files'"),
        ("[]", "a JSON list, not an object"),
        ('"x"', "a JSON str, not an object"),
        ("not json", "not valid JSON"),
        ("[" * 100_000, "not valid JSON"),
        ('{"manifestVersion": 1}', "missing 'files'"),
        ('{"manifestVersion": 1, "files": {}}', "'files' is a dict, not a list"),
        ('{"manifestVersion": 1, "files": []}', "'files' is empty"),
        ('{"manifestVersion": 1, "files": [1]}', "files[0]: not an object"),
        ('{"manifestVersion": 1, "files": [{"path": "a"}]}', "'size' is missing"),
        ('{"manifestVersion": 1, "files": [{"path": "a", "size": 1, "sha256": "zz"}]}', "'sha256' is missing or not"),
        ('{"manifestVersion": 1, "files": [{"path": 3, "size": 1}]}', "'path' is missing or not a string"),
    ],
)
def test_malformed_manifests_are_one_line_each(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    root = tmp_path / "a"
    root.mkdir()
    (root / "adapter.safetensors").write_bytes(b"w")
    (root / "manifest.json").write_text(content)
    code, lines = verify(capsys, str(root))
    assert code == 1
    assert any(expected in line for line in lines), lines
    assert not any("Traceback" in line or "every file matches" in line for line in lines)


def test_a_manifest_that_is_a_folder_or_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "a"
    (root / "manifest.json").mkdir(parents=True)
    code, lines = verify(capsys, str(root))
    assert code == 1 and len(lines) == 1 and "is a folder" in lines[0]
    code, lines = verify(capsys, str(tmp_path / "nope"))
    assert code == 1 and len(lines) == 1 and "no such folder" in lines[0]
    code, lines = verify(capsys, "s3:///key")
    assert code == 1 and len(lines) == 1 and "names no bucket" in lines[0]


def test_unreachable_endpoint_and_missing_credentials_are_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.servers import free_port

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    code, lines = verify(capsys, "s3://bucket/out")
    assert code == 1 and len(lines) == 1 and "credentials" in lines[0], lines
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("KUBETUNE_S3_ATTEMPTS", "1")
    code, lines = verify(capsys, "s3://bucket/out")
    assert code == 1 and len(lines) == 1 and "Traceback" not in lines[0], lines


def test_s3_manifest_entries_are_checked_too(s3_bucket: str, capsys: pytest.CaptureFixture[str]) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    client.put_object(Bucket=s3_bucket, Key="out/manifest.json", Body=b"{}")
    code, lines = verify(capsys, f"s3://{s3_bucket}/out")
    assert code == 1 and any("not a kubetune manifest" in line for line in lines)
    client.put_object(
        Bucket=s3_bucket,
        Key="out/manifest.json",
        Body=json.dumps({"manifestVersion": 1, "files": [{"path": "../x", "size": 1, "sha256": "0" * 64}]}).encode(),
    )
    code, lines = verify(capsys, f"s3://{s3_bucket}/out")
    assert code == 1 and any("'..'" in line for line in lines)
