"""A fault-injecting HTTP proxy for S3 tests: forwards to moto, but fails the requests it is told to.

``proxy.inject("500", "503", "baddigest", "drop", "truncate", "corrupt", method="PUT")`` makes the next
matching requests answer 500 InternalError, 503 SlowDown, 400 BadDigest (S3's answer to bytes that do not
match their checksum), close the connection without an answer, send half a body, or flip one byte of the
uploaded body on its way to the store; ``proxy.fail_always(match=...)``
fails every request whose path contains ``match``.

``opaque_etags=True`` answers ETags the way S3 does for SSE-KMS and SSE-C objects: stable per object
version but not the MD5 of the bytes (moto answers an MD5 even for an SSE-KMS bucket). The proxy maps
them back on the way in (``If-Match``, the part list of CompleteMultipartUpload), as S3 would accept
its own ETags; they keep the real ETag's length, so bodies keep theirs.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import re
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ERRORS = {
    "500": (500, b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"),
    "503": (503, b"<Error><Code>SlowDown</Code><Message>injected</Message></Error>"),
    "baddigest": (
        400,
        (
            b"<Error><Code>BadDigest</Code><Message>The CRC32 you specified did not match the calculated "
            b"checksum.</Message></Error>"
        ),
    ),
}


_ETAG = re.compile(r"[0-9a-f]{32}(?:-\d+)?")
_ETAG_HEADERS = ("if-match", "if-none-match", "x-amz-copy-source-if-match", "x-amz-copy-source-if-none-match")


class FaultProxy:
    def __init__(self, upstream: str, *, opaque_etags: bool = False):
        self.opaque_etags = opaque_etags
        self.real_of: dict[str, str] = {}  # opaque ETag -> moto's
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.faults: deque[tuple[str, str | None]] = deque()
        self.always: list[str] = []
        self.requests: list[tuple[str, str]] = []
        self.injected: list[str] = []
        self.lock = threading.Lock()
        self.gate = threading.Event()  # clear it to hold every request until it is set again
        self.gate.set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                proxy.gate.wait(60)
                fault = proxy._take(self.command, self.path)
                if fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault in ERRORS:
                    status, payload = ERRORS[fault]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                if proxy.opaque_etags:
                    headers = {k: proxy._to_real(v) if k.lower() in _ETAG_HEADERS else v for k, v in headers.items()}
                    if self.command == "POST" and b"<ETag>" in body:  # CompleteMultipartUpload's part list
                        body = proxy._to_real(body.decode()).encode()
                        if "Content-MD5" in headers:
                            headers["Content-MD5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
                if fault == "corrupt" and body:
                    mid = len(body) // 2
                    body = body[:mid] + bytes([body[mid] ^ 0xFF]) + body[mid + 1 :]
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                if proxy.opaque_etags and b"ETag>" in data:
                    data = re.sub(
                        rb"(<ETag>(?:&quot;|\")?)([0-9a-f]{32}(?:-\d+)?)",
                        lambda m: m.group(1) + proxy._opaque(m.group(2).decode()).encode(),
                        data,
                    )
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() == "etag" and proxy.opaque_etags:
                        v = _ETAG.sub(lambda m: proxy._opaque(m.group(0)), v)
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                if proxy.opaque_etags:
                    self.send_header("x-amz-server-side-encryption", "aws:kms")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if fault == "truncate" and self.command == "GET" and len(data) > 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def _opaque(self, real: str) -> str:
        """An ETag of the same shape that is not the MD5 of anything sent (``-N`` kept for multipart)."""
        head, dash, parts = real.partition("-")
        opaque = hashlib.sha256(b"sse-kms:" + head.encode()).hexdigest()[:32] + dash + parts
        with self.lock:
            self.real_of[opaque] = real
        return opaque

    def _to_real(self, text: str) -> str:
        return _ETAG.sub(lambda m: self.real_of.get(m.group(0), m.group(0)), text)

    def inject(self, *kinds: str, method: str | None = None) -> None:
        with self.lock:
            self.faults.extend((k, method) for k in kinds)

    def fail_always(self, match: str) -> None:
        self.always.append(match)

    def _take(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests.append((method, path))
            if any(m in path for m in self.always):
                self.injected.append("500")
                return "500"
            if self.faults and self.faults[0][1] in (None, method):
                kind = self.faults.popleft()[0]
                self.injected.append(kind)
                return kind
        return None

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
