"""Write a finished local artifact folder to its output URI, manifest.json last.

Registry ``PUBLISHERS`` by scheme (a remote publisher is named and imported on first use). Every publisher
copies all files first and the manifest after them, so a reader that sees the manifest sees a complete artifact.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from kubetune.api.redact import redact
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.fetch import by_scheme
from kubetune.trainer.storage.manifest_format import MANIFEST
from kubetune.trainer.storage.paths import contained
from kubetune.trainer.storage.uris import Uri, file_path, pvc_path

Publisher = Callable[..., str]


def _publish_file(local: Path, uri: str, *, work_dir: Path, **_: object) -> str:
    return f"file://{_copy_tree(local, file_path(uri, work_dir))}"


def _copy_tree(local: Path, target: Path) -> Path:
    """Copy every file of ``local`` into ``target``, manifest last; no file lands outside ``target``.

    ``target`` may be shared (a PVC): a symlink planted there that leads out is refused, not followed.
    """
    target.mkdir(parents=True, exist_ok=True)
    (target / MANIFEST).unlink(missing_ok=True)  # an old manifest must not vouch for new files
    for src in sorted(p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST):
        rel = src.relative_to(local).as_posix()
        dst = contained(target, rel, what=f"spec.output.uri: {target}: the artifact file")
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = contained(target, rel + ".partial", what=f"spec.output.uri: {target}: the artifact file")
        shutil.copyfile(src, tmp)
        tmp.replace(dst)
    if (local / MANIFEST).exists():
        tmp = contained(target, f".{MANIFEST}.partial", what=f"spec.output.uri: {target}: the manifest")
        shutil.copyfile(local / MANIFEST, tmp)
        tmp.replace(target / MANIFEST)
    return target


def _publish_pvc(local: Path, uri: str, **_: object) -> str:
    """pvc://claim/path: written inside the claim's mount only (no absolute path, ``..`` or symlink out)."""
    _copy_tree(local, pvc_path(uri, field="spec.output.uri"))
    return uri


PUBLISHERS: dict[str, Publisher | str] = {
    "file": _publish_file,
    "pvc": _publish_pvc,
    "s3": "kubetune.trainer.storage.s3_publish:publish_s3",  # imported on first use (boto3)
}


def publish(local: Path, uri: str, *, work_dir: str | Path = ".", **options: object) -> str:
    """Copy ``local`` to ``uri``; return the final URI (absolute for file://)."""
    scheme = Uri.parse(uri, field="spec.output.uri").scheme
    publisher = by_scheme(PUBLISHERS, scheme)
    if publisher is None:
        raise ConfigError(
            f"spec.output.uri: cannot write to {scheme}:// ({redact(uri)}); known: {', '.join(sorted(PUBLISHERS))}"
        )
    return publisher(local, uri, work_dir=Path(work_dir), **options)
