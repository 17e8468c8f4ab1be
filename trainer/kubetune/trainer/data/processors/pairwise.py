"""PAIRWISE (rm, dpo, orpo): ``prompt_ids``, ``chosen_ids``, ``rejected_ids`` (TRL's tokenized preference format).

The prompt holds every earlier turn; chosen and rejected are completion tokens only. When
too long, both are cut to the same length, from LLaMA-Factory's rule applied to
max(len(chosen), len(rejected)).
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.data.processors.base import ProcessorOptions, Tokens, infer_seqlen, render_oneturn
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.templates import Template


def process_pairwise(
    example: dict[str, Any], template: Template, tokens: Tokens, opts: ProcessorOptions
) -> dict[str, Any]:
    prompt, response = example["prompt"], example["response"]
    if len(prompt) % 2 != 1 or len(response) < 2:
        raise RowError(
            "not a preference pair",
            f"{len(prompt)} prompt / {len(response)} response messages; set ranking: true and columns.chosen/rejected",
        )
    prompt_ids, chosen_ids = render_oneturn(template, example, response[0], tokens)
    _, rejected_ids = render_oneturn(template, example, response[1], tokens)
    longest = max(len(chosen_ids), len(rejected_ids))
    truncated = len(prompt_ids) + longest > opts.cutoff_len
    if truncated:
        source_len, target_len = infer_seqlen(len(prompt_ids), longest, opts.cutoff_len)
        prompt_ids, chosen_ids, rejected_ids = (
            prompt_ids[:source_len],
            chosen_ids[:target_len],
            rejected_ids[:target_len],
        )
    if not chosen_ids or not rejected_ids:
        raise RowError("no completion tokens", f"the prompt fills cutoffLen={opts.cutoff_len}")
    return {"prompt_ids": prompt_ids, "chosen_ids": chosen_ids, "rejected_ids": rejected_ids, "_truncated": truncated}
