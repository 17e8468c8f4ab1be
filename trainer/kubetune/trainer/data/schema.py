"""The canonical example every converter emits (LLaMA-Factory's aligned format).

``prompt`` is an odd-length list of messages (user, assistant, …, user); ``response`` has
1 message (supervised), 2 (pairwise: chosen, rejected; KTO: answer + label) or 0 (prompt only).
"""

from __future__ import annotations

import re
from typing import Any, TypedDict

USER, ASSISTANT, SYSTEM, FUNCTION, OBSERVATION = "user", "assistant", "system", "function", "observation"
ROLES = (USER, ASSISTANT, SYSTEM, FUNCTION, OBSERVATION)


class Message(TypedDict):
    role: str
    content: str


ECHO_LIMIT = 80
_SURROGATE = re.compile("[\ud800-\udfff]")


def clip(value: Any, limit: int = ECHO_LIMIT) -> str:
    """``value`` (``repr`` unless it is a string) cut to ``limit`` characters: a 1 MB cell is never echoed in full."""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class RowError(ValueError):
    """A row that cannot be used; ``reason`` is short and stable (it is a report key)."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def example(
    prompt: list[Message],
    response: list[Message],
    system: str = "",
    tools: str = "",
    label: bool | None = None,
    images: list[str] | None = None,
) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "response": response,
        "system": system,
        "tools": tools,
        "label": label,
        "images": images or [],
    }


def _bad_text(value: Any, what: str) -> None:
    if not isinstance(value, str):
        raise RowError("malformed row", f"{what} is {type(value).__name__}, not text")
    if _SURROGATE.search(value):
        raise RowError("not UTF-8", f"{what} holds a lone surrogate (text that is not valid UTF-8)")


def check_example(ex: Any) -> None:
    """Raise :class:`RowError` unless ``ex`` is a canonical example the templates and tokenizer can take: messages
    with a known role and text content, text system/tools, a boolean-or-null label, a list of image paths."""
    if not isinstance(ex, dict):
        raise RowError("malformed row", "the converter returned no example")
    for part in ("prompt", "response"):
        messages = ex.get(part)
        if not isinstance(messages, list):
            raise RowError("malformed row", f"{part} is not a list of messages")
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                raise RowError("invalid role", f"{part} message {i} has no known role")
            _bad_text(m.get("content"), f"{part} message {i} content")
    for key in ("system", "tools"):
        _bad_text(ex.get(key, ""), key)
    if ex.get("label") is not None and not isinstance(ex["label"], bool):
        raise RowError("malformed row", "label is not a boolean")
    images = ex.get("images", [])
    if not isinstance(images, list):
        raise RowError("malformed images", "images is not a list of paths")
    for i, path in enumerate(images):
        _bad_text(path, f"images[{i}]")
