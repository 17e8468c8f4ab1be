"""Converters: each LLaMA-Factory format → canonical examples, on hand-written rows."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.v1alpha1 import DatasetSpec
from kubetune.trainer.data.converters import convert_alpaca, convert_openai, convert_sharegpt, get_converter
from kubetune.trainer.data.schema import RowError


def spec(**kw: Any) -> DatasetSpec:
    return DatasetSpec.model_validate({"name": "d", "source": "file:///x.json", **kw})


def u(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def a(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


def test_alpaca_instruction_input_history_system() -> None:
    ds = spec(columns={"history": "history", "system": "system"})
    row = {"instruction": "Sum", "input": "1 2", "output": "3", "system": "Be exact.", "history": [["Hi", "Hello"]]}
    ex = convert_alpaca(row, ds)
    assert ex["prompt"] == [u("Hi"), a("Hello"), u("Sum\n1 2")]
    assert ex["response"] == [a("3")]
    assert ex["system"] == "Be exact." and ex["label"] is None
    assert convert_alpaca({"instruction": "Sum", "input": "", "output": "3"}, ds)["prompt"] == [u("Sum")]


def test_alpaca_pretraining_text_column_keeps_other_defaults() -> None:
    ds = spec(columns={"prompt": "text"})
    assert ds.columns.response == "output" and ds.columns.messages == "conversations"
    ex = convert_alpaca({"text": "plain text"}, ds)
    assert ex["prompt"] == [u("plain text")] and ex["response"] == []


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"output": "x"}, "empty prompt"),
        ({"instruction": 3, "output": "x"}, "prompt is not a string"),
        ({"instruction": "q", "output": "x", "history": [["only one"]]}, "malformed history"),
    ],
    ids=["missing-instruction", "not-a-string", "bad-history"],
)
def test_alpaca_bad_rows(row: dict, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        convert_alpaca(row, spec(columns={"history": "history"}))


def test_alpaca_pairwise_and_kto() -> None:
    pair = convert_alpaca(
        {"instruction": "q", "chosen": "good", "rejected": "bad"},
        spec(ranking=True, columns={"chosen": "chosen", "rejected": "rejected"}),
    )
    assert pair["response"] == [a("good"), a("bad")]
    kto = spec(columns={"ktoTag": "label"})
    assert convert_alpaca({"instruction": "q", "output": "o", "label": True}, kto)["response"] == [a("o"), a("")]
    assert convert_alpaca({"instruction": "q", "output": "o", "label": False}, kto)["response"] == [a(""), a("o")]
    # the LLaMA-Factory trap: a string label is read (the loader adds a warning), not silently dropped
    assert convert_alpaca({"instruction": "q", "output": "o", "label": "false"}, kto)["label"] is False
    with pytest.raises(RowError, match="KTO label is not a boolean"):
        convert_alpaca({"instruction": "q", "output": "o", "label": "maybe"}, kto)
    with pytest.raises(RowError, match="missing KTO label"):
        convert_alpaca({"instruction": "q", "output": "o"}, kto)


def sg(*turns: tuple[str, str]) -> list[dict[str, str]]:
    return [{"from": r, "value": v} for r, v in turns]


def test_sharegpt_system_tools_and_positions() -> None:
    ds = spec(formatting="sharegpt", columns={"tools": "tools", "system": "sys"})
    row = {
        "conversations": sg(
            ("system", "S"),
            ("human", "q1"),
            ("function_call", '{"name": "f"}'),
            ("observation", "42"),
            ("gpt", "done"),
        ),
        "tools": [{"name": "f"}],
        "sys": "ignored: the system turn wins",
    }
    ex = convert_sharegpt(row, ds)
    assert ex["system"] == "S"
    assert ex["tools"] == '[{"name": "f"}]'
    assert [m["role"] for m in ex["prompt"]] == ["user", "function", "observation"]
    assert ex["response"] == [a("done")]


@pytest.mark.parametrize(
    ("conv", "reason"),
    [
        (sg(("gpt", "x"), ("human", "y")), "invalid role"),
        (sg(("human", "x")), "invalid message count"),
        ([], "empty conversation"),
        ([{"role": "user"}], "malformed message"),
        (sg(("human", "x"), ("bot", "y")), "invalid role"),
    ],
    ids=["assistant-first", "odd-count", "empty", "wrong-keys", "unknown-role"],
)
def test_sharegpt_bad_rows(conv: list, reason: str) -> None:
    with pytest.raises(RowError, match=reason):
        convert_sharegpt({"conversations": conv}, spec(formatting="sharegpt"))
    with pytest.raises(RowError, match="missing conversation"):
        convert_sharegpt({"messages": conv}, spec(formatting="sharegpt"))


def test_sharegpt_partial_tags_keep_their_defaults() -> None:
    # LLaMA-Factory#2381: giving role/content tags only must not lose system_tag
    ds = spec(
        formatting="sharegpt",
        columns={"messages": "messages"},
        tags={"roleTag": "role", "contentTag": "content", "userTag": "user", "assistantTag": "assistant"},
    )
    row = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": "r"},
        ]
    }
    ex = convert_sharegpt(row, ds)
    assert ex["system"] == "S" and ex["prompt"] == [u("q")] and ex["response"] == [a("r")]


def test_sharegpt_ranking_and_kto() -> None:
    ds = spec(formatting="sharegpt", ranking=True, columns={"chosen": "chosen", "rejected": "rejected"})
    row = {
        "conversations": sg(("human", "q")),
        "chosen": {"from": "gpt", "value": "good"},
        "rejected": {"from": "gpt", "value": "bad"},
    }
    assert convert_sharegpt(row, ds)["response"] == [a("good"), a("bad")]
    with pytest.raises(RowError, match="invalid chosen"):
        convert_sharegpt({**row, "chosen": {"from": "human", "value": "x"}}, ds)
    with pytest.raises(RowError, match="invalid message count"):
        convert_sharegpt({**row, "conversations": sg(("human", "q"), ("gpt", "r"))}, ds)
    kto = spec(formatting="sharegpt", columns={"ktoTag": "label"})
    ex = convert_sharegpt({"conversations": sg(("human", "q"), ("gpt", "r")), "label": False}, kto)
    assert ex["response"] == [a(""), a("r")] and ex["label"] is False


def test_openai_tool_calls_and_merged_tool_results() -> None:
    ds = spec(formatting="openai", columns={"messages": "messages"})
    row = {
        "messages": [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"type": "function", "function": {"name": "w", "arguments": "{}"}}],
            },
            {"role": "tool", "content": "sun"},
            {"role": "tool", "content": "warm"},
            {"role": "assistant", "content": "Sunny and warm."},
        ]
    }
    ex = convert_openai(row, ds)
    assert ex["system"] == "S"  # no "detailed thinking off" quirk
    assert ex["prompt"][1] == {"role": "function", "content": '[{"name": "w", "arguments": "{}"}]'}
    assert ex["prompt"][2] == {"role": "observation", "content": "sun\n</tool_response>\n<tool_response>\nwarm"}
    assert ex["response"] == [a("Sunny and warm.")]
    with pytest.raises(RowError, match="invalid role"):
        convert_openai({"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}, ds)


def test_unknown_formatting_fails_loudly() -> None:
    with pytest.raises(ValueError, match="no converter for formatting 'xml'"):
        get_converter("xml")
