"""The canonical example every converter emits (LLaMA-Factory's aligned format).

``prompt`` is an odd-length list of messages (user, assistant, …, user); ``response`` has
1 message (supervised), 2 (pairwise: chosen, rejected; KTO: answer + label) or 0 (prompt only).
"""

from __future__ import annotations

from typing import Any, TypedDict

USER, ASSISTANT, SYSTEM, FUNCTION, OBSERVATION = "user", "assistant", "system", "function", "observation"
ROLES = (USER, ASSISTANT, SYSTEM, FUNCTION, OBSERVATION)


class Message(TypedDict):
    role: str
    content: str


class Example(TypedDict, total=False):
    prompt: list[Message]
    response: list[Message]
    system: str
    tools: str
    label: bool | None  # KTO: True desirable, False undesirable
    images: list[str]


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
    return {"prompt": prompt, "response": response, "system": system, "tools": tools, "label": label,
            "images": images or []}
