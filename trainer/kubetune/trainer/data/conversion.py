"""The convert step: one dataset's rows, sampled, converted to the canonical example shape.

Every row that cannot be used is counted in the dataset's :class:`DatasetReport` with its index
and reason; media columns are checked against the files and the placeholders in the messages.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.checks import MAX_NUM_SAMPLES
from kubetune.api.v1alpha1 import DatasetSpec
from kubetune.trainer.data.converters import convert_row, get_converter
from kubetune.trainer.data.report import DatasetReport
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.sources import data_files, read_rows
from kubetune.trainer.errors import ConfigError

MAX_SAMPLES = MAX_NUM_SAMPLES
MEDIA_PLACEHOLDERS = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}


@dataclass
class LoadedDataset:
    spec: DatasetSpec
    path: Path
    sha256: str
    examples: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    report: DatasetReport | None = None
    settings: str = ""  # what, besides the content, decided ``examples`` (part of the cache key)


def _sha256_of(path: Path, split: str | None = None, subset: str | None = None) -> str:
    digest = hashlib.sha256()
    for f in data_files(path, split, subset):
        digest.update(f.name.encode())
        with f.open("rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def sample_rows(rows: list[Any], num_samples: int | None, max_samples: int | None, seed: int) -> list[tuple[int, Any]]:
    """``numSamples`` (seeded; beyond the dataset size, oversampled with replacement) then ``maxSamples`` (first N)."""
    if num_samples is not None and not (isinstance(num_samples, int) and 0 < num_samples <= MAX_SAMPLES):
        raise ConfigError(f"numSamples must be a whole number from 1 to {MAX_SAMPLES}, not {num_samples!r}")
    if max_samples is not None and not (isinstance(max_samples, int) and max_samples > 0):
        raise ConfigError(f"maxSamples must be a positive whole number, not {max_samples!r}")
    indexed = list(enumerate(rows))
    if num_samples is not None and indexed:
        rng = random.Random(seed)
        if num_samples <= len(indexed):
            indexed = sorted(rng.sample(indexed, num_samples), key=lambda x: x[0])
        else:
            indexed = indexed + [rng.choice(indexed) for _ in range(num_samples - len(indexed))]
    if max_samples is not None:
        indexed = indexed[:max_samples]
    return indexed


def _media_base(path: Path) -> Path:
    return path if path.is_dir() else path.parent


def check_media(row: dict[str, Any], ex: dict[str, Any], spec: DatasetSpec, base: Path) -> None:
    """Media columns: every path must exist (relative paths resolve against the dataset's folder), and the count
    must match the ``<image>``/``<video>``/``<audio>`` placeholders in the messages."""
    texts = [m["content"] for m in (*ex["prompt"], *ex["response"])]
    for kind, placeholder in MEDIA_PLACEHOLDERS.items():
        column = getattr(spec.columns, kind)
        if not column:
            continue
        value = row.get(column)
        paths = [] if value is None else [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise RowError(f"malformed {kind}", f"column {column!r} must be a list of paths")
        resolved = []
        for p in paths:
            full = Path(p) if Path(p).is_absolute() else base / p
            if not full.is_file():
                raise RowError(f"missing {kind[:-1]} file", f"{p} (looked at {full})")
            resolved.append(str(full))
        marks = sum(t.count(placeholder) for t in texts)
        if marks and marks != len(paths):
            raise RowError(f"{kind} count mismatch", f"{len(paths)} {kind} but {marks} {placeholder} placeholders")
        if kind == "images":
            ex["images"] = resolved


def convert_dataset(spec: DatasetSpec, path: Path, *, max_samples: int | None = None, seed: int = 42) -> LoadedDataset:
    """Read and convert one dataset; every dropped row is counted with its index and reason."""
    loaded = LoadedDataset(
        spec=spec,
        path=path,
        sha256=_sha256_of(path, spec.split, spec.subset),
        settings=f"{spec.model_dump_json()}|max={max_samples}|seed={seed}",
    )
    report = DatasetReport(name=spec.name, source=spec.source)
    converter = get_converter(spec.formatting)
    rows = list(read_rows(path, spec.split, spec.subset))
    report.rows = len(rows)
    kto_column = spec.columns.kto_tag
    base = _media_base(path)
    has_media = any(getattr(spec.columns, kind) for kind in MEDIA_PLACEHOLDERS)
    for idx, row in sample_rows(rows, spec.num_samples, max_samples, seed):
        if isinstance(row, RowError):
            report.drop(idx, row.reason, row.detail)
            continue
        try:
            media = (lambda ex, row=row: check_media(row, ex, spec, base)) if has_media else None
            ex = convert_row(converter, row, spec, then=media)
        except RowError as err:
            report.drop(idx, err.reason, err.detail)
            continue
        if kto_column and isinstance(row.get(kto_column), str):
            report.warn(idx, "KTO label given as a string", f"{row[kto_column]!r} read as a boolean")
        loaded.examples.append((idx, ex))
    loaded.report = report
    return loaded
