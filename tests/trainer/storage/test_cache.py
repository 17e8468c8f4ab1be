"""The shared download cache: a size cap, least recently used out first, never an entry another process uses
(two real processes share one cache folder); an unversioned HTTP source is reused, then replaced and evicted."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from kubetune.trainer.storage import cache
from kubetune.trainer.storage.cache import COMPLETE, cached, evict, trim
from kubetune.trainer.storage.fetch import fetch
from tests.trainer.storage.conftest import LOCAL

KB = 1000


def fill_with(size: int, calls: list[str] | None = None):
    def fill(tmp: Path) -> None:
        if calls is not None:
            calls.append(tmp.name)
        (tmp / "data.bin").write_bytes(os.urandom(size))

    return fill


def entry(root: Path, name: str, size: int = 10 * KB) -> Path:
    """An entry filled and used by this process, then let go (as when a run ends)."""
    path = cached(root / "models" / name, fill_with(size))
    cache.release(path)
    return path


@pytest.fixture(autouse=True)
def no_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cache.LIMIT_ENV, raising=False)
    monkeypatch.setattr(cache, "_limit", None)


def test_least_recently_used_goes_first_and_the_cap_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = entry(tmp_path, "a"), entry(tmp_path, "b")
    cache.use(a)  # a used again: b is now the least recently used
    cache.release(a)
    monkeypatch.setenv(cache.LIMIT_ENV, str(25 * KB))
    c = entry(tmp_path, "c")  # 30 KB > 25 KB: one must go
    assert not b.exists() and a.exists() and c.exists()
    assert not cache.lease_path(b).exists()
    assert sum(e.size for e in cache.entries(tmp_path)) <= 25 * KB


def test_entries_in_use_by_this_process_stay(tmp_path: Path) -> None:
    held = cached(tmp_path / "models" / "held", fill_with(KB))
    assert evict(held) is False and (held / COMPLETE).exists()
    assert trim(tmp_path, cap=0) == [] and held.exists()
    cache.release(held)
    assert trim(tmp_path, cap=0) == [held] and not held.exists()


HOLDER = """
import sys
from pathlib import Path
from kubetune.trainer.storage.cache import cached

def fill(tmp):
    (tmp / "data.bin").write_bytes(b"x" * int(sys.argv[3]))
    with open(sys.argv[2], "a") as log:
        log.write("filled\\n")

path = cached(Path(sys.argv[1]), fill)
print(path, flush=True)
sys.stdin.read()  # hold the entry (as a training run does) until the test closes stdin
"""


def holder(target: Path, log: Path, size: int = 10 * KB) -> subprocess.Popen[str]:
    """Another process that fetches ``target`` into the shared cache and uses it until told to stop."""
    return subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(target), str(log), str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )


def stop(proc: subprocess.Popen[str]) -> None:
    proc.stdin.close()
    assert proc.wait(60) == 0


def test_an_entry_another_process_uses_is_never_evicted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "fills.log"
    old = tmp_path / "models" / "old"
    other = holder(old, log)  # first in, so least recently used — but in use
    try:
        assert other.stdout.readline().strip() == str(old)
        b = entry(tmp_path, "b")
        monkeypatch.setenv(cache.LIMIT_ENV, str(25 * KB))
        c = entry(tmp_path, "c")
        assert old.exists() and not b.exists() and c.exists()  # b went instead of the older, busy one
        assert trim(tmp_path, cap=0) == [c] and old.exists()  # even a cap of 0 leaves it
    finally:
        stop(other)
    assert trim(tmp_path) == [] and old.exists()  # fits 25 KB now
    entry(tmp_path, "d", 20 * KB)
    assert not old.exists()  # free now, and the least recently used
    assert log.read_text() == "filled\n"


def test_two_processes_fill_an_entry_once_and_share_it(tmp_path: Path) -> None:
    log = tmp_path / "fills.log"
    target = tmp_path / "datasets" / "shared"
    procs = [holder(target, log) for _ in range(2)]
    try:
        assert [p.stdout.readline().strip() for p in procs] == [str(target)] * 2
        assert evict(target) is False  # both hold it
    finally:
        for p in procs:
            stop(p)
    assert log.read_text() == "filled\n"
    assert evict(target) is True and not target.exists()


def test_a_process_waiting_for_an_entry_being_evicted_fills_it_again(tmp_path: Path) -> None:
    """The race: B asks for an entry while A evicts it; B waits, sees it gone, and downloads it again."""
    import fcntl

    log = tmp_path / "fills.log"
    target = entry(tmp_path, "raced")
    lease = cache.lease_path(target)
    fd = os.open(lease, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)  # an evictor has it
    proc = holder(target, log)
    try:
        target.rename(target.with_name("raced.evicted-test"))  # what evict() does under the lock
        lease.unlink()
        os.close(fd)
        assert proc.stdout.readline().strip() == str(target)
        assert (target / COMPLETE).exists() and log.read_text() == "filled\n"
        assert evict(target) is False  # held under the new lease
    finally:
        stop(proc)


def test_leftovers_of_killed_processes_are_cleared(tmp_path: Path) -> None:
    entry(tmp_path, "kept")
    partial = tmp_path / "models" / "gone.partial-99999"
    partial.mkdir(parents=True)
    (partial / "half.bin").write_bytes(b"x")
    half_evicted = tmp_path / "models" / "x.evicted-1-2"
    half_evicted.mkdir()
    trim(tmp_path, cap=10**12)
    assert not partial.exists() and not half_evicted.exists() and (tmp_path / "models" / "kept").exists()


def test_parse_size() -> None:
    assert cache.parse_size("100Gi") == 100 * 2**30 and cache.parse_size("1.5G") == 1_500_000_000
    assert cache.parse_size("12345") == 12345 and cache.parse_size(None) is None
    with pytest.raises(ValueError):
        cache.parse_size("lots")


# ------------------------------------------------------------------------------------- unversioned http sources


class NoValidators:
    """An HTTP server that sends neither ETag nor Last-Modified."""

    def __init__(self, body: bytes):
        self.body = body
        self.gets = 0
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()

            def do_GET(self) -> None:
                server.gets += 1
                self.do_HEAD()
                self.wfile.write(server.body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def no_validators(no_proxy_env: None) -> Iterator[NoValidators]:
    server = NoValidators(b'{"instruction": "a", "output": "b"}\n' * 300)
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def test_an_unversioned_source_is_reused_then_replaced_and_evicted(
    no_validators: NoValidators, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def get() -> Path:
        return fetch(
            f"{no_validators.url}/train.jsonl",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
            kind="dataset",
            allow=LOCAL,
        )

    first = get()
    assert get() == first and no_validators.gets == 1  # not downloaded again on the next run
    cache.release(first.parent)  # that run ended
    day = int(os.environ.get(cache.UNVERSIONED_ENV, "86400"))
    from kubetune.trainer.storage import http_fetch

    monkeypatch.setattr(http_fetch, "unversioned_revision", lambda: cache.unversioned_revision(time.time() + day))
    monkeypatch.setenv(cache.LIMIT_ENV, str(len(no_validators.body) + 1000))
    second = get()
    assert second != first and no_validators.gets == 2
    assert not first.parent.exists()  # the old copy was evicted to fit the cap
    assert [e.path for e in cache.entries(tmp_path / "c")] == [second.parent]
