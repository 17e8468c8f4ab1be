"""Read rows from local data files, keeping every row's index and every unreadable row.

Formats: json (a list of objects), jsonl, csv, parquet, arrow, txt (one text per line),
and folders of one type. A malformed JSON line becomes a :class:`RowError` at its index,
never a silent skip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubetune.trainer.data.schema import RowError
from kubetune.trainer.errors import DataError

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "txt"}

Row = dict[str, Any] | RowError


def file_type(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r}; use one of {', '.join(SUFFIXES)}")
    return kind


def data_files(path: Path, split: str | None = None, subset: str | None = None) -> list[Path]:
    """The data files of a file or folder. In a folder (a hub snapshot), ``subset`` picks a sub-folder and
    ``split`` keeps the files whose path names it (``data/train-00000-of-00001.parquet``) when any do."""
    if path.is_file():
        return [path]
    if subset and (path / subset).is_dir():
        path = path / subset
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(path).parts))
    if not files:
        raise DataError(f"{path}: folder holds no data files ({', '.join(SUFFIXES)})")
    if split:
        pattern = re.compile(rf"(^|[^a-z]){re.escape(split.lower())}([^a-z]|$)")
        chosen = [p for p in files if pattern.search(str(p.relative_to(path)).lower())]
        splits_named = [p for p in files if re.search(r"(^|[^a-z])(train|test|validation|valid|dev)([^a-z]|$)",
                                                       str(p.relative_to(path)).lower())]
        if chosen:
            files = chosen
        elif splits_named:
            raise DataError(f"{path}: no files for split {split!r}; found {[str(p.relative_to(path)) for p in files]}")
    kinds = {file_type(p) for p in files}
    if len(kinds) > 1:
        raise DataError(f"{path}: all files of a folder must share one type, found {sorted(kinds)}")
    return files


def _bad_bytes(value: Any) -> bool:
    """Whether a value decoded with ``surrogateescape`` carries bytes that were not UTF-8."""
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_bad_bytes(k) or _bad_bytes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_bad_bytes(v) for v in value)
    return False


def _read_json(path: Path) -> Iterator[Row]:
    raw = path.read_bytes()
    try:
        text, strict = raw.decode("utf-8"), True
    except UnicodeDecodeError:
        text, strict = raw.decode("utf-8", errors="surrogateescape"), False
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Maybe it is JSON Lines saved as .json, which LLaMA-Factory also accepts.
        lines = text.splitlines()
        if len(lines) > 1 and lines[0].strip().startswith("{"):
            yield from _read_jsonl(path)
            return
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for item in data:
        if not isinstance(item, dict):
            yield RowError("not an object", f"got {type(item).__name__}")
        elif not strict and _bad_bytes(item):
            yield RowError("not UTF-8", "the row holds bytes that are not UTF-8 text")
        else:
            yield item


def _read_jsonl(path: Path) -> Iterator[Row]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                item = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield RowError("not UTF-8", f"line {lineno}: {exc.reason} at byte {exc.start}")
                continue
            except json.JSONDecodeError as exc:
                yield RowError("malformed JSON", f"line {lineno}: {exc.msg} at column {exc.colno}")
                continue
            yield item if isinstance(item, dict) else RowError("not an object", f"line {lineno}")


def _read_txt(path: Path) -> Iterator[Row]:
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            try:
                line = raw.decode("utf-8").rstrip("\n")
            except UnicodeDecodeError as exc:
                yield RowError("not UTF-8", f"line {lineno}: {exc.reason}")
                continue
            if line.strip():
                yield {"text": line}


def _read_csv(path: Path) -> Iterator[Row]:
    """CSV cells stay strings (no type guessing: an answer "1" is text); a row with bytes that are not UTF-8
    or with more cells than the header becomes a RowError."""
    import csv

    with path.open(encoding="utf-8", errors="surrogateescape", newline="") as fh:
        for lineno, row in enumerate(csv.DictReader(fh), start=2):
            if None in row:
                yield RowError("malformed CSV", f"line {lineno}: more cells than header columns")
            elif _bad_bytes(row):
                yield RowError("not UTF-8", f"line {lineno}")
            else:
                yield {k: v for k, v in row.items() if v is not None}


def _read_table(path: Path, kind: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        if kind == "parquet":
            table = pq.read_table(path)
        else:
            try:
                with pa.memory_map(str(path)) as source:
                    table = pa.ipc.open_stream(source).read_all()
            except pa.ArrowInvalid:
                with pa.memory_map(str(path)) as source:
                    table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError) as exc:
        raise DataError(f"{path}: cannot read as {kind}: {exc}") from None
    for batch in table.to_batches(max_chunksize=4096):
        yield from batch.to_pylist()


READERS = {"json": _read_json, "jsonl": _read_jsonl, "txt": _read_txt, "csv": _read_csv}


def read_rows(path: Path, split: str | None = None, subset: str | None = None) -> Iterator[Row]:
    """Every row of a file or folder, in order; unreadable rows come out as RowError."""
    for f in data_files(path, split, subset):
        kind = file_type(f)
        reader = READERS.get(kind)
        yield from (reader(f) if reader else _read_table(f, kind))
