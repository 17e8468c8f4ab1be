"""Rule-based rewards for grpo (``spec.training.rewardFunctions``): pure functions TRL's GRPOTrainer calls.

TRL calls each reward function with the sampled ``completions`` and, as keyword arguments, the other
columns of the batch's rows; kubetune's prompt-only rows carry ``response_text``, the reference answer.
Every function returns one float per completion.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

RewardFn = Callable[..., list[float]]


def completion_text(completion: Any) -> str:
    """A completion as text: TRL passes strings for text prompts and message lists for conversations."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _normalized(text: str) -> str:
    return " ".join(text.lower().split())


def answer_reward(completions: Sequence[Any], response_text: Sequence[str] | None = None, **_: Any) -> list[float]:
    """1.0 when the completion contains the row's reference answer (case and whitespace ignored), else 0.0.

    A row without a reference answer scores 0.0: it cannot be verified."""
    references = list(response_text or [""] * len(completions))
    return [
        1.0 if _normalized(ref) and _normalized(ref) in _normalized(completion_text(c)) else 0.0
        for c, ref in zip(completions, references, strict=True)
    ]


def exact_reward(completions: Sequence[Any], response_text: Sequence[str] | None = None, **_: Any) -> list[float]:
    """1.0 when the completion is the row's reference answer (case and whitespace ignored), else 0.0; a row
    without a reference answer scores 0.0."""
    references = list(response_text or [""] * len(completions))
    return [
        1.0 if _normalized(ref) and _normalized(ref) == _normalized(completion_text(c)) else 0.0
        for c, ref in zip(completions, references, strict=True)
    ]


def regex_reward(pattern: str) -> RewardFn:
    """1.0 when ``pattern`` is found in the completion (DOTALL), else 0.0."""
    compiled = re.compile(pattern, re.DOTALL)

    def regex(completions: Sequence[Any], **_: Any) -> list[float]:
        return [1.0 if compiled.search(completion_text(c)) else 0.0 for c in completions]

    return regex


def reward_functions(specs: Sequence[Any]) -> list[tuple[RewardFn, float]]:
    """``spec.training.rewardFunctions`` as (function, weight) pairs, each function named uniquely for TRL's
    per-reward log lines (``rewards/<name>/mean``)."""
    out: list[tuple[RewardFn, float]] = []
    for i, spec in enumerate(specs):
        if spec.type == "answer":

            def fn(completions: Sequence[Any], response_text: Sequence[str] | None = None, **kw: Any) -> list[float]:
                return answer_reward(completions, response_text, **kw)
        elif spec.type == "exact":

            def fn(completions: Sequence[Any], response_text: Sequence[str] | None = None, **kw: Any) -> list[float]:
                return exact_reward(completions, response_text, **kw)
        elif spec.type == "regex":
            fn = regex_reward(spec.pattern)
        else:  # the API admits only the types above
            raise ValueError(f"spec.training.rewardFunctions[{i}].type: unknown reward {spec.type!r}")
        fn.__name__ = f"{spec.type}_{i}"
        out.append((fn, float(spec.weight)))
    return out
