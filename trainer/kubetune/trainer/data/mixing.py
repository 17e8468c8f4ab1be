"""Mixing several datasets into one training stream, and holding out an eval split. Seeded, pure.

* ``concat``: one after another.
* ``interleave_under``: draw from the datasets (round robin, or by ``interleaveProbs``) until
  the first one runs out — the larger ones are under-sampled.
* ``interleave_over``: draw until every dataset has run out at least once, restarting the
  ones that ran out — the smaller ones are over-sampled.

These are the semantics of ``datasets.interleave_datasets`` with ``first_exhausted`` and
``all_exhausted``, which LLaMA-Factory's ``mix_strategy`` uses.
"""

from __future__ import annotations

import random
from typing import Any, TypeVar

T = TypeVar("T")

STRATEGIES = ("concat", "interleave_under", "interleave_over")


def mix(groups: list[list[T]], strategy: str = "concat", probs: list[float] | None = None, seed: int = 42) -> list[T]:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown mixStrategy {strategy!r}; known: {', '.join(STRATEGIES)}")
    if probs is not None and len(probs) != len(groups):
        raise ValueError(f"interleaveProbs has {len(probs)} values for {len(groups)} datasets")
    if strategy == "concat" or len(groups) < 2:
        return [row for group in groups for row in group]
    live = [i for i, g in enumerate(groups) if g and (probs is None or probs[i] > 0)]
    if not live or (strategy == "interleave_under" and any(not g for g in groups)):
        return []  # an empty dataset is exhausted before the first draw
    rng = random.Random(seed)
    weights = [probs[i] for i in live] if probs is not None else None
    position = [0] * len(groups)
    exhausted: set[int] = set()
    out: list[T] = []
    step = 0
    while True:
        if weights is None:
            i = live[step % len(live)]
            step += 1
        else:
            i = rng.choices(live, weights=weights)[0]
        out.append(groups[i][position[i]])
        position[i] += 1
        if position[i] == len(groups[i]):
            position[i] = 0
            exhausted.add(i)
            if strategy == "interleave_under" or len(exhausted) == len(live):
                return out


def split_eval(rows: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Hold out ``fraction`` of the rows (at least one) for evaluation, chosen by ``seed``; order is kept."""
    if not 0 < fraction < 1 or len(rows) < 2:
        return rows, []
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    held = set(order[: max(1, round(len(rows) * fraction))])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]
