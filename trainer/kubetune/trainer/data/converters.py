"""Converters: one row in a user's format → one canonical example (see ``schema``).

Registry ``CONVERTERS`` keyed by ``formatting``. Each converter raises :class:`RowError`
with a short reason for a row it cannot use; the loader counts and reports those.
:func:`convert_row` is the one boundary the loader calls: whatever a row holds (a role that
is a list, a tool call that is a string, a 100k-deep value), it returns a checked canonical
example or raises :class:`RowError` — no other exception leaves it.
Semantics follow LLaMA-Factory's converters, minus their traps: KTO labels given as
"true"/"false" strings are accepted (and counted as a warning), not silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

from kubetune.api.v1alpha1 import DatasetSpec
from kubetune.trainer.data.schema import (
    ASSISTANT,
    FUNCTION,
    OBSERVATION,
    SYSTEM,
    USER,
    Message,
    RowError,
    check_example,
    clip,
    example,
)

Converter = Callable[[dict[str, Any], DatasetSpec], dict[str, Any]]
LABEL_STRINGS = {"true": True, "false": False}
T = TypeVar("T")


def _text(row: dict[str, Any], column: str | None, what: str) -> str:
    if not column:
        return ""
    value = row.get(column)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(f"{what} is not a string", f"column {column!r} holds {type(value).__name__}")
    return value


def kto_label(row: dict[str, Any], ds: DatasetSpec) -> bool | None:
    column = ds.columns.kto_tag
    if not column:
        return None
    if column not in row or row[column] is None:
        raise RowError("missing KTO label", f"column {column!r} is absent")
    value = row[column]
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in LABEL_STRINGS:
        return LABEL_STRINGS[value.strip().lower()]
    raise RowError("KTO label is not a boolean", f"column {column!r} holds {clip(repr(value))}")


def _tools(row: dict[str, Any], ds: DatasetSpec) -> str:
    column = ds.columns.tools
    if not column or row.get(column) in (None, ""):
        return ""
    value = row[column]
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _images(row: dict[str, Any], ds: DatasetSpec) -> list[str]:
    column = ds.columns.images
    if not column or row.get(column) is None:
        return []
    value = row[column]
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RowError(
            "malformed images", f"column {column!r} holds {_kind(value)}; expected a path or a list of paths"
        )
    return list(value)


def _kind(value: Any) -> str:
    """What a value is, for a message: its JSON type name, never the value itself (it may be huge)."""
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
        bytes: "binary data",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def _role(message: dict[str, Any], tag: str, i: int) -> str:
    role = message[tag]
    if not isinstance(role, str):
        raise RowError("invalid role", f"message {i} {tag!r} is {_kind(role)}, not a string")
    return role


def convert_alpaca(row: dict[str, Any], ds: DatasetSpec) -> dict[str, Any]:
    cols = ds.columns
    prompt: list[Message] = []
    history = row.get(cols.history) if cols.history else None
    if history is not None and not isinstance(history, list):
        raise RowError(
            "malformed history",
            f"column {cols.history!r} holds {_kind(history)}; expected a list of [prompt, response] pairs",
        )
    if history:
        for i, turn in enumerate(history):
            if not (isinstance(turn, (list, tuple)) and len(turn) == 2 and all(isinstance(t, str) for t in turn)):
                raise RowError("malformed history", f"history[{i}] is not a [prompt, response] pair of strings")
            prompt += [{"role": USER, "content": turn[0]}, {"role": ASSISTANT, "content": turn[1]}]
    instruction = _text(row, cols.prompt, "prompt")
    query = _text(row, cols.query, "query")
    user = "\n".join(part for part in (instruction, query) if part)
    if not user:
        raise RowError("empty prompt", f"columns {cols.prompt!r}/{cols.query!r} are empty or missing")
    prompt.append({"role": USER, "content": user})

    label = kto_label(row, ds)
    answer = _text(row, cols.response, "response")
    if label is not None:
        if not answer:
            raise RowError("empty response", f"column {cols.response!r} is empty or missing")
        response = [{"role": ASSISTANT, "content": answer}, {"role": ASSISTANT, "content": ""}]
        response = response if label else response[::-1]
    elif ds.ranking:
        chosen, rejected = _text(row, cols.chosen, "chosen"), _text(row, cols.rejected, "rejected")
        if not chosen or not rejected:
            raise RowError("missing chosen/rejected", f"columns {cols.chosen!r}/{cols.rejected!r} must be non-empty")
        response = [{"role": ASSISTANT, "content": chosen}, {"role": ASSISTANT, "content": rejected}]
    elif answer:
        response = [{"role": ASSISTANT, "content": answer}]
    else:
        response = []
    return example(prompt, response, _text(row, cols.system, "system"), _tools(row, ds), label, _images(row, ds))


def _align_messages(messages: list[Any], ds: DatasetSpec, system: str) -> tuple[list[Message], str]:
    """Map tags to roles, take a leading system message, and enforce the odd/even position rule."""
    tags = ds.tags
    role_map = {
        tags.user_tag: USER,
        tags.assistant_tag: ASSISTANT,
        tags.observation_tag: OBSERVATION,
        tags.function_tag: FUNCTION,
        tags.system_tag: SYSTEM,
    }
    if not messages:
        raise RowError("empty conversation", f"column {ds.columns.messages!r} has no messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise RowError("malformed message", f"message {i} is not an object")
        if tags.role_tag not in m or tags.content_tag not in m:
            raise RowError("malformed message", f"message {i} lacks {tags.role_tag!r} or {tags.content_tag!r}")
        _role(m, tags.role_tag, i)
    if messages[0][tags.role_tag] == tags.system_tag:
        system = str(messages[0][tags.content_tag] or "")
        messages = messages[1:]
    aligned: list[Message] = []
    for i, m in enumerate(messages):
        role = role_map.get(m[tags.role_tag])
        want = (USER, OBSERVATION) if i % 2 == 0 else (ASSISTANT, FUNCTION)
        if role not in want:
            expected = "/".join(t for t, r in role_map.items() if r in want)
            raise RowError(
                "invalid role",
                f"message {i} has role {clip(repr(m[tags.role_tag]))}, expected {expected} at this position",
            )
        content = m[tags.content_tag]
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        aligned.append({"role": role, "content": content})
    return aligned, system


def _sharegpt_like(row: dict[str, Any], ds: DatasetSpec, messages: list[Any]) -> dict[str, Any]:
    aligned, system = _align_messages(messages, ds, _text(row, ds.columns.system, "system"))
    label = kto_label(row, ds)
    tags = ds.tags
    if ds.ranking:
        if len(aligned) % 2 != 1:
            raise RowError("invalid message count", "ranking data must end with a user/observation turn")
        pair = []
        for key in ("chosen", "rejected"):
            column = getattr(ds.columns, key)
            value = row.get(column) if column else None
            if (
                not isinstance(value, dict)
                or not isinstance(value.get(tags.role_tag), str)
                or value[tags.role_tag] not in (tags.assistant_tag, tags.function_tag)
            ):
                raise RowError(f"invalid {key}", f"column {column!r} must be an assistant/function message")
            role = ASSISTANT if value[tags.role_tag] == tags.assistant_tag else FUNCTION
            pair.append({"role": role, "content": str(value.get(tags.content_tag, ""))})
        return example(aligned, pair, system, _tools(row, ds), None, _images(row, ds))
    if len(aligned) % 2 != 0:
        raise RowError(
            "invalid message count", f"{len(aligned)} messages; a conversation must end with an assistant turn"
        )
    prompt, last = aligned[:-1], aligned[-1]
    if label is not None:
        empty: Message = {"role": ASSISTANT, "content": ""}
        response = [last, empty] if label else [empty, last]
    else:
        response = [last]
    return example(prompt, response, system, _tools(row, ds), label, _images(row, ds))


def convert_sharegpt(row: dict[str, Any], ds: DatasetSpec) -> dict[str, Any]:
    messages = row.get(ds.columns.messages)
    if not isinstance(messages, list):
        raise RowError("missing conversation", f"column {ds.columns.messages!r} is absent or not a list")
    return _sharegpt_like(row, ds, messages)


def convert_openai(row: dict[str, Any], ds: DatasetSpec) -> dict[str, Any]:
    """OpenAI ``messages``: role/content keys; assistant ``tool_calls`` → function turns; runs of tool
    messages merged into one observation. (LLaMA-Factory's "detailed thinking off" quirk is not copied.)"""
    column = ds.columns.messages if ds.columns.messages != "conversations" else "messages"
    messages = row.get(column, row.get(ds.columns.messages))
    if not isinstance(messages, list):
        raise RowError("missing conversation", f"column {column!r} is absent or not a list")
    tags = ds.tags
    role_tag, content_tag = (tags.role_tag, tags.content_tag) if tags.role_tag != "from" else ("role", "content")
    out: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or role_tag not in m:
            raise RowError("malformed message", f"message {i} lacks {role_tag!r}")
        role = _role(m, role_tag, i)
        if role == "assistant" and m.get("tool_calls"):
            out.append(
                {"from": "function_call", "value": json.dumps(_tool_calls(m["tool_calls"], i), ensure_ascii=False)}
            )
        elif role == "tool":
            if out and out[-1]["from"] == "observation":
                out[-1]["value"] += "\n</tool_response>\n<tool_response>\n" + str(m.get(content_tag) or "")
            else:
                out.append({"from": "observation", "value": str(m.get(content_tag) or "")})
        else:
            mapped = {"user": "human", "assistant": "gpt", "system": "system"}.get(role, role)
            out.append({"from": mapped, "value": m.get(content_tag) if m.get(content_tag) is not None else ""})
    openai_ds = ds.model_copy(update={"tags": type(ds.tags)()})
    return _sharegpt_like(row, openai_ds, out)


def _tool_calls(calls: Any, i: int) -> list[Any]:
    """OpenAI ``tool_calls``: a list of objects, each ``{"function": {...}}`` or the function object itself."""
    if not isinstance(calls, list):
        raise RowError("malformed tool call", f"message {i} tool_calls is {_kind(calls)}, not a list")
    out = []
    for j, call in enumerate(calls):
        if not isinstance(call, dict):
            raise RowError("malformed tool call", f"message {i} tool_calls[{j}] is {_kind(call)}, not an object")
        function = call.get("function", call)
        if not isinstance(function, dict):
            raise RowError("malformed tool call", f"message {i} tool_calls[{j}].function is {_kind(function)}")
        out.append(function)
    return out


CONVERTERS: dict[str, Converter] = {"alpaca": convert_alpaca, "sharegpt": convert_sharegpt, "openai": convert_openai}


def get_converter(formatting: str) -> Converter:
    if formatting not in CONVERTERS:
        raise ValueError(f"no converter for formatting {formatting!r}; known: {', '.join(CONVERTERS)}")
    return CONVERTERS[formatting]


def row_boundary(step: Callable[..., T], *args: Any, passthrough: tuple[type[BaseException], ...] = ()) -> T:
    """``step(*args)`` for one row, or :class:`RowError`: no other exception leaves it, whatever the row holds
    (except ``passthrough``: the processors' own assertions are bugs to see, not rows to drop)."""
    try:
        return step(*args)
    except (RowError, *passthrough):
        raise
    except RecursionError:
        raise RowError("nested too deeply", "a value nests deeper than the converter can follow") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary: one bad row is dropped with its reason, never fatal
        raise RowError("malformed row", f"{type(exc).__name__}: {clip(str(exc), 160)}") from None


def convert_row(
    converter: Converter, row: Any, ds: DatasetSpec, then: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """The row boundary of conversion: ``converter(row)`` checked by :func:`check_example` (then ``then(example)``,
    more per-row checks such as media files), or :class:`RowError`."""

    def step() -> dict[str, Any]:
        if not isinstance(row, dict):
            raise RowError("not an object", f"the row is {_kind(row)}")
        ex = converter(row, ds)
        check_example(ex)
        if then is not None:
            then(ex)
        return ex

    return row_boundary(step)
