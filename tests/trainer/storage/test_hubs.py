"""hf:// and ms:// up to the network boundary (no network here), plus a full hf:// download from a local
server that speaks the Hub's HTTP API (revision → commit, tree listing, resolve), and the Hub push."""

from __future__ import annotations

import hashlib
import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.cache import REVISION
from kubetune.trainer.storage.fetch import fetch
from kubetune.trainer.storage.hubs import push_to_hub
from tests.trainer.storage.conftest import LOCAL

COMMIT = "0123456789abcdef0123456789abcdef01234567"
FILES = {"config.json": b'{"model_type": "llama"}', "tokenizer.json": b"{}", "sub/notes.txt": b"n"}


class LocalHub:
    """Just enough of the Hub API for huggingface_hub.snapshot_download: one repo, one branch."""

    def __init__(self, repo: str = "org/tiny"):
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_GET(self) -> None:
                path = unquote(urlsplit(self.path).path)
                hub.requests.append(f"{self.command} {path}")
                prefix = f"/api/models/{repo}/"
                if path.startswith("/api/models/") and not path.startswith(prefix):
                    return self.reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                if path.startswith(prefix + "revision/"):
                    rev = path[len(prefix + "revision/"):]
                    if rev not in ("main", COMMIT):
                        return self.reply(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
                    info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in FILES]}
                    return self.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
                if path.startswith(prefix + "tree/"):
                    tree = [{"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                            for f, d in FILES.items()]
                    return self.reply(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
                resolve = f"/{repo}/resolve/{COMMIT}/"
                if path.startswith(resolve) and path[len(resolve):] in FILES:
                    data = FILES[path[len(resolve):]]
                    return self.reply(200, data, {"X-Repo-Commit": COMMIT,
                                                  "ETag": f'"{hashlib.sha1(data).hexdigest()}"'})
                return self.reply(404, b"{}", {"X-Error-Code": "EntryNotFound"})

            do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def local_hub(monkeypatch: pytest.MonkeyPatch, no_proxy_env: None) -> Iterator[LocalHub]:
    hub = LocalHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants

    # huggingface_hub reads HF_HUB_OFFLINE once, at import: a user's offline setting must not hide the local Hub
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    yield hub
    hub.close()


def test_hf_offline_is_a_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    with pytest.raises(ConfigError) as err:
        fetch("hf://HuggingFaceTB/SmolLM2-135M-Instruct", field="spec.model.source", work_dir=tmp_path,
              cache_dir=tmp_path, kind="model", revision="main")
    msg = str(err.value)
    assert msg.startswith("spec.model.source: the Hugging Face Hub at https://huggingface.co is unreachable")
    assert "HF_ENDPOINT" in msg and "s3://" in msg


def test_ms_offline_is_a_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODELSCOPE_ENDPOINT", raising=False)
    with pytest.raises(ConfigError, match=r"^spec.model.source: ModelScope at https://www.modelscope.cn is unreachable"):
        fetch("ms://Qwen/Qwen2.5-0.5B-Instruct", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path,
              kind="model")


def test_ms_without_the_package_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "modelscope", None)
    with pytest.raises(ConfigError, match="ms:// sources need the modelscope package: pip install modelscope"):
        fetch("ms://Qwen/Qwen2.5-0.5B-Instruct", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path)


def test_hf_download_pins_the_resolved_commit(local_hub: LocalHub, tmp_path: Path) -> None:
    path = fetch("hf://org/tiny", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path / "c",
                 kind="model", revision="main", allow=LOCAL)
    assert (path / REVISION).read_text().strip() == COMMIT
    assert all((path / f).read_bytes() == d for f, d in FILES.items())
    assert "GET /api/models/org/tiny/revision/main" in local_hub.requests
    before = len(local_hub.requests)
    again = fetch("hf://org/tiny", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path / "c",
                  kind="model", revision=COMMIT, allow=LOCAL)
    assert again == path  # same commit → the cached copy; only the revision lookup went out
    assert [r for r in local_hub.requests[before:] if "/resolve/" in r] == []


def test_hf_errors_name_the_field(local_hub: LocalHub, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="spec.model.source: repository org/missing not found .*HF_TOKEN"):
        fetch("hf://org/missing", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path, allow=LOCAL)
    with pytest.raises(ConfigError, match="spec.model.source: revision 'v9' does not exist in org/tiny"):
        fetch("hf://org/tiny", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path, revision="v9",
              allow=LOCAL)
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
