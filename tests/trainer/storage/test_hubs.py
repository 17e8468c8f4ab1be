"""hf:// and ms:// up to the network boundary (no network here), plus hf:// downloads from a local server
that speaks the Hub's HTTP API (revision → commit, tree listing, resolve with ranges): the Hub's own cache
layout, a download killed halfway resumes where it stopped, a cached snapshot is used with the server
stopped or HF_HUB_OFFLINE set; and the Hub push."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.cache import REVISION
from kubetune.trainer.storage.fetch import fetch
from kubetune.trainer.storage.hubs import push_to_hub
from tests.trainer.storage.conftest import LOCAL
from tests.trainer.storage.hubserver import COMMIT, LocalHub

FILES = {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}", "sub/notes.txt": b"n"}


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch, no_proxy_env: None) -> Iterator[LocalHub]:
    hub = LocalHub(dict(FILES))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: a user's offline setting must not hide the local Hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.close()


def test_hf_offline_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    import huggingface_hub.constants

    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # the network path, not the cache-only one
    with pytest.raises(ConfigError) as err:
        fetch(
            "hf://HuggingFaceTB/SmolLM2-135M-Instruct",
            field="spec.model.source",
            work_dir=tmp_path,
            cache_dir=tmp_path,
            kind="model",
            revision="main",
        )
    msg = str(err.value)
    assert msg.startswith("spec.model.source: the Hugging Face Hub at https://huggingface.co is unreachable")
    assert "HF_ENDPOINT" in msg and "s3://" in msg
    assert "huggingface.co" in no_network, "the Hub was tried (and found unreachable), not skipped"


def test_ms_offline_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: list[str]
) -> None:
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    with pytest.raises(
        ConfigError, match=r"^spec.model.source: ModelScope at https://www.modelscope.cn is unreachable"
    ):
        fetch(
            "ms://Qwen/Qwen2.5-0.5B-Instruct",
            field="spec.model.source",
            work_dir=tmp_path,
            cache_dir=tmp_path,
            kind="model",
        )
    assert "www.modelscope.cn" in no_network, "ModelScope was tried (and found unreachable), not skipped"


def test_ms_without_the_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(ConfigError, match="ms:// sources need the modelscope package: pip install modelscope"):
        fetch("ms://Qwen/Qwen2.5-0.5B-Instruct", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path)


def test_hf_download_pins_the_resolved_commit(local_hub: LocalHub, tmp_path: Path) -> None:
    path = fetch(
        "hf://org/tiny",
        field="spec.model.source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        kind="model",
        revision="main",
        allow=LOCAL,
    )
    assert (path / REVISION).read_text().strip() == COMMIT
    assert all((path / f).read_bytes() == d for f, d in FILES.items())
    assert "GET /api/models/org/tiny/revision/main" in local_hub.requests
    before = len(local_hub.requests)
    again = fetch(
        "hf://org/tiny",
        field="spec.model.source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        kind="model",
        revision=COMMIT,
        allow=LOCAL,
    )
    assert again == path  # same commit → the cached copy; only the revision lookup went out
    assert [r for r in local_hub.requests[before:] if "/resolve/" in r] == []


def test_hf_errors_name_the_field(local_hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="spec.model.source: repository org/missing not found .*HF_TOKEN"):
        fetch("hf://org/missing", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path, allow=LOCAL)
    with pytest.raises(ConfigError, match="spec.model.source: revision 'v9' does not exist in org/tiny"):
        fetch(
            "hf://org/tiny",
            field="spec.model.source",
            work_dir=tmp_path,
            cache_dir=tmp_path,
            revision="v9",
            allow=LOCAL,
        )
    with pytest.raises(ConfigError, match="Hugging Face Hub host '127.0.0.1' is a loopback"):
        fetch("hf://org/tiny", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path)


def test_push_to_hub_needs_a_token_and_a_reachable_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(ConfigError, match="spec.output.hub.credentialsSecret: HF_TOKEN is not set"):
        push_to_hub(tmp_path, repo="org/out", private=True)
    monkeypatch.setenv("HF_TOKEN", "hf_planted_token_value")
    with pytest.raises(ConfigError) as err:
        push_to_hub(tmp_path, repo="org/out", private=True)
    assert "spec.output.hub: the Hugging Face Hub at https://huggingface.co is unreachable" in str(err.value)
    assert "hf_planted_token_value" not in str(err.value)


MiB = 1 << 20


def _fetch_hf(tmp_path: Path, revision: str | None = "main") -> Path:
    return fetch(
        "hf://org/tiny",
        field="spec.model.source",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        kind="model",
        revision=revision,
        allow=LOCAL,
    )


def test_hf_uses_the_hub_cache_layout(local_hub: LocalHub, tmp_path: Path) -> None:
    path = _fetch_hf(tmp_path)
    assert path == tmp_path / "c" / "hub" / "models--org--tiny" / "snapshots" / COMMIT
    assert (tmp_path / "c" / "hub" / "models--org--tiny" / "refs" / "main").read_text() == COMMIT
    assert (path / "config.json").is_symlink()  # into blobs/, shared by every revision that has the file


def test_a_cached_snapshot_is_used_with_the_hub_stopped(
    local_hub: LocalHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _fetch_hf(tmp_path)
    local_hub.close()  # nothing listens on the endpoint any more
    assert _fetch_hf(tmp_path) == path  # "main" resolved through the cache's refs/main
    assert (path / REVISION).read_text().strip() == COMMIT
    assert _fetch_hf(tmp_path, revision=COMMIT) == path
    with pytest.raises(
        ConfigError,
        match=r"^spec.model.source: the Hugging Face Hub at http://127.0.0.1:\d+ is "
        r"unreachable .*org/tiny@v2 is not in the cache",
    ):
        _fetch_hf(tmp_path, revision="v2")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert _fetch_hf(tmp_path) == path
    with pytest.raises(ConfigError, match="HF_HUB_OFFLINE is set and org/other@main is not in the cache"):
        fetch(
            "hf://org/other",
            field="spec.model.source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
            revision="main",
            allow=LOCAL,
        )


def _incomplete(cache: Path) -> list[Path]:
    return list((cache / "hub").rglob("*.incomplete"))


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, no_proxy_env: None):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    started: list[LocalHub] = []

    def start(files: dict[str, bytes]) -> LocalHub:
        hub = LocalHub(files)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        started.append(hub)
        return hub

    yield start
    for hub in started:
        hub.close()


def test_a_dropped_connection_resumes_with_a_range(hub_env, tmp_path: Path) -> None:
    weights = os.urandom(24 * MiB)
    hub = hub_env({**FILES, "model.safetensors": weights})
    hub.cut_after("model.safetensors", 15 * MiB)
    path = _fetch_hf(tmp_path)
    assert (path / "model.safetensors").read_bytes() == weights
    gets = [r for name, r in hub.ranges if name == "model.safetensors"]
    assert len(gets) == 2 and gets[0] is None and gets[1].startswith("bytes=")
    kept = int(gets[1][len("bytes=") : -1])
    assert 0 < kept <= 15 * MiB  # what the client had saved when the connection dropped
    assert hub.sent["model.safetensors"] == len(weights) + (15 * MiB - kept)  # measured at the server: no restart
    assert _incomplete(tmp_path / "c") == []


def test_a_killed_download_resumes_where_it_stopped(hub_env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A pod killed mid-download: the next one fetches only what was missing — finished files are kept by the Hub
    cache, and the file in flight continues from its partial blob with a Range request (bytes counted at the server)."""
    # huggingface_hub writes in 10 MB chunks: the second shard is stopped after one chunk is on disk
    shards = {f"model-0000{i}-of-00002.safetensors": os.urandom(size) for i, size in ((1, 6 * MiB), (2, 24 * MiB))}
    first, second = shards
    hub = hub_env({**FILES, **shards})
    cache = tmp_path / "c"
    hub.stall_after(second, 16 * MiB)
    blob = cache / "hub" / "models--org--tiny" / "blobs" / hashlib.sha1(shards[first]).hexdigest()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys; from pathlib import Path; from kubetune.trainer.storage.fetch import fetch; "
                "fetch('hf://org/tiny', field='spec.model.source', work_dir=Path('.'), "
                "cache_dir=Path(sys.argv[1]), kind='model', revision='main', allow=['127.0.0.1'])"
            ),
            str(cache),
        ],
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        assert hub.stalled.wait(120), "the download never reached the stall point"
        deadline = time.monotonic() + 60
        # the other shard finished and was moved into blobs/, and part of this one is on disk
        while not (blob.exists() and any(p.stat().st_size for p in _incomplete(cache))):
            assert time.monotonic() < deadline and child.poll() is None, child.stderr.read().decode()[-2000:]
            time.sleep(0.05)
    finally:
        child.kill()  # a pod killed mid-download
        child.wait()
    partial = sum(p.stat().st_size for p in _incomplete(cache))
    assert 0 < partial < len(shards[second])
    hub.release()
    import huggingface_hub.constants

    # offline, a half-downloaded snapshot is not mistaken for a model
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match="org/tiny@main is only partly in the cache"):
        _fetch_hf(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    sent = dict(hub.sent)
    path = _fetch_hf(tmp_path)
    assert all((path / name).read_bytes() == data for name, data in shards.items())
    assert hub.sent.get(first, 0) == sent.get(first, 0) == len(shards[first])  # not sent again
    assert hub.ranges[-1] == (second, f"bytes={partial}-")  # resumed, not restarted
    assert hub.sent[second] - sent[second] == len(shards[second]) - partial
    assert _incomplete(cache) == []


@pytest.mark.slow
def test_kubetune_run_with_a_cached_hub_model_and_the_hub_stopped(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, no_proxy_env: None
) -> None:
    """hf:// end to end: the first run downloads from the (local) Hub; the second trains with the Hub gone."""
    import json
    import shutil

    import huggingface_hub.constants

    from kubetune.cli import main
    from tests.conftest import ROOT, write_job

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    hub = LocalHub.of_folder(tiny_model_dir)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    shutil.copy(ROOT / "examples" / "data" / "identity.json", tmp_path / "identity.json")

    def run(out: str) -> dict:
        job = write_job(
            tmp_path / f"{out}.yaml",
            {
                "model": {"source": "hf://org/tiny", "revision": "main"},
                "datasets": [{"name": "identity", "source": "file://identity.json"}],
                "method": {"type": "lora", "lora": {"rank": 4}},
                "training": {"maxSteps": 1, "batchSize": 2, "cutoffLen": 32},
                "output": {"uri": f"file://{tmp_path / out}"},
            },
        )
        assert main(["run", str(job), "--cache-dir", str(tmp_path / "cache"), "--allow-private-url", "127.0.0.1"]) == 0
        return json.loads((tmp_path / out / "manifest.json").read_text())

    online = run("online")
    assert any("/resolve/" in r for r in hub.requests)
    hub.close()
    offline = run("offline")
    for manifest in (online, offline):
        assert manifest["baseModel"]["source"] == "hf://org/tiny"
        assert manifest["baseModel"]["revision"] == COMMIT  # the resolved commit, not "main"
