"""Read rows from local data files, keeping every row's index and every unreadable row.

Formats: json (a list of objects), jsonl, csv, parquet, arrow, txt (one text per line),
and folders of one type. A malformed JSON line becomes a :class:`RowError` at its index,
never a silent skip.
"""

from __future__ import annotations

import json
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


def data_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
    if not files:
        raise DataError(f"{path}: folder holds no data files ({', '.join(SUFFIXES)})")
    kinds = {file_type(p) for p in files}
    if len(kinds) > 1:
        raise DataError(f"{path}: all files of a folder must share one type, found {sorted(kinds)}")
    return files


def _read_json(path: Path) -> Iterator[Row]:
    text = path.read_bytes()
    try:
        data = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        # Maybe it is JSON Lines saved as .json, which LLaMA-Factory also accepts.
        lines = text.decode("utf-8").splitlines()
        if len(lines) > 1 and lines[0].strip().startswith("{"):
            yield from _read_jsonl(path)
            return
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    for item in data:
        yield item if isinstance(item, dict) else RowError("not an object", f"got {type(item).__name__}")


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


def _read_table(path: Path, kind: str) -> Iterator[Row]:
    import datasets

    loader = {"csv": "csv", "parquet": "parquet", "arrow": "arrow"}[kind]
    table = datasets.load_dataset(loader, data_files=str(path), split="train")
    yield from table


READERS = {"json": _read_json, "jsonl": _read_jsonl, "txt": _read_txt}


def read_rows(path: Path) -> Iterator[Row]:
    """Every row of a file or folder, in order; unreadable rows come out as RowError."""
    for f in data_files(path):
        kind = file_type(f)
        reader = READERS.get(kind)
        yield from (reader(f) if reader else _read_table(f, kind))
