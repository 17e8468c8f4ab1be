"""PRETRAIN (pt): the text (first prompt message) + eos; ``labels`` equal ``input_ids``.

Without packing each text is cut to cutoffLen. With packing (the default for pt) nothing is
cut here: :func:`kubetune.trainer.data.processors.packing.pack_blocks` concatenates all texts
and slices cutoffLen blocks, dropping the tail (LLaMA-Factory's rule).
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.data.processors.base import ProcessorOptions, Tokens
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.templates import Template


def process_pretrain(
    example: dict[str, Any], template: Template, tokens: Tokens, opts: ProcessorOptions
) -> dict[str, Any]:
    prompt = example["prompt"]
    text = prompt[0]["content"] if prompt else ""
    if not text:
        raise RowError("empty text", "pretraining needs a non-empty text in columns.prompt")
    ids = list(tokens.one(text))
    if tokens.eos_id is not None:
        ids.append(tokens.eos_id)
    truncated = False
    if not opts.packing:
        if tokens.bos_id is not None:
            ids.insert(0, tokens.bos_id)
        truncated = len(ids) > opts.cutoff_len
        ids = ids[: opts.cutoff_len]
    return {"input_ids": ids, "labels": list(ids), "_truncated": truncated}
