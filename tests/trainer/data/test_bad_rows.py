"""One bad row never takes the job down: every class of malformed row becomes a row error (dataset, index,
reason) and is dropped, while its neighbours train. Hypothesis: any JSON-ish row converts or is a RowError."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api.v1alpha1 import DatasetSpec
from kubetune.trainer.data.conversion import convert_dataset, sample_rows
from kubetune.trainer.data.converters import CONVERTERS, convert_row, row_boundary
from kubetune.trainer.data.report import EXAMPLE_CHARS
from kubetune.trainer.data.schema import ROLES, RowError, check_example
from kubetune.trainer.data.sources import CSV_CELL_LIMIT, read_rows
from kubetune.trainer.errors import ConfigError


def spec(**kw: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": "d", "source": "file:///x.json", **kw})


ALPACA = spec(columns={"history": "history", "system": "system", "images": "images", "tools": "tools"})
SHAREGPT = spec(formatting="sharegpt", columns={"images": "images", "tools": "tools", "system": "system"})
OPENAI = spec(formatting="openai", columns={"messages": "messages", "images": "images"})
RANKING = spec(formatting="sharegpt", ranking=True, columns={"chosen": "chosen", "rejected": "rejected"})
RANKING_ALPACA = spec(ranking=True, columns={"chosen": "chosen", "rejected": "rejected"})
KTO = spec(columns={"ktoTag": "label"})
SPECS = {
    "alpaca": ALPACA,
    "sharegpt": SHAREGPT,
    "openai": OPENAI,
    "ranking": RANKING,
    "ranking-alpaca": RANKING_ALPACA,
    "kto": KTO,
}

DEEP = {"a": json.loads("[" * 500 + "]" * 500)}  # deep, but within json's own limit: the converters must cope


def conv(*messages: dict[str, Any]) -> dict[str, Any]:
    return {"conversations": list(messages)}


BAD_ROWS = [
    # (dataset, row, reason)
    ("sharegpt", conv({"from": ["human"], "value": "hi"}, {"from": "gpt", "value": "yo"}), "invalid role"),
    ("sharegpt", conv({"from": {"r": "human"}, "value": "hi"}, {"from": "gpt", "value": "yo"}), "invalid role"),
    ("sharegpt", conv({"from": None, "value": "hi"}, {"from": "gpt", "value": "yo"}), "invalid role"),
    ("sharegpt", conv({"from": 1, "value": "hi"}, {"from": "gpt", "value": "yo"}), "invalid role"),
    ("sharegpt", conv({"from": "human", "value": "hi"}, {"from": ["gpt"], "value": "yo"}), "invalid role"),
    ("sharegpt", conv("just a string"), "malformed message"),
    ("sharegpt", {"conversations": "not a list"}, "missing conversation"),
    (
        "sharegpt",
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], "images": 7},
        "malformed images",
    ),
    (
        "sharegpt",
        {**conv({"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}), "images": [1, 2]},
        "malformed images",
    ),
    (
        "sharegpt",
        {**conv({"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}), "images": {"a": "b"}},
        "malformed images",
    ),
    (
        "sharegpt",
        {**conv({"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}), "system": ["s"]},
        "system is not a string",
    ),
    (
        "openai",
        {"messages": [{"role": ["user"], "content": "hi"}, {"role": "assistant", "content": "x"}]},
        "invalid role",
    ),
    ("openai", {"messages": [{"role": {"x": 1}, "content": "hi"}]}, "invalid role"),
    (
        "openai",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": ["get_weather"]}]},
        "malformed tool call",
    ),
    (
        "openai",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": "get_weather"}]},
        "malformed tool call",
    ),
    (
        "openai",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [{"function": "f"}]}]},
        "malformed tool call",
    ),
    (
        "openai",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [None, 3]}]},
        "malformed tool call",
    ),
    (
        "openai",
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "images": 5},
        "malformed images",
    ),
    ("alpaca", {"instruction": "q", "output": "a", "images": 5}, "malformed images"),
    ("alpaca", {"instruction": "q", "output": "a", "images": 5.5}, "malformed images"),
    ("alpaca", {"instruction": "q", "output": "a", "images": True}, "malformed images"),
    ("alpaca", {"instruction": "q", "output": "a", "history": "earlier turns as one string"}, "malformed history"),
    ("alpaca", {"instruction": "q", "output": "a", "history": {"q": "a"}}, "malformed history"),
    ("alpaca", {"instruction": "q", "output": "a", "history": 3}, "malformed history"),
    ("alpaca", {"instruction": "q", "output": "a", "history": [["only one"]]}, "malformed history"),
    ("alpaca", {"instruction": "q", "output": "a", "history": ["ab", "cd"]}, "malformed history"),
    ("alpaca", {"instruction": ["q"], "output": "a"}, "prompt is not a string"),
    ("alpaca", {"instruction": {"q": 1}, "output": "a"}, "prompt is not a string"),
    ("alpaca", {"instruction": b"\x00\xff", "output": "a"}, "prompt is not a string"),  # a binary parquet cell
    ("alpaca", {"instruction": "q", "output": 42}, "response is not a string"),
    ("alpaca", {"instruction": "q\ud800", "output": "a"}, "not UTF-8"),  # a lone surrogate from "\ud800" in JSON
    ("alpaca", {"instruction": "q", "output": "a", "system": "\udcff"}, "not UTF-8"),
    ("alpaca", [1, 2, 3], "not an object"),
    ("alpaca", "a string row", "not an object"),
    ("alpaca", None, "not an object"),
    ("kto", {"instruction": "q", "output": "a", "label": "maybe"}, "KTO label is not a boolean"),
    ("kto", {"instruction": "q", "output": "a", "label": [True]}, "KTO label is not a boolean"),
    (
        "ranking",
        {
            **conv({"from": "human", "value": "q"}),
            "chosen": {"from": ["gpt"], "value": "a"},
            "rejected": {"from": "gpt", "value": "b"},
        },
        "invalid chosen",
    ),
    ("ranking", {**conv({"from": "human", "value": "q"}), "chosen": "a", "rejected": "b"}, "invalid chosen"),
    ("ranking-alpaca", {"instruction": "q", "chosen": ["a"], "rejected": "b"}, "chosen is not a string"),
]


@pytest.mark.parametrize(
    ("dataset", "row", "reason"), BAD_ROWS, ids=[f"{d}-{r}-{i}" for i, (d, _, r) in enumerate(BAD_ROWS)]
)
def test_each_malformed_row_is_a_row_error_with_its_reason(dataset: str, row: Any, reason: str) -> None:
    ds = SPECS[dataset]
    with pytest.raises(RowError) as info:
        convert_row(CONVERTERS[ds.formatting], row, ds)
    assert info.value.reason == reason, info.value


def test_a_deep_value_in_a_converted_field_is_a_row_error_not_a_crash() -> None:
    deep = json.loads("[" * 900 + "]" * 900)
    row = {"messages": [{"role": "user", "content": deep}, {"role": "assistant", "content": "x"}]}
    try:
        convert_row(CONVERTERS["openai"], row, OPENAI)  # json.dumps of the content may or may not recurse too far
    except RowError:
        pass
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"function": deep}]}]}
    with pytest.raises(RowError):
        convert_row(CONVERTERS["openai"], row, OPENAI)  # a function object must be an object, not a list


def test_the_boundary_turns_any_exception_into_a_row_error() -> None:
    def explode(*_: Any) -> None:
        raise KeyError("anything")

    def recurse(*_: Any) -> None:
        recurse()

    with pytest.raises(RowError, match="malformed row: KeyError"):
        row_boundary(explode)
    with pytest.raises(RowError, match="nested too deeply"):
        row_boundary(recurse)
    with pytest.raises(RowError) as info:
        row_boundary(lambda: (_ for _ in ()).throw(ValueError("x" * 1_000_000)))
    assert len(str(info.value)) < 400  # a huge message is cut, never echoed in full


# ---------------------------------------------------------------------------------------------------- hypothesis

KEYS = [
    "instruction",
    "input",
    "output",
    "history",
    "system",
    "images",
    "tools",
    "label",
    "chosen",
    "rejected",
    "conversations",
    "messages",
    "from",
    "value",
    "role",
    "content",
    "tool_calls",
    "function",
    "name",
]
ROLE_VALUES = ["human", "gpt", "system", "observation", "function_call", "user", "assistant", "tool"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(ROLE_VALUES),
    st.binary(max_size=4),
)
json_ish = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)),
    max_leaves=25,
)
messages = st.lists(
    st.one_of(
        st.fixed_dictionaries({"from": json_ish, "value": json_ish}),
        st.fixed_dictionaries({"role": st.one_of(st.sampled_from(ROLE_VALUES), json_ish), "content": json_ish}),
        st.fixed_dictionaries({"role": st.just("assistant"), "tool_calls": json_ish}),
        json_ish,
    ),
    max_size=5,
)
rows = st.one_of(
    json_ish,
    st.dictionaries(st.sampled_from(KEYS), json_ish, max_size=8),
    st.builds(
        lambda m, extra: {"conversations": m, "messages": m, **extra},
        messages,
        st.dictionaries(st.sampled_from(KEYS), json_ish, max_size=4),
    ),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=rows, dataset=st.sampled_from(sorted(SPECS)))
def test_any_json_ish_row_converts_or_is_a_row_error(row: Any, dataset: str) -> None:
    ds = SPECS[dataset]
    try:
        ex = convert_row(CONVERTERS[ds.formatting], row, ds)
    except RowError as err:
        assert err.reason and len(str(err)) < 1000
        return
    check_example(ex)  # what came out is what the templates and tokenizer can take
    assert all(m["role"] in ROLES for m in (*ex["prompt"], *ex["response"]))


# ---------------------------------------------------------------------------------------------------- files


def _reasons(rows: list[Any]) -> list[str]:
    return [r.reason if isinstance(r, RowError) else "ok" for r in rows]


def test_jsonl_deep_line_huge_number_and_bad_bytes_are_row_errors(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_bytes(
        b"\xef\xbb\xbf"
        + b'{"instruction": "a", "output": "1"}\n'
        + b"[" * 100_000
        + b"]" * 100_000
        + b"\n"
        + b'{"x": '
        + b"1" * 5000
        + b"}\n"
        + b'{"instruction": "caf\xe9"}\n'
        + b'{"instruction": '
        + b"[" * 100_000
        + b"\n"
        + b'{"instruction": "b", "output": "2"}\n'
    )
    assert _reasons(list(read_rows(f))) == [
        "ok",
        "nested too deeply",
        "malformed JSON",
        "not UTF-8",
        "nested too deeply",
        "ok",
    ]


@pytest.mark.parametrize(
    "bad", ["[" * 100_000 + "]" * 100_000, '{"a": ' * 50_000 + "1" + "}" * 50_000, '{"x": ' + "9" * 5000 + "}"]
)
def test_json_list_with_one_bad_item_keeps_the_others(tmp_path: Path, bad: str) -> None:
    f = tmp_path / "d.json"
    f.write_text('[{"instruction": "a", "s": "x,]\\"[{"}, ' + bad + ', {"instruction": "b"}]')
    rows = list(read_rows(f))
    assert _reasons(rows) == ["ok", _reasons(rows)[1], "ok"] and isinstance(rows[1], RowError)
    assert rows[0]["s"] == 'x,]"[{' and rows[2] == {"instruction": "b"}


def test_csv_cell_over_the_field_limit_is_one_row_error_and_the_reader_stays_in_step(tmp_path: Path) -> None:
    f = tmp_path / "d.csv"
    big = "x" * (CSV_CELL_LIMIT + 10)
    with f.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["instruction", "output"])
        w.writerow(["a", "1"])
        w.writerow([big + '\nwith, a newline and "quotes"', "2"])
        w.writerow(["b", "3"])
    rows = list(read_rows(f))
    assert _reasons(rows) == ["ok", "CSV cell too large", "ok"]
    assert rows[2] == {"instruction": "b", "output": "3"} and len(str(rows[1])) < 400
    assert csv.field_size_limit() == CSV_CELL_LIMIT  # the module-wide limit is restored


def test_parquet_binary_and_odd_cells_are_dropped_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    f = tmp_path / "d.parquet"
    pq.write_table(
        pa.table({"instruction": pa.array([b"\x00\xff", b"ok", None], pa.binary()), "output": ["a", "b", "c"]}), f
    )
    loaded = convert_dataset(spec(source="file:///d.parquet"), f)
    assert (loaded.report.rows, loaded.report.dropped, loaded.examples) == (3, 3, [])
    assert set(loaded.report.reasons) <= {"prompt is not a string", "empty prompt"}


def test_a_dataset_of_every_bad_row_class_reports_each_with_its_index(tmp_path: Path) -> None:
    lines = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": ["user"], "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": ["f"]}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "images": 3},
        None,
        {
            "messages": [{"role": "user", "content": "x" * 1_000_000}, {"role": "assistant", "content": "yo"}],
            "images": {"huge": "y" * 1_000_000},
        },
    ]
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join("[" * 100_000 if x is None else json.dumps(x) for x in lines) + "\n")
    ds = spec(
        name="chat",
        formatting="openai",
        source="file:///d.jsonl",
        columns={"messages": "messages", "images": "images"},
    )
    loaded = convert_dataset(ds, f)
    report = loaded.report
    assert (report.rows, len(loaded.examples), report.dropped) == (6, 1, 5)
    by_reason = {k: v.rows for k, v in report.reasons.items()}
    assert by_reason == {
        "invalid role": [1],
        "malformed tool call": [2],
        "malformed images": [3, 5],
        "nested too deeply": [4],
    }
    assert all(len(v.example) <= EXAMPLE_CHARS for v in report.reasons.values())
    assert max(len(line) for line in report.lines()) < 400  # no 1 MB value in the report


def test_max_samples_must_be_positive_and_num_samples_bounded() -> None:
    rows = [{"i": i} for i in range(3)]
    assert [i for i, _ in sample_rows(rows, None, 2, 0)] == [0, 1]
    for bad in (-1, 0):
        with pytest.raises(ConfigError, match="maxSamples must be a positive whole number"):
            sample_rows(rows, None, bad, 0)
    with pytest.raises(ConfigError, match="numSamples"):
        sample_rows(rows, 10**11, None, 0)  # refused, never a list of 1e11 entries


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,
        '{"d": {"num_samples": ' + "9" * 5000 + "}}",
        '{"d": ' * 10_000 + "1" + "}" * 10_000,
    ],
)
def test_a_dataset_info_json_that_json_cannot_read_is_one_data_error(text: str, tmp_path: Path) -> None:
    from kubetune.trainer.data.registry import load_registry_file
    from kubetune.trainer.errors import DataError

    f = tmp_path / "dataset_info.json"
    f.write_text(text)
    with pytest.raises(DataError, match="dataset_info.json") as info:
        load_registry_file(f, f"file://{f}")
    assert len(str(info.value)) < 400
