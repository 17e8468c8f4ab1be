"""Processors: canonical example → model inputs, one module per data SHAPE (not per stage).

Every processor is a pure function ``(example, template, tokens, opts) -> dict`` in
:data:`PROCESSORS`, raising :class:`~kubetune.trainer.data.schema.RowError` for a row it
cannot use. Keys starting with ``_`` are bookkeeping for the loader (``_truncated``) and
never reach a trainer. :func:`finish` runs the whole-dataset steps (packing, KTO's KL pairs).

Output keys are TRL's pre-tokenized formats:

========== ===================================================================
pretrain   input_ids, labels (packed into cutoffLen blocks by default)
supervised input_ids, labels (+ position_ids, seq_lengths when packed)
pairwise   prompt_ids, chosen_ids, rejected_ids
feedback   prompt_ids, completion_ids, KL_completion_ids, label
prompt     prompt_ids, prompt (rendered text), response_text
========== ===================================================================
"""

from __future__ import annotations

from typing import Any

from kubetune.api.stages import DataShape
from kubetune.trainer.data.processors.base import (
    IGNORE_INDEX,
    Processor,
    ProcessorOptions,
    Tokens,
    infer_seqlen,
    texts_of,
)
from kubetune.trainer.data.processors.feedback import add_kl_completions, process_feedback
from kubetune.trainer.data.processors.packing import PackingStats, knapsack, pack_blocks, pack_examples
from kubetune.trainer.data.processors.pairwise import process_pairwise
from kubetune.trainer.data.processors.pretrain import process_pretrain
from kubetune.trainer.data.processors.prompt_only import process_prompt_only
from kubetune.trainer.data.processors.supervised import encode_turns, process_supervised

PROCESSORS: dict[DataShape, Processor] = {
    DataShape.PRETRAIN: process_pretrain,
    DataShape.SUPERVISED: process_supervised,
    DataShape.PAIRWISE: process_pairwise,
    DataShape.FEEDBACK: process_feedback,
    DataShape.PROMPT_ONLY: process_prompt_only,
}


def get_processor(shape: DataShape) -> Processor:
    if shape not in PROCESSORS:
        raise ValueError(
            f"no processor for data shape {shape.value!r}; known: {', '.join(s.value for s in PROCESSORS)}"
        )
    return PROCESSORS[shape]


def finish(
    shape: DataShape, items: list[dict[str, Any]], opts: ProcessorOptions, tokens: Tokens
) -> tuple[list[dict[str, Any]], PackingStats | None]:
    """Whole-dataset steps after the per-row processor; strips the ``_`` bookkeeping keys."""
    stats = None
    if shape == DataShape.FEEDBACK:
        items = add_kl_completions(items, opts) if items else []
    items = [{k: v for k, v in item.items() if not k.startswith("_")} for item in items]
    if opts.packing and shape == DataShape.PRETRAIN:
        items, stats = pack_blocks(items, opts.cutoff_len, tokens.bos_id)
    elif opts.packing and shape == DataShape.SUPERVISED:
        items, stats = pack_examples(items, opts.cutoff_len)
    return items, stats


__all__ = [
    "IGNORE_INDEX",
    "PROCESSORS",
    "PackingStats",
    "Processor",
    "ProcessorOptions",
    "Tokens",
    "encode_turns",
    "finish",
    "get_processor",
    "infer_seqlen",
    "knapsack",
    "pack_blocks",
    "pack_examples",
    "texts_of",
]
