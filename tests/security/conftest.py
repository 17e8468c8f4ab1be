"""Fixtures for the adversarial tests: a counting HTTP server and a resolver that changes its answer."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REBIND = "rebind.kubetune.test"
PUBLIC = "93.184.216.34"


class CountingServer:
    """Serves files from a folder on ``host`` (all interfaces by default), counting requests by path."""

    def __init__(self, root: Path, host: str = "0.0.0.0", redirects: dict[str, str] | None = None):
        self.hits: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *a, **kw):
                super().__init__(*a, directory=str(root), **kw)

            def log_message(self, *args: object) -> None:
                pass

            def send_head(self):
                server.hits.append(self.path)
                target = (redirects or {}).get(self.path)
                if target:
                    self.send_response(302)
                    self.send_header("Location", target)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                return super().send_head()

        self.httpd = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "")


@pytest.fixture
def served(tmp_path: Path, no_proxy_env: None) -> Iterator[CountingServer]:
    root = tmp_path / "site"
    root.mkdir()
    (root / "data.jsonl").write_text('{"instruction": "hi", "output": "there"}\n')
    server = CountingServer(root)
    try:
        yield server
    finally:
        server.close()


class Rebinding:
    """``socket.getaddrinfo`` for *.rebind.kubetune.test: a public address first, then ``then`` every time after."""

    def __init__(self, then: str, first: str = PUBLIC):
        self.then, self.first = then, first
        self.calls: list[str] = []

    def answer(self, host: str) -> str:
        self.calls.append(host)
        return self.first if len(self.calls) == 1 else self.then


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch):
    """Install a rebinding resolver; call it with the address every look-up after the first one answers."""
    real = socket.getaddrinfo

    def install(then: str, first: str = PUBLIC) -> Rebinding:
        state = Rebinding(then, first)

        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            name = host.decode() if isinstance(host, bytes) else str(host)
            if name.rstrip(".").endswith(REBIND):
                address = state.answer(name)
                return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port or 0)))]
            return real(host, port, family, type, proto, flags)

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return state

    return install
