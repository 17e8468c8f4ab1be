"""The download cache: one folder per (source, resolved revision), filled once per node.

Whoever takes the folder's file lock first downloads (on a node that is local rank 0, which
starts first); the others block on the lock and then find the completion marker. A folder is
filled under a temporary name and renamed into place after the marker is written, so a
partial download never counts as cached, and an interrupted one is redone.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

COMPLETE = ".kubetune-complete"
REVISION = ".kubetune-revision"


def cache_key(*parts: str) -> str:
    """A short stable hash of the parts (source URI, revision or object listing)."""
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "--", text).strip("-.")[:80] or "x"


def cached(target: Path, fill: Callable[[Path], None], *, marker: str = "") -> Path:
    """Return ``target``, calling ``fill(tmp_folder)`` first unless a complete copy is already there."""
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
    return target
