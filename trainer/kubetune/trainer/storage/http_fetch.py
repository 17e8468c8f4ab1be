"""Fetch one ``https://`` / ``http://`` file into the cache, retrying 5xx, 429 and cut-off bodies.

The revision is the server's ETag or Last-Modified; a server that gives neither is fetched again once
a day. Every connection goes to an address the URL guard checked, redirects included.
"""

from __future__ import annotations

import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from kubetune.api.redact import redact
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.cache import cache_key, cached, safe_name, unversioned_revision
from kubetune.trainer.storage.guard import Guard, check_url
from kubetune.trainer.storage.paths import check_relative

log = get_logger(__name__)

T = TypeVar("T")


def _http_open(url: str, *, method: str, field: str, allow: Iterable[str], timeout: float = 30) -> Any:
    """Open ``url`` with every connection pinned to a checked address and every redirect checked (see guard)."""
    opener = Guard.of(field=field, allow=allow).urllib_opener()
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "kubetune"})
    return opener.open(request, timeout=timeout)


class _ShortRead(Exception):
    """The server closed the body before its Content-Length (retried)."""


def _backoff(attempt: int) -> float:
    """Exponential backoff with jitter (``$KUBETUNE_HTTP_BACKOFF_S`` the first pause, capped at 8 s)."""
    base = float(os.environ.get("KUBETUNE_HTTP_BACKOFF_S", "0.25"))
    return min(8.0, base * 2**attempt) * (0.5 + random.random() / 2)


def _with_retries(url: str, *, field: str, action: Callable[[], T]) -> T:
    """Run ``action`` up to ``$KUBETUNE_S3_ATTEMPTS`` times while it fails with 5xx, 429 or a dropped connection."""
    tries = s3.attempts()
    for attempt in range(tries):
        try:
            return action()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise ConfigError(f"{field}: {url} answered HTTP {exc.code} {exc.reason}") from None
            problem: Exception = exc
        except (urllib.error.URLError, ConnectionError, TimeoutError, _ShortRead) as exc:
            problem = exc
        if attempt + 1 == tries:
            raise ConfigError(f"{field}: cannot download {url} after {tries} attempts: {problem}")
        pause = _backoff(attempt)
        log.warning("%s: %s; retrying in %.2fs", url, problem, pause)
        time.sleep(pause)
    raise AssertionError("unreachable")


def fetch_http(
    uri: str, *, cache_dir: Path, field: str, kind: str = "dataset", allow: Iterable[str] = (), **_: object
) -> Path:
    check_url(uri, field=field, allow=allow)
    name = unquote(urlsplit(uri).path.rstrip("/").rsplit("/", 1)[-1]) or "index"
    if "/" in name or name in {".", ".."}:
        raise ConfigError(f"{field}: {redact(uri)} does not end in a file name")
    check_relative(name, what=f"{field}: the file name of {redact(uri)}")

    def revision() -> str:
        try:
            with _http_open(uri, method="HEAD", field=field, allow=allow) as resp:
                return str(resp.headers.get("ETag") or resp.headers.get("Last-Modified") or "")
        except urllib.error.HTTPError as exc:
            if exc.code in (405, 501):
                return ""  # no HEAD support: no revision, download every time
            raise

    rev = _with_retries(uri, field=field, action=revision)
    if not rev:
        rev = unversioned_revision()  # reused for a day, then fetched again (the old copy is evicted in time)
    target = cache_dir / f"{kind}s" / f"http-{safe_name(name)}-{cache_key(uri, rev)}"

    def download(tmp: Path) -> None:
        def once() -> None:
            with _http_open(uri, method="GET", field=field, allow=allow) as resp, (tmp / name).open("wb") as fh:
                expected = resp.headers.get("Content-Length")
                size = 0
                while block := resp.read(1 << 20):
                    fh.write(block)
                    size += len(block)
            if expected is not None and int(expected) != size:
                raise _ShortRead(f"got {size} of {expected} bytes")

        _with_retries(uri, field=field, action=once)

    return cached(target, download, marker=f"{uri} {rev}") / name
