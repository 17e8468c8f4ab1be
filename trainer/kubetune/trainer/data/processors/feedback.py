"""FEEDBACK (kto): ``prompt_ids``, ``completion_ids``, ``label`` and ``KL_completion_ids``.

A row's label is desirable when its first response is non-empty (the converters put the
answer first for ``true``). The KL pairs need the whole dataset — each prompt is paired with
the previous row's completion (rotation by one) — so :func:`add_kl_completions` runs after
the per-row processor.
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.data.processors.base import ProcessorOptions, Tokens, infer_seqlen, render_oneturn
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.templates import Template


def process_feedback(
    example: dict[str, Any], template: Template, tokens: Tokens, opts: ProcessorOptions
) -> dict[str, Any]:
    prompt, response = example["prompt"], example["response"]
    if len(prompt) % 2 != 1 or len(response) < 2:
        raise RowError("no KTO label", f"{len(response)} response messages; set columns.kto_tag to a boolean column")
    label = bool(response[0]["content"])
    answer = response[0] if label else response[1]
    prompt_ids, completion_ids = render_oneturn(template, example, answer, tokens)
    full = list(completion_ids)
    truncated = len(prompt_ids) + len(completion_ids) > opts.cutoff_len
    if truncated:
        source_len, target_len = infer_seqlen(len(prompt_ids), len(completion_ids), opts.cutoff_len)
        prompt_ids, completion_ids = prompt_ids[:source_len], completion_ids[:target_len]
    if not completion_ids:
        raise RowError("no completion tokens", f"the prompt fills cutoffLen={opts.cutoff_len}")
    return {
        "prompt_ids": prompt_ids,
        "completion_ids": completion_ids,
        "label": label,
        "_full_completion": full,
        "_truncated": truncated,
    }


def add_kl_completions(items: list[dict[str, Any]], opts: ProcessorOptions) -> list[dict[str, Any]]:
    """Pair row i's prompt with row i-1's completion (row 0 takes the last row's), cut to fit cutoffLen."""
    out = []
    for i, item in enumerate(items):
        previous = items[i - 1]
        kl = previous.get("_full_completion", previous["completion_ids"])
        if len(item["prompt_ids"]) + len(kl) > opts.cutoff_len:
            _, target_len = infer_seqlen(len(item["prompt_ids"]), len(kl), opts.cutoff_len)
            kl = kl[: max(target_len, 1)]
        out.append(
            {
                "prompt_ids": item["prompt_ids"],
                "completion_ids": item["completion_ids"],
                "KL_completion_ids": list(kl),
                "label": item["label"],
            }
        )
    return out
