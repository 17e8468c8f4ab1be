"""manifest.json: provenance of an artifact folder, written last so its presence means complete.

It records the base model (and resolved revision), datasets with sha256, the resolved
config, final metrics, software versions, and the sha256 and size of every file.
"""

from __future__ import annotations

import hashlib
import json
import platform
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

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


def verify_dir(root: Path) -> list[str]:
    """Re-hash a local artifact folder against its manifest; return the problems (empty when it matches)."""
    path = root / MANIFEST
    if not path.exists():
        return [f"{path}: no manifest (the artifact is incomplete or not a kubetune output)"]
    manifest = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    listed = {e["path"]: e for e in manifest.get("files", [])}
    for rel, entry in listed.items():
        f = root / rel
        if not f.exists():
            problems.append(f"{rel}: missing")
        elif f.stat().st_size != entry["size"]:
            problems.append(f"{rel}: size {f.stat().st_size} != {entry['size']}")
        elif sha256_file(f) != entry["sha256"]:
            problems.append(f"{rel}: sha256 mismatch")
    for extra in file_entries(root):
        if extra["path"] not in listed and not extra["path"].startswith(CHECKPOINTS + "/"):
            problems.append(f"{extra['path']}: not in the manifest")
    return problems
