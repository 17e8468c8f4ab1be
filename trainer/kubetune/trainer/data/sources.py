"""Read rows from local data files, keeping every row's index and every unreadable row.

Formats: json (a list of objects), jsonl, csv, parquet, arrow, txt (one text per line),
and folders of one type. A malformed JSON line becomes a :class:`RowError` at its index,
never a silent skip; so does a value nested deeper than the JSON parser follows, a number
over Python's digit limit, a CSV cell over the csv module's field limit, a table cell that
will not convert. Only a file that cannot be read at all is a :class:`DataError`.
:func:`fetch_dataset` brings a dataset's ``source`` here first (any scheme the storage layer knows).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import DatasetSpec
from kubetune.trainer.data.options import DataOptions
from kubetune.trainer.data.schema import RowError, clip
from kubetune.trainer.errors import DataError
from kubetune.trainer.storage.fetch import fetch

SUFFIXES = {".json": "json", ".jsonl": "jsonl", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow", ".txt": "txt"}

Row = dict[str, Any] | RowError
# The csv module's own default cell limit (131072 characters): a larger cell is a RowError, not a crash.
CSV_CELL_LIMIT = csv.field_size_limit()


def fetch_dataset(spec: DatasetSpec, opts: DataOptions, field_path: str) -> Path:
    """A local path holding ``spec.source`` (``field_path`` names the spec field in errors)."""
    return fetch(
        spec.source,
        field=f"{field_path}.source",
        work_dir=opts.work_dir,
        cache_dir=opts.cache_dir,
        kind="dataset",
        dataset=spec,
        allow=list(opts.allow_private_urls),
    )


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
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and p.suffix.lower() in SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise DataError(f"{path}: folder holds no data files ({', '.join(SUFFIXES)})")
    if split:
        pattern = re.compile(rf"(^|[^a-z]){re.escape(split.lower())}([^a-z]|$)")
        chosen = [p for p in files if pattern.search(str(p.relative_to(path)).lower())]
        splits_named = [
            p
            for p in files
            if re.search(r"(^|[^a-z])(train|test|validation|valid|dev)([^a-z]|$)", str(p.relative_to(path)).lower())
        ]
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


def _json_error(exc: Exception) -> RowError:
    """A row JSON cannot give: too deep (RecursionError), a number over the digit limit, or malformed."""
    if isinstance(exc, RecursionError):
        return RowError("nested too deeply", "the value nests deeper than the JSON parser follows")
    if isinstance(exc, json.JSONDecodeError):
        return RowError("malformed JSON", f"{exc.msg} at column {exc.colno}")
    return RowError("malformed JSON", clip(str(exc), 120))


_ARRAY_TOKENS = re.compile(r'[\[\]{},"]')
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)


def _array_items(text: str) -> Iterator[str] | None:
    """The source text of each item of a top-level JSON array, found without recursion (so one 100k-deep item
    cannot stop the others from being read); None when the text is not an array."""
    start = len(text) - len(text.lstrip())
    if not text.startswith("[", start):
        return None

    def items() -> Iterator[str]:
        depth, item_start, pos = 0, start + 1, start + 1
        while (m := _ARRAY_TOKENS.search(text, pos)) is not None:
            ch, pos = m.group(), m.end()
            if ch == '"':
                string = _STRING.match(text, m.start())
                if string is None:
                    break
                pos = string.end()
            elif ch in "[{":
                depth += 1
            elif ch in "]}" and depth > 0:
                depth -= 1
            elif depth == 0:  # a ',' or the closing ']' of the top-level array
                if text[item_start : m.start()].strip():
                    yield text[item_start : m.start()]
                item_start = pos
                if ch == "]":
                    return
        if text[item_start:].strip():
            yield text[item_start:]  # unterminated: its own parse error names it

    return items()


def _read_json(path: Path) -> Iterator[Row]:
    raw = path.read_bytes()
    try:
        text, strict = raw.decode("utf-8-sig"), True
    except UnicodeDecodeError:
        text, strict = raw.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff"), False
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # Maybe it is JSON Lines saved as .json, which LLaMA-Factory also accepts.
        lines = text.splitlines()
        if len(lines) > 1 and lines[0].strip().startswith("{"):
            yield from _read_jsonl(path)
            return
        raise DataError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except (RecursionError, ValueError):
        # One item too deep (or a number over the digit limit) fails the whole-file parse: read item by item.
        items = _array_items(text)
        if items is None:
            yield _json_error(RecursionError())
            return
        for source in items:
            try:
                item = json.loads(source)
            except (RecursionError, ValueError) as exc:
                yield _json_error(exc)
                continue
            yield from _json_rows([item], strict)
        return
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    yield from _json_rows(data, strict)


def _json_rows(data: list[Any], strict: bool) -> Iterator[Row]:
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
            if lineno == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            if not raw.strip():
                continue
            try:
                item = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as exc:
                yield RowError("not UTF-8", f"line {lineno}: {exc.reason} at byte {exc.start}")
                continue
            except (RecursionError, ValueError) as exc:
                err = _json_error(exc)
                yield RowError(err.reason, f"line {lineno}: {err.detail}")
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
    """CSV cells stay strings (no type guessing: an answer "1" is text). A row with bytes that are not UTF-8, more
    cells than the header, or a cell over the csv module's field limit (:data:`CSV_CELL_LIMIT`) becomes a RowError.
    The file is parsed with a limit no cell can reach, so an over-long cell never desynchronises the reader."""
    size = path.stat().st_size
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, size + 1))
    try:
        with path.open(encoding="utf-8-sig", errors="surrogateescape", newline="") as fh:
            reader = csv.DictReader(fh)
            while True:
                try:
                    row = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    yield RowError("malformed CSV", f"line {reader.line_num}: {clip(str(exc), 120)}")
                    continue
                long = [k for k, v in row.items() if isinstance(v, str) and len(v) > CSV_CELL_LIMIT]
                if None in row:
                    yield RowError("malformed CSV", f"line {reader.line_num}: more cells than header columns")
                elif long:
                    yield RowError(
                        "CSV cell too large",
                        f"line {reader.line_num}: column {clip(long[0])!r} holds "
                        f"more than the csv module's field limit of {CSV_CELL_LIMIT} characters",
                    )
                elif _bad_bytes(row):
                    yield RowError("not UTF-8", f"line {reader.line_num}")
                else:
                    yield {k: v for k, v in row.items() if v is not None}
    finally:
        csv.field_size_limit(previous)


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
    except (pa.ArrowException, UnicodeDecodeError, OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read as {kind}: {clip(str(exc), 200)}") from None
    for batch in table.to_batches(max_chunksize=4096):
        try:
            yield from batch.to_pylist()
        except Exception:  # noqa: BLE001 - a cell that will not convert: find it row by row
            for i in range(batch.num_rows):
                try:
                    (row,) = batch.slice(i, 1).to_pylist()
                except Exception as exc:  # noqa: BLE001
                    yield RowError("unreadable cell", f"{type(exc).__name__}: {clip(str(exc), 120)}")
                else:
                    yield row


READERS = {"json": _read_json, "jsonl": _read_jsonl, "txt": _read_txt, "csv": _read_csv}


def read_rows(path: Path, split: str | None = None, subset: str | None = None) -> Iterator[Row]:
    """Every row of a file or folder, in order; unreadable rows come out as RowError."""
    for f in data_files(path, split, subset):
        kind = file_type(f)
        reader = READERS.get(kind)
        try:
            yield from (reader(f) if reader else _read_table(f, kind))
        except OSError as exc:
            raise DataError(f"{f}: cannot read: {exc.strerror or exc}") from None
