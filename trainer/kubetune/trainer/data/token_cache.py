"""The tokenized-rows cache: one Arrow folder per dataset, keyed by everything that decides its rows.

The key is content hash + conversion settings + stage shape + cutoff/packing options + template +
tokenizer. :func:`first_on_node` makes a node's processes take turns on one dataset: the first
tokenizes and stores, the others wait on the lock file and then load (memory-mapped).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubetune.api.stages import DataShape
from kubetune.trainer.data.conversion import LoadedDataset
from kubetune.trainer.data.processors import ProcessorOptions, Tokens
from kubetune.trainer.data.report import DatasetReport
from kubetune.trainer.data.templates import Template
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)

CACHE_VERSION = "2"  # 2: Arrow folders (1: JSON files)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:
        digest.update(f"{getattr(tokenizer, 'name_or_path', '')}|{len(tokenizer)}".encode())
    for attr in ("eos_token", "bos_token", "add_bos_token", "chat_template"):
        digest.update(f"|{attr}={getattr(tokenizer, attr, None)}".encode())
    return digest.hexdigest()


def cache_key(
    loaded: LoadedDataset, shape: DataShape, opts: ProcessorOptions, template: Template, tokens: Tokens
) -> str:
    if not hasattr(tokens, "fingerprint"):
        tokens.fingerprint = tokenizer_fingerprint(tokens.tokenizer)  # type: ignore[attr-defined]
    parts = [
        CACHE_VERSION,
        loaded.sha256,
        loaded.settings,
        shape.value,
        repr(opts),
        template.fingerprint(),
        tokens.fingerprint,
    ]  # type: ignore[attr-defined]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def cache_path(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / "tokenized" / key[:2] / key


REPORT = "kubetune-report.json"  # next to the Arrow files: the dataset report and the columns some rows lack


def load(path: Path | None) -> tuple[list[dict], DatasetReport] | None:
    if path is None or not (path / REPORT).is_file():
        return None
    try:
        import datasets

        meta = json.loads((path / REPORT).read_text(encoding="utf-8"))
        sparse = set(meta.get("sparse", []))
        rows = datasets.load_from_disk(str(path)).to_list()
        if sparse:
            rows = [{k: v for k, v in row.items() if not (v is None and k in sparse)} for row in rows]
        return rows, DatasetReport.from_state(meta["report"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring unreadable tokenized cache %s: %s", path, exc)
        return None


def store(path: Path | None, rows: list[dict], report: DatasetReport) -> None:
    """Arrow files plus the report, written to a temporary folder and renamed into place (readers never see half)."""
    if path is None:
        return
    import shutil

    import datasets

    keys = [set(row) for row in rows]
    every = set.intersection(*keys) if keys else set()
    sparse = sorted(set().union(*keys) - every) if keys else []
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp))
    (tmp / REPORT).write_text(json.dumps({"report": report.state(), "sparse": sparse}), encoding="utf-8")
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


@contextmanager
def first_on_node(path: Path | None) -> Iterator[None]:
    """Main process first, per node: the first process to take ``path``'s lock tokenizes and writes the cache; the
    node's other processes wait for it, then find the cache. A process that dies releases the lock (flock)."""
    if path is None:
        yield
        return
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        yield
