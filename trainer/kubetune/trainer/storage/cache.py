"""The download cache: one folder per (source, resolved revision), filled once per node, shared safely.

Layout: ``<cache>/<group>/<entry>`` (groups: ``models``, ``datasets``, ``hub`` — the Hugging Face
Hub's own cache layout, one entry per repository), each entry beside a lease file
``<entry>.lease``.

- **Filling.** Whoever takes the entry's file lock first downloads (on a node that is local rank 0,
  which starts first); the others block on the lock and then find the completion marker. A folder is
  filled under a temporary name and renamed into place after the marker is written, so a partial
  download never counts as cached.
- **Leases.** A process that uses an entry holds a shared ``flock`` on its lease file until it exits
  (the kernel drops it even when the process is killed) and touches the file's mtime: that is the
  entry's last use.
- **Eviction.** With a size cap (``spec.resources.cacheSize`` through :func:`set_limit`, or
  ``$KUBETUNE_CACHE_MAX_SIZE``, a Kubernetes quantity such as ``200Gi``), every fill ends by evicting
  the least recently used entries until the cache fits. An entry is evicted only under an exclusive
  lock on its lease, which no process can take while another holds it shared: an entry in use is
  never evicted, and a process waiting to use an entry being evicted sees it gone and fills it again.
- **Unversioned sources** (an HTTP server that sends neither ETag nor Last-Modified) get a revision
  that changes once per ``$KUBETUNE_CACHE_UNVERSIONED_MAX_AGE_S`` (default a day): reused until then,
  downloaded again after, and the old copy is evicted like any other.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from kubetune.trainer.logging import get_logger

log = get_logger(__name__)

COMPLETE = ".kubetune-complete"
REVISION = ".kubetune-revision"
LEASE = ".lease"
LIMIT_ENV = "KUBETUNE_CACHE_MAX_SIZE"
UNVERSIONED_ENV = "KUBETUNE_CACHE_UNVERSIONED_MAX_AGE_S"

_limit: int | None = None
_held: dict[str, int] = {}  # lease path -> open fd holding LOCK_SH (for the life of the process)
_lock = threading.Lock()


def cache_key(*parts: str) -> str:
    """A short stable hash of the parts (source URI, revision or object listing)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text).strip("-.")[:80] or "x"


def parse_size(text: str | int | None) -> int | None:
    """Bytes in a Kubernetes quantity (``100Gi``, ``500M``, ``1e9``, ``12345``); None for None/empty."""
    if text is None or text == "":
        return None
    if isinstance(text, int):
        return text
    from kubetune.api.checks import parse_quantity

    return int(parse_quantity(str(text).strip()))


def set_limit(size: str | int | None) -> None:
    """The cap for this process (the runner passes ``spec.resources.cacheSize``); ``$KUBETUNE_CACHE_MAX_SIZE`` wins."""
    global _limit
    try:
        _limit = parse_size(size)
    except ValueError as exc:
        log.warning("cache: no size cap (%s)", exc)
        _limit = None


def limit() -> int | None:
    env = os.environ.get(LIMIT_ENV)
    if env:
        try:
            return parse_size(env)
        except ValueError as exc:
            log.warning("cache: ignoring %s (%s)", LIMIT_ENV, exc)
    return _limit


def unversioned_revision(now: float | None = None) -> str:
    """The revision of a source that has no validator: the same within one max-age window."""
    try:
        max_age = max(1, int(os.environ.get(UNVERSIONED_ENV, "86400")))
    except ValueError:
        max_age = 86400
    return f"unversioned-{int((time.time() if now is None else now) // max_age)}"


# ------------------------------------------------------------------------------------------------------ leases


def lease_path(entry: Path) -> Path:
    return entry.with_name(entry.name + LEASE)


def use(entry: Path) -> None:
    """Hold ``entry`` for the rest of this process (shared lock on its lease) and record the use now.

    Blocks while an evictor holds the lease; the caller checks afterwards that the entry is (still) there.
    """
    lease = lease_path(entry)
    key = str(lease)
    with _lock:
        if key in _held:
            _touch(_held[key])
            return
        try:
            lease.parent.mkdir(parents=True, exist_ok=True)
            _held[key] = _acquire_shared(lease)
        except OSError as exc:  # a read-only cache (a pre-filled volume): nothing can evict there either
            log.debug("cache: no lease on %s (%s)", entry, exc)


def _open(lease: Path, create: bool) -> int:
    """An fd of the lease file: read-write when we may (another pod's user may own it), else read-only."""
    try:
        return os.open(lease, os.O_RDWR | (os.O_CREAT if create else 0), 0o666)
    except PermissionError:
        return os.open(lease, os.O_RDONLY)


