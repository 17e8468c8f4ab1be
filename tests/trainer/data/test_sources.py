"""Reading rows: every file type, folders, hub-style split layout, unreadable rows kept with their index."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.sources import data_files, read_rows
from kubetune.trainer.errors import DataError

ROWS = [{"instruction": "a", "output": "1"}, {"instruction": "b", "output": "2"}]


def write_all(folder: Path) -> dict[str, Path]:
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(ROWS)
    paths = {k: folder / f"d.{k}" for k in ("json", "jsonl", "csv", "parquet", "arrow", "txt")}
    paths["json"].write_text(json.dumps(ROWS))
    paths["jsonl"].write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    pacsv.write_csv(table, paths["csv"])
    pq.write_table(table, paths["parquet"])
    with pa.ipc.new_stream(paths["arrow"], table.schema) as w:
        w.write_table(table)
    paths["txt"].write_text("first text\n\nsecond text\n")
    return paths


@pytest.mark.parametrize("kind", ["json", "jsonl", "csv", "parquet", "arrow"])
def test_every_table_type_reads_the_same_rows(kind: str, tmp_path: Path) -> None:
    assert list(read_rows(write_all(tmp_path)[kind])) == ROWS


def test_txt_is_one_text_per_line(tmp_path: Path) -> None:
    assert list(read_rows(write_all(tmp_path)["txt"])) == [{"text": "first text"}, {"text": "second text"}]


def test_folders_need_one_type_and_splits_pick_files(tmp_path: Path) -> None:
    write_all(tmp_path / "mixed")
    with pytest.raises(DataError, match="must share one type"):
        data_files(tmp_path / "mixed")
    hub = tmp_path / "hub"
    (hub / "data").mkdir(parents=True)
    (hub / "data" / "train-00000-of-00001.jsonl").write_text(json.dumps(ROWS[0]) + "\n")
    (hub / "data" / "test-00000-of-00001.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    (hub / ".cache").mkdir()
    (hub / ".cache" / "x.json").write_text("[]")
    assert list(read_rows(hub, split="train")) == [ROWS[0]]
    assert list(read_rows(hub, split="test")) == [ROWS[1]]
    with pytest.raises(DataError, match="no files for split 'validation'"):
        data_files(hub, split="validation")
    (hub / "en").mkdir()
    (hub / "en" / "train.jsonl").write_text(json.dumps(ROWS[1]) + "\n")
    assert list(read_rows(hub, split="train", subset="en")) == [ROWS[1]]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data files"):
        data_files(tmp_path / "empty")


def test_bad_jsonl_lines_become_row_errors_at_their_index(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"instruction": "a"}\n{broken\n"a string"\n{"instruction": "\xff\xfe"}\n{"instruction": "b"}\n')
    rows = list(read_rows(f))
    assert [r.reason if isinstance(r, RowError) else r["instruction"] for r in rows] == [
        "a",
        "malformed JSON",
        "not an object",
        "not UTF-8",
        "b",
    ]


def test_non_utf8_rows_in_a_json_list_are_flagged(tmp_path: Path) -> None:
    f = tmp_path / "d.json"
    f.write_bytes(b'[{"instruction": "ok"}, {"instruction": "bad \xff"}, 3]')
    rows = list(read_rows(f))
    assert rows[0] == {"instruction": "ok"}
    assert isinstance(rows[1], RowError) and rows[1].reason == "not UTF-8"
    assert isinstance(rows[2], RowError) and rows[2].reason == "not an object"
    bad = tmp_path / "bad.json"
    bad.write_text('[{"a": 1},')
    with pytest.raises(DataError, match="invalid JSON at line 1"):
        list(read_rows(bad))
    (tmp_path / "d.xml").write_text("<x/>")
    with pytest.raises(DataError, match="unsupported data file type '.xml'"):
        list(read_rows(tmp_path / "d.xml"))
