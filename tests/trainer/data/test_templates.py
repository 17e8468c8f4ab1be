"""Named chat templates: golden texts, tools in the system slot, loud failures."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.trainer.data.templates import TEMPLATES, get_template

PROMPT = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}, {"role": "user", "content": "Q2"}]
ANSWER = {"role": "assistant", "content": "A2"}

GOLDEN = {
    "chatml": "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n|A1<|im_end|>\n|"
    "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n|A2<|im_end|>\n",
    "llama3": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|><|start_header_id|>user"
    "<|end_header_id|>\n\nQ1<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n|A1<|eot_id|>|"
    "<|start_header_id|>user<|end_header_id|>\n\nQ2<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n|"
    "A2<|eot_id|>",
    "mistral": "<s>[INST] S\n\nQ1[/INST]|A1</s>|[INST] Q2[/INST]|A2</s>",
    "gemma": "<bos><start_of_turn>user\nS\n\nQ1<end_of_turn>\n<start_of_turn>model\n|A1<end_of_turn>\n|"
    "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n|A2<end_of_turn>\n",
    "phi": "<|system|>\nS<|end|>\n<|user|>\nQ1<|end|>\n<|assistant|>\n|A1<|end|>\n|<|user|>\nQ2<|end|>\n<|assistant|>\n|"
    "A2<|end|>\n<|im_end|>",  # Phi-3's Jinja ends a conversation with eos
    "deepseek": "<｜begin▁of▁sentence｜>S\n\nUser: Q1\n\nAssistant:|A1<｜end▁of▁sentence｜>|User: Q2\n\nAssistant:|"
    "A2<｜end▁of▁sentence｜>",
    "default": "System: S<|im_end|>\nHuman: Q1<|im_end|>\nAssistant:|A1<|im_end|>\n|Human: Q2<|im_end|>\nAssistant:|"
    "A2<|im_end|>\n",
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_named_template_golden(name: str, tokenizer: Any) -> None:
    turns = get_template(name, tokenizer).turns(PROMPT, ANSWER, "S", "")
    assert "|".join(t for pair in turns for t in pair) == GOLDEN[name]


def test_qwen_has_a_default_system(tokenizer: Any) -> None:
    turns = get_template("qwen", tokenizer).turns(PROMPT[:1], ANSWER, "", "")
    # Qwen2.5's own default (its Jinja, shipped with TRL: tests/trainer/data/test_vendor_templates.py)
    assert turns[0][0].startswith(
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
    )


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_tools_go_into_the_system_slot_of_turn_zero(name: str, tokenizer: Any) -> None:
    tools = '[{"name": "get_weather", "parameters": {}}]'
    turns = get_template(name, tokenizer).turns(PROMPT, ANSWER, "S", tools)
    assert "get_weather" in turns[0][0] and "<tools>" in turns[0][0]
    assert all("get_weather" not in t for pair in turns[1:] for t in pair)
    prompt = get_template(name, tokenizer).prompt_text(PROMPT, "S", tools)
    assert prompt.endswith(turns[-1][0]) and "get_weather" in prompt


def test_tokenizer_template_puts_tools_in_system(tokenizer: Any) -> None:
    turns = get_template(None, tokenizer).turns(PROMPT[:1], ANSWER, "", '[{"name": "f"}]')
    assert turns[0][0].startswith("<|im_start|>system\n# Tools") and '"name": "f"' in turns[0][0]


def test_unknown_template_fails_loudly(tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="unknown template 'llama9'; known: tokenizer, chatml"):
        get_template("llama9", tokenizer)