def _touch(fd: int) -> None:
    try:
        os.utime(fd)
    except OSError:
        pass  # not ours to touch: last use stays the owner's


def _acquire_shared(lease: Path) -> int:
    while True:
        fd = _open(lease, create=True)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            same = os.fstat(fd).st_ino == os.stat(lease).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # an evictor removed this lease file while we waited: take the new one
    _touch(fd)
    return fd


def release(entry: Path) -> None:
    """Stop holding ``entry`` (a process that ends releases everything it holds anyway)."""
    with _lock:
        fd = _held.pop(str(lease_path(entry)), None)
    if fd is not None:
        os.close(fd)


# ----------------------------------------------------------------------------------------------------- filling


def cached(target: Path, fill: Callable[[Path], None], *, marker: str = "") -> Path:
    """Return ``target`` (held for this process), calling ``fill(tmp_folder)`` first unless a complete copy is there.

    ``target`` is ``<cache>/<group>/<entry>``; after a fill the cache is trimmed to its cap.
    """
    use(target)
    if (target / COMPLETE).exists():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / COMPLETE).exists():
            return target  # another rank filled it while we waited
        tmp = target.with_name(f"{target.name}.partial-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            fill(tmp)
            (tmp / COMPLETE).write_text(marker + "\n", encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)  # a stale, incomplete copy from an older layout
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    trim(target.parent.parent)
    return target


# ---------------------------------------------------------------------------------------------------- eviction


@dataclass(frozen=True)
class Entry:
    path: Path
    size: int
    last_use: float


def _size(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except FileNotFoundError:
                continue
            total += st.st_size if not os.path.islink(os.path.join(root, name)) else 0
    return total


def entries(root: Path) -> Iterator[Entry]:
    """Every entry of the cache at ``root`` that has a lease file (the ones this module manages)."""
    if not root.is_dir():
        return
    for group in sorted(p for p in root.iterdir() if p.is_dir()):
        for lease in sorted(group.glob(f"*{LEASE}")):
            entry = lease.with_name(lease.name[: -len(LEASE)])
            if entry.is_dir():
                try:
                    last = lease.stat().st_mtime
                except FileNotFoundError:
                    continue
                yield Entry(entry, _size(entry), last)


def evict(entry: Path) -> bool:
    """Delete ``entry`` unless another process holds it; True when it is gone."""
    lease = lease_path(entry)
    if str(lease) in _held:
        return False
    try:
        fd = _open(lease, create=False)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False  # in use
            raise
        # Out of sight first (a rename is atomic), then deleted; the lease goes while we hold it, so a process
        # that was waiting for it sees a different (new) lease file and starts over.
        trash = entry.with_name(f"{entry.name}.evicted-{os.getpid()}-{time.monotonic_ns()}")
        try:
            entry.rename(trash)
        except OSError:
            return False  # gone already, or not ours to remove
        lease.unlink(missing_ok=True)
    finally:
        os.close(fd)
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _remove_leftovers(root: Path) -> None:
    """Folders a killed process left: half-deleted evictions, and partial fills nobody is filling any more."""
    from filelock import FileLock, Timeout

    for group in (p for p in root.iterdir() if p.is_dir()):
        for path in group.glob("*.evicted-*"):
            shutil.rmtree(path, ignore_errors=True)
        for path in group.glob("*.partial-*"):
            lock = FileLock(str(group / path.name.rsplit(".partial-", 1)[0]) + ".lock")
            try:
                with lock.acquire(timeout=0):
                    shutil.rmtree(path, ignore_errors=True)
            except Timeout:
                continue  # being filled right now


def trim(root: Path, cap: int | None = None) -> list[Path]:
    """Evict least-recently-used entries not in use until the cache at ``root`` fits ``cap``; return the evicted."""
    cap = limit() if cap is None else cap
    if cap is None:
        return []
    _remove_leftovers(root)
    found = sorted(entries(root), key=lambda e: e.last_use)
    total = sum(e.size for e in found)
    evicted = []
    for e in found:
        if total <= cap:
            break
        if evict(e.path):
            total -= e.size
            evicted.append(e.path)
            log.info(
                "cache: evicted %s (%.1f MiB, last used %s) to fit %.1f MiB",
                e.path,
                e.size / 2**20,
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.last_use)),
                cap / 2**20,
            )
    if total > cap:
        log.warning(
            "cache at %s holds %.1f MiB over its %.1f MiB cap: the rest is in use",
            root,
            (total - cap) / 2**20,
            cap / 2**20,
        )
    return evicted
