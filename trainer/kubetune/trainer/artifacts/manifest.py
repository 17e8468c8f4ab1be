"""manifest.json: provenance of an artifact folder, written last so its presence means complete.

It records the base model (and resolved revision), datasets with sha256, the resolved
config, final metrics, software versions, and the sha256 and size of every file.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from kubetune.trainer.storage.paths import UnsafePath, check_relative, contained, regular_file

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_PACKAGES = ("kubetune", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "deepspeed", "bitsandbytes",
             "safetensors", "tokenizers", "huggingface_hub", "boto3")
CHECKPOINTS = "checkpoints"  # periodic checkpoints may live beside an artifact; they are not part of it


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
        entries.append({"path": path.relative_to(root).as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path)})
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

_SHA256 = re.compile(r"[0-9a-f]{64}")
REQUIRED_KEYS = ("manifestVersion", "files")
MAX_MANIFEST_BYTES = 64 << 20  # a manifest lists files, it is never this big: refuse before reading it


class ManifestProblem(ValueError):
    """The manifest itself is unusable (not JSON, not an object, missing keys): nothing can be verified."""


def parse_manifest(data: bytes | str, *, where: str = MANIFEST) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The file entries of a manifest by path, and the problems of single entries.

    Raises :class:`ManifestProblem` (one line) when the manifest cannot vouch for anything. An entry
    whose path is absolute, has ``..``, ``.``, an empty part, a backslash or a control character, or
    whose size/sha256 is malformed, is a problem of its own and is not checked further.
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestProblem(f"{where}: {len(data):,} bytes, over the {MAX_MANIFEST_BYTES:,} a manifest may have")
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ManifestProblem(f"{where}: not valid JSON ({str(exc)[:200]})") from None
    if not isinstance(manifest, dict):
        raise ManifestProblem(f"{where}: a JSON {type(manifest).__name__}, not an object; not a kubetune manifest")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ManifestProblem(f"{where}: missing {', '.join(repr(k) for k in missing)}; not a kubetune manifest "
                              "(or a truncated one)")
    files = manifest["files"]
    if not isinstance(files, list):
        raise ManifestProblem(f"{where}: 'files' is a {type(files).__name__}, not a list")
    if not files:
        raise ManifestProblem(f"{where}: 'files' is empty; a kubetune artifact always lists its files")
    entries: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for i, entry in enumerate(files):
        label = f"{where}: files[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{label}: not an object")
            continue
        rel, size, digest = entry.get("path"), entry.get("size"), entry.get("sha256")
        if not isinstance(rel, str):
            problems.append(f"{label}: 'path' is missing or not a string")
            continue
        try:
            check_relative(rel, what="path")
        except UnsafePath as exc:
            problems.append(f"{label}: {exc}")
            continue
        if rel.rstrip("/") == MANIFEST:
            problems.append(f"{label}: lists {MANIFEST} itself")
        elif not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(f"{label} ({rel}): 'size' is missing or not a whole number of bytes")
        elif not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            problems.append(f"{label} ({rel}): 'sha256' is missing or not 64 lower-case hex digits")
        elif rel in entries:
            problems.append(f"{label} ({rel}): listed twice")
        else:
            entries[rel] = entry
    return entries, problems


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
