"""Write a finished local artifact folder to its output URI, manifest.json last.

Registry ``PUBLISHERS`` by scheme. Every publisher copies all files first and the
manifest after them, so a reader that sees the manifest sees a complete artifact.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from kubetune.trainer.artifacts.manifest import MANIFEST
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.uris import Uri, file_path

Publisher = Callable[..., str]


def _publish_file(local: Path, uri: str, *, work_dir: Path, **_: object) -> str:
    target = file_path(uri, work_dir)
    target.mkdir(parents=True, exist_ok=True)
    (target / MANIFEST).unlink(missing_ok=True)  # an old manifest must not vouch for new files
    for src in sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST):
        dst = target / src.relative_to(local)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".partial")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    if (local / MANIFEST).exists():
        shutil.copyfile(local / MANIFEST, target / f".{MANIFEST}.partial")
        (target / f".{MANIFEST}.partial").replace(target / MANIFEST)
    return f"file://{target}"


def _publish_pvc(local: Path, uri: str, **kwargs: object) -> str:
    parsed = Uri.parse(uri)
    _publish_file(local, f"file:///mnt/pvc/{parsed.rest}", work_dir=Path("/"))
    return uri


PUBLISHERS: dict[str, Publisher] = {"file": _publish_file, "pvc": _publish_pvc}


def publish(local: Path, uri: str, *, work_dir: str | Path = ".", **options: object) -> str:
    """Copy ``local`` to ``uri``; return the final URI (absolute for file://)."""
    scheme = Uri.parse(uri).scheme
    if scheme not in PUBLISHERS:
        from kubetune.trainer.storage.fetch import _load_optional_fetchers

        _load_optional_fetchers()
    if scheme not in PUBLISHERS:
        raise ConfigError(f"spec.output.uri: cannot write to {scheme}:// ({uri}); known: {', '.join(sorted(PUBLISHERS))}")
    return PUBLISHERS[scheme](local, uri, work_dir=Path(work_dir), **options)
