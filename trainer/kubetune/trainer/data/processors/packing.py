"""Packing: many tokenized rows → fewer cutoffLen rows.

* :func:`pack_blocks` (pt): concatenate every text and slice cutoffLen blocks; the tail that
  does not fill a block is dropped; BOS is put back at each block start when the tokenizer
  adds one (LLaMA-Factory's rule).
* :func:`pack_examples` (sft): greedy knapsack of whole examples into cutoffLen rows, with
  ``position_ids`` restarting at 0 and ``seq_lengths`` per example, which is what TRL's
  padding-free collator reads to keep packed examples from attending to each other.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Any


@dataclass
class PackingStats:
    rows_in: int = 0
    rows_out: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    capacity: int = 0

    @property
    def efficiency(self) -> float:
        """Share of the packed rows' capacity holding real tokens."""
        return self.tokens_out / self.capacity if self.capacity else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rowsIn": self.rows_in,
            "rowsOut": self.rows_out,
            "tokensIn": self.tokens_in,
            "tokensOut": self.tokens_out,
            "efficiency": round(self.efficiency, 4),
            "tokensDropped": self.tokens_in - self.tokens_out,
        }


def pack_blocks(
    items: list[dict[str, Any]], cutoff_len: int, bos_id: int | None = None
) -> tuple[list[dict], PackingStats]:
    stream = [t for item in items for t in item["input_ids"]]
    total = len(stream) // cutoff_len * cutoff_len
    blocks = []
    for start in range(0, total, cutoff_len):
        block = stream[start : start + cutoff_len]
        if bos_id is not None:
            block[0] = bos_id
        blocks.append({"input_ids": block, "labels": list(block)})
    stats = PackingStats(len(items), len(blocks), len(stream), total, total)
    return blocks, stats


def knapsack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Greedy: fill one bin at a time with the longest remaining item that still fits. Returns index groups."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    sizes = [lengths[i] for i in order]
    bins: list[list[int]] = []
    while order:
        room, group = capacity, []
        while order:
            pos = bisect.bisect_right(sizes, room) - 1
            if pos < 0:
                break
            room -= sizes.pop(pos)
            group.append(order.pop(pos))
        if not group:  # an item larger than capacity; callers drop those first
            raise ValueError(f"an example of {sizes[0]} tokens does not fit cutoffLen={capacity}")
        bins.append(group)
    return bins


def pack_examples(items: list[dict[str, Any]], cutoff_len: int) -> tuple[list[dict], PackingStats]:
    groups = knapsack([len(item["input_ids"]) for item in items], cutoff_len)
    packed = []
    for group in groups:
        members = [items[i] for i in group]
        packed.append(
            {
                "input_ids": [t for m in members for t in m["input_ids"]],
                "labels": [t for m in members for t in m["labels"]],
                "position_ids": [p for m in members for p in range(len(m["input_ids"]))],
                "seq_lengths": [len(m["input_ids"]) for m in members],
            }
        )
    tokens = sum(len(item["input_ids"]) for item in items)
    return packed, PackingStats(len(items), len(packed), tokens, tokens, len(packed) * cutoff_len)
