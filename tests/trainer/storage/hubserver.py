"""A local server that speaks just enough of the Hugging Face Hub API for ``huggingface_hub.snapshot_download``.

One repository, one branch (``main`` → :data:`COMMIT`): revision lookup, tree listing, and ``resolve``
with ETag, ``X-Repo-Commit`` and byte ranges (``Range: bytes=N-`` → 206), so the client can resume.
It counts the body bytes it sends per file (``sent``) and keeps every request line with its Range
(``requests``, ``ranges``). ``cut_after(name, n)`` closes the connection of the next GET of that file
after ``n`` bytes (a dropped connection); ``stall_after(name, n)`` sends the first ``n`` bytes and then
holds the connection until ``release()`` (or until the client goes away), so a test can kill a
download halfway; ``stalled`` is set once that point is reached.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class LocalHub:
    def __init__(self, files: dict[str, bytes], repo: str = "org/tiny", kind: str = "models"):
        self.files = files
        self.repo = repo
        self.requests: list[str] = []
        self.ranges: list[tuple[str, str | None]] = []
        self.sent: dict[str, int] = {}
        self.stalled = threading.Event()
        self._gate = threading.Event()
        self._gate.set()
        self._stall: tuple[str, int] | None = None
        self._cut: tuple[str, int] | None = None
        self._lock = threading.Lock()
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
                with hub._lock:
                    hub.requests.append(f"{self.command} {path}")
                prefix = f"/api/{kind}/{repo}/"
                if path.startswith(f"/api/{kind}/") and not path.startswith(prefix):
                    return self.reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                if path.startswith(prefix + "revision/"):
                    rev = path[len(prefix + "revision/") :]
                    if rev not in ("main", COMMIT):
                        return self.reply(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
                    info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in hub.files]}
                    return self.reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"})
                if path.startswith(prefix + "tree/"):
                    tree = [
                        {"type": "file", "path": f, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                        for f, d in hub.files.items()
                    ]
                    return self.reply(200, json.dumps(tree).encode(), {"Content-Type": "application/json"})
                resolve = f"/{'' if kind == 'models' else kind + '/'}{repo}/resolve/"
                if path.startswith(resolve):
                    rev, _, name = path[len(resolve) :].partition("/")
                    if rev in ("main", COMMIT) and name in hub.files:
                        return self.send_file(name, hub.files[name])
                return self.reply(404, b"{}", {"X-Error-Code": "EntryNotFound"})

            def send_file(self, name: str, data: bytes) -> None:
                headers = {
                    "X-Repo-Commit": COMMIT,
                    "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                    "Accept-Ranges": "bytes",
                }
                start = 0
                wanted = self.headers.get("Range")
                if self.command == "GET":
                    with hub._lock:
                        hub.ranges.append((name, wanted))
                if wanted and wanted.startswith("bytes=") and wanted[6:].split("-")[0].isdigit():
                    start = min(int(wanted[6:].split("-")[0]), len(data))
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                self.send_response(206 if wanted else 200)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                stall, drop = hub._stall, hub._cut
                cut = len(body)
                if stall and stall[0] == name and start < stall[1]:
                    cut = stall[1] - start
                elif drop and drop[0] == name:
                    hub._cut = None
                    cut = max(0, drop[1] - start)
                try:
                    for offset in range(0, cut, 1 << 16):
                        block = body[offset : min(cut, offset + (1 << 16))]
                        self.wfile.write(block)
                        with hub._lock:
                            hub.sent[name] = hub.sent.get(name, 0) + len(block)
                    if cut < len(body) and hub._stall is None:  # dropped
                        self.wfile.flush()
                        self.close_connection = True
                        self.connection.shutdown(2)
                        return
                    if cut < len(body):
                        self.wfile.flush()
                        hub.stalled.set()
                        hub._gate.wait(120)
                        self.close_connection = True
                        return
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

            do_HEAD = do_GET

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @classmethod
    def of_folder(cls, folder: Path, repo: str = "org/tiny") -> LocalHub:
        return cls(
            {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}, repo
        )

    def cut_after(self, name: str, n: int) -> None:
        self._cut = (name, n)

    def stall_after(self, name: str, n: int) -> None:
        self._stall = (name, n)
        self._gate.clear()

    def release(self) -> None:
        self._stall = None
        self._gate.set()

    def close(self) -> None:
        self.release()
        self.httpd.shutdown()
        self.httpd.server_close()
