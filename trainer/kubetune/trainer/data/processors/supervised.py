"""SUPERVISED (sft): prompt → one response; ``input_ids`` and ``labels`` with the prompt masked.

Truncation is per turn (:func:`infer_seqlen`); ``maskHistory`` trains on the last turn
only and walks the turns backwards so that turn survives truncation. With packing, a row
longer than cutoffLen is dropped (reported), never cut: packing must not split an example.
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.data.processors.base import (
    IGNORE_INDEX,
    UNLIMITED,
    ProcessorOptions,
    Tokens,
    infer_seqlen,
    render,
)
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.templates import Template


def encode_turns(
    turns: list[tuple[list[int], list[int]]], opts: ProcessorOptions, cutoff_len: int | None = None
) -> tuple[list[int], list[int], bool]:
    """Concatenate (source, target) turns into input_ids/labels within the cutoff; also say whether anything was cut."""
    cutoff = opts.cutoff_len if cutoff_len is None else cutoff_len
    total = 0
    truncated = False
    order = list(reversed(turns)) if opts.mask_history else turns
    pieces: list[tuple[list[int], list[int]]] = []
    for turn_idx, (source, target) in enumerate(order):
        if total >= cutoff:
            truncated = True
            break
        src_len, tgt_len = infer_seqlen(len(source), len(target), cutoff - total)
        truncated |= src_len < len(source) or tgt_len < len(target)
        source, target = source[:src_len], target[:tgt_len]
        total += src_len + tgt_len
        source_labels = list(source) if opts.train_on_prompt else [IGNORE_INDEX] * src_len
        if opts.mask_history and turn_idx != 0:
            target_labels = [IGNORE_INDEX] * tgt_len
        else:
            target_labels = list(target)
        pieces.append((list(source) + list(target), source_labels + target_labels))
    if opts.mask_history:
        pieces.reverse()
    input_ids = [t for ids, _ in pieces for t in ids]
    labels = [t for _, labs in pieces for t in labs]
    return input_ids, labels, truncated


def process_supervised(
    example: dict[str, Any], template: Template, tokens: Tokens, opts: ProcessorOptions
) -> dict[str, Any]:
    prompt, response = example["prompt"], example["response"]
    if len(prompt) % 2 != 1 or len(response) != 1:
        raise RowError("not a supervised example", f"{len(prompt)} prompt / {len(response)} response messages")
    turns = render(template, example, response[0])
    flat = tokens.joined([t for pair in turns for t in pair])
    pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    if opts.packing:
        length = sum(len(ids) for ids in flat)
        if length > opts.cutoff_len:
            raise RowError("longer than cutoffLen (packing)", f"{length} tokens > cutoffLen={opts.cutoff_len}")
        input_ids, labels, truncated = encode_turns(pairs, opts, UNLIMITED)
    else:
        input_ids, labels, truncated = encode_turns(pairs, opts)
    if labels.count(IGNORE_INDEX) == len(labels):
        raise RowError("no trainable tokens", f"the prompt fills cutoffLen={opts.cutoff_len}")
    return {"input_ids": input_ids, "labels": labels, "_truncated": truncated}
