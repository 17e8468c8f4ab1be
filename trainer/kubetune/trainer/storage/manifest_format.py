"""The manifest's file format as storage reads it: its name, the checkpoints folder beside it, and the parser.

It lives with storage (which publishes and verifies remote artifacts) so that storage never imports the
artifact builders; :mod:`kubetune.trainer.artifacts.manifest` builds manifests and re-exports these names.
"""

from __future__ import annotations

import json
import re
from typing import Any

from kubetune.trainer.storage.paths import UnsafePath, check_relative

MANIFEST = "manifest.json"
CHECKPOINTS = "checkpoints"  # periodic checkpoints may live beside an artifact; they are not part of it
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
        raise ManifestProblem(
            f"{where}: missing {', '.join(repr(k) for k in missing)}; not a kubetune manifest (or a truncated one)"
        )
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
