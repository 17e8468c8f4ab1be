"""Mixing strategies and the eval split (seeded, pure)."""

from __future__ import annotations

from collections import Counter

import pytest

from kubetune.trainer.data.conversion import sample_rows
from kubetune.trainer.data.mixing import mix, split_eval

A, B = [f"a{i}" for i in range(6)], [f"b{i}" for i in range(2)]


def test_concat_and_round_robin_interleave() -> None:
    assert mix([A, B]) == A + B
    assert mix([A, B], "interleave_under") == ["a0", "b0", "a1", "b1"]
    over = mix([A, B], "interleave_over")
    assert over == ["a0", "b0", "a1", "b1", "a2", "b0", "a3", "b1", "a4", "b0", "a5"]
    assert set(over) == set(A + B)


def test_probabilities_are_seeded_and_respected() -> None:
    big = [[f"x{i}" for i in range(4000)], [f"y{i}" for i in range(4000)]]
    first = mix(big, "interleave_under", [0.8, 0.2], seed=1)
    assert first == mix(big, "interleave_under", [0.8, 0.2], seed=1)
    assert first != mix(big, "interleave_under", [0.8, 0.2], seed=2)
    share = Counter(r[0] for r in first)["x"] / len(first)
    assert 0.75 < share < 0.85
    over = mix([A, B], "interleave_over", [0.5, 0.5], seed=3)
    assert set(over) == set(A + B)
    assert mix([A, B], "interleave_over", [1.0, 0.0], seed=3) == A  # a zero weight never blocks the end


def test_bad_mix_arguments() -> None:
    with pytest.raises(ValueError, match="unknown mixStrategy"):
        mix([A], "zip")
    with pytest.raises(ValueError, match="2 datasets"):
        mix([A, B], "interleave_under", [1.0])
    assert mix([A, []], "interleave_under") == []


def test_split_eval_is_seeded_and_disjoint() -> None:
    rows = list(range(100))
    train, held = split_eval(rows, 0.1, seed=7)
    assert len(held) == 10 and sorted(train + held) == rows
    assert (train, held) == split_eval(rows, 0.1, seed=7)
    assert split_eval([1], 0.5, 0) == ([1], [])


def test_num_samples_oversamples_and_max_samples_cuts() -> None:
    rows = ["r0", "r1", "r2"]
    picked = sample_rows(rows, 2, None, seed=0)
    assert len(picked) == 2 and all(rows[i] == r for i, r in picked)
    over = sample_rows(rows, 7, None, seed=0)
    assert len(over) == 7 and [i for i, _ in over[:3]] == [0, 1, 2]
    assert sample_rows(rows, 7, 4, seed=0) == over[:4]
    assert sample_rows(rows, None, 2, seed=0) == [(0, "r0"), (1, "r1")]
