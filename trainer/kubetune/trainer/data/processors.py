"""Processors: canonical example → token ids, keyed by the stage's data shape.

Truncation follows LLaMA-Factory's per-turn rule (:func:`infer_seqlen`); labels mask the
prompt (``IGNORE_INDEX``) unless ``trainOnPrompt``; ``maskHistory`` trains on the last
turn only and keeps it when truncating.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune.api.stages import DataShape
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.templates import Template

IGNORE_INDEX = -100


@dataclass
class ProcessorOptions:
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """How many source and target tokens to keep when a turn does not fit the remaining budget."""
    if target_len * 2 < cutoff_len:
        max_target = cutoff_len
    elif source_len * 2 < cutoff_len:
        max_target = cutoff_len - source_len
    else:
        max_target = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target = min(max_target, target_len)
    new_source = min(max(cutoff_len - new_target, 0), source_len)
    return new_source, new_target


class Tokens:
    """Memoising ``tokenizer(text).input_ids`` without special tokens; templates repeat texts a lot."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]


def encode_turns(
    turns: list[tuple[list[int], list[int]]], opts: ProcessorOptions
) -> tuple[list[int], list[int], bool]:
    """Concatenate (source, target) turns into input_ids/labels within cutoff_len; return also whether truncated."""
    input_ids: list[int] = []
    labels: list[int] = []
    total = 0
    truncated = False
    order = list(reversed(turns)) if opts.mask_history else turns
    pieces: list[tuple[list[int], list[int]]] = []
    for turn_idx, (source, target) in enumerate(order):
        if total >= opts.cutoff_len:
            truncated = True
            break
        src_len, tgt_len = infer_seqlen(len(source), len(target), opts.cutoff_len - total)
        truncated |= src_len < len(source) or tgt_len < len(target)
        source, target = source[:src_len], target[:tgt_len]
        total += src_len + tgt_len
        source_labels = source if opts.train_on_prompt else [IGNORE_INDEX] * src_len
        if opts.mask_history and turn_idx != 0:
            target_labels = [IGNORE_INDEX] * tgt_len
        else:
            target_labels = target
        pieces.append((source + target, source_labels + target_labels))
    if opts.mask_history:
        pieces.reverse()
    for ids, labs in pieces:
        input_ids += ids
        labels += labs
    return input_ids, labels, truncated


def process_supervised(
    example: dict[str, Any], template: Template, tokens: Tokens, opts: ProcessorOptions
) -> dict[str, Any]:
    prompt, response = example["prompt"], example["response"]
    if len(prompt) % 2 != 1 or len(response) != 1:
        raise RowError("not a supervised example", f"{len(prompt)} prompt / {len(response)} response messages")
    turns = template.turns(prompt, response[0], example.get("system", ""), example.get("tools", ""))
    flat = tokens([t for pair in turns for t in pair])
    pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    input_ids, labels, truncated = encode_turns(pairs, opts)
    if all(label == IGNORE_INDEX for label in labels):
        raise RowError("no trainable tokens", f"the prompt fills cutoffLen={opts.cutoff_len}")
    return {"input_ids": input_ids, "labels": labels, "_truncated": truncated}


Processor = Callable[[dict[str, Any], Template, Tokens, ProcessorOptions], dict[str, Any]]
PROCESSORS: dict[DataShape, Processor] = {DataShape.SUPERVISED: process_supervised}


def get_processor(shape: DataShape) -> Processor:
    if shape not in PROCESSORS:
        raise ValueError(f"no processor for data shape {shape.value!r}; known: {', '.join(s.value for s in PROCESSORS)}")
    return PROCESSORS[shape]
