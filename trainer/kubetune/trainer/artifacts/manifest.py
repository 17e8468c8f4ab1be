"""manifest.json: provenance of an artifact folder, written last so its presence means complete.

It records the base model (and resolved revision), datasets with sha256, the resolved
config, final metrics, software versions, and the sha256 and size of every file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from kubetune.trainer.storage.manifest_format import (  # noqa: F401 - the format, re-exported
    CHECKPOINTS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    REQUIRED_KEYS,
    ManifestProblem,
    parse_manifest,
)
from kubetune.trainer.storage.paths import UnsafePath, contained, regular_file

MANIFEST_VERSION = 1
_PACKAGES = (
    "kubetune",
    "torch",
    "transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "deepspeed",
    "bitsandbytes",
    "safetensors",
    "tokenizers",
    "huggingface_hub",
    "boto3",
)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def file_entries(root: Path) -> list[dict[str, Any]]:
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST):
        entries.append(
            {"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path)}
        )
    return entries


def build_manifest(
    root: Path,
    *,
    job: dict[str, Any],
    model: dict[str, Any],
    datasets: list[dict[str, Any]],
    config: dict[str, Any],
    metrics: dict[str, Any],
) -> dict[str, Any]:
    return {
        "manifestVersion": MANIFEST_VERSION,
        "createdAt": datetime.now(UTC).isoformat(timespec="seconds"),
        "job": job,
        "baseModel": model,
        "datasets": datasets,
        "config": config,
        "metrics": metrics,
        "software": software_versions(),
        "files": file_entries(root),
    }


def write_manifest(root: Path, manifest: dict[str, Any]) -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a manifest."""
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    target = root / MANIFEST
    tmp.replace(target)
    return target


# ------------------------------------------------------------------------------------------------ verifying


def _listed_files(root: Path) -> list[str]:
    """Relative paths of everything under ``root`` that is not a folder (symlinks not followed, nothing read)."""
    out = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        base = Path(folder)
        out += [(base / n).relative_to(root).as_posix() for n in names]
        out += [(base / d).relative_to(root).as_posix() for d in dirs if (base / d).is_symlink()]
    return sorted(out)


def verify_dir(root: Path) -> list[str]:
    """Re-hash a local artifact folder against its manifest; return the problems (empty when it matches).

    Only regular files strictly inside ``root`` are read: an entry that is a symlink, a folder, a
    device (``/dev/zero``), a FIFO, or that leads outside ``root`` is reported, never followed.
    """
    if not root.is_dir():
        return [f"{root}: no such folder"]
    path = root / MANIFEST
    try:
        regular_file(path, what=MANIFEST)
    except FileNotFoundError:
        return [f"{path}: no manifest (the artifact is incomplete or not a kubetune output)"]
    except UnsafePath as exc:
        return [f"{path}: {exc}"]
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        return [f"{path}: {path.stat().st_size:,} bytes, over the {MAX_MANIFEST_BYTES:,} a manifest may have"]
    try:
        listed, problems = parse_manifest(path.read_bytes(), where=str(path))
    except ManifestProblem as exc:
        return [str(exc)]
    except OSError as exc:
        return [f"{path}: cannot read ({exc.strerror or exc})"]
    for rel, entry in listed.items():
        try:
            f = regular_file(contained(root, rel, what="path", symlinks=False), what=rel)
        except FileNotFoundError:
            problems.append(f"{rel}: missing")
            continue
        except UnsafePath as exc:
            problems.append(f"{rel}: {exc}")
            continue
        size = f.stat().st_size
        if size != entry["size"]:
            problems.append(f"{rel}: size {size} != {entry['size']}")
        elif sha256_file(f) != entry["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    for rel in _listed_files(root):
        if rel not in listed and rel != MANIFEST and not rel.startswith(CHECKPOINTS + "/"):
            problems.append(f"{rel}: not in the manifest")
    return problems
