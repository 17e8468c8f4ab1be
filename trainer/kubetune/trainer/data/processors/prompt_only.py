"""PROMPT_ONLY (ppo, grpo): ``prompt_ids``, the rendered ``prompt`` text, and ``response_text``.

The prompt ends with the generation header, so it is never cut: a prompt longer than
cutoffLen is dropped (reported). ``response_text`` is the reference answer when the row
has one (reward functions may compare against it), else "".
"""

from __future__ import annotations

from typing import Any

from kubetune.trainer.data.processors.base import ProcessorOptions, Tokens
from kubetune.trainer.data.schema import RowError
from kubetune.trainer.data.templates import Template


def process_prompt_only(
    example: dict[str, Any], template: Template, tokens: Tokens, opts: ProcessorOptions
) -> dict[str, Any]:
    prompt, response = example["prompt"], example["response"]
    if len(prompt) % 2 != 1:
        raise RowError("not a prompt", f"{len(prompt)} prompt messages; the conversation must end with a user turn")
    text = template.prompt_text(prompt, example.get("system", ""), example.get("tools", ""))
    prompt_ids = tokens.one(text)
    if len(prompt_ids) > opts.cutoff_len:
        raise RowError("prompt longer than cutoffLen", f"{len(prompt_ids)} tokens > cutoffLen={opts.cutoff_len}")
    reference = response[0]["content"] if len(response) == 1 else ""
    return {"prompt_ids": prompt_ids, "prompt": text, "response_text": reference}
