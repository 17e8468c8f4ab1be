"""Chat templates against the vendors' own Jinja (the originals shipped with TRL): the token ids kubetune trains on
are the ids the vendor's template renders for the same conversation, single- and multi-turn, and only the
assistant turns carry labels. Templates that rewrite earlier turns (Qwen3) keep every multi-turn row. The saved
tokenizer's chat template renders exactly the training format (so vLLM/TGI serve what the model learned)."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from kubetune.api.v1alpha1 import TEMPLATE_NAMES
from kubetune.trainer.data.processors import IGNORE_INDEX, ProcessorOptions, Tokens
from kubetune.trainer.data.processors.supervised import process_supervised
from kubetune.trainer.data.templates import (
    TEMPLATES,
    VENDOR_TEMPLATES,
    JinjaTemplate,
    get_template,
    has_generation_markers,
    vendor_template,
)

SYSTEM = "Answer briefly."
QUESTIONS = ["Which colour is the sky on a clear day?", "And at sunset?", "Why is that?"]
ANSWERS = ["Blue, mostly.", "Orange and red.", "Light scatters through more air."]
# named templates (format strings) and the TRL-shipped vendor Jinja each reproduces, with the bos text it writes
NAMED_VENDOR = {
    "llama3": ("llama3", "<|begin_of_text|>"),
    "gemma": ("gemma", "<bos>"),
    "phi": ("phi3", None),
    "qwen": ("qwen2_5", None),
    "deepseek3": ("deepseekv3", "<｜begin▁of▁sentence｜>"),
}
SPECIAL = re.compile(r"<\|[^|<>'\"\s]{1,40}\|>|<｜[^｜'\"]{1,40}｜>|<(?:start|end)_of_turn>|<bos>")


def rows() -> list[tuple[str, list[dict[str, str]], str]]:
    out = []
    for turns in (1, 3):
        for system in ("", SYSTEM):
            convo = []
            for q, a in zip(QUESTIONS[:turns], ANSWERS[:turns], strict=True):
                convo += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            out.append((f"{turns}turn{'-system' if system else ''}", convo, system))
    return out


@pytest.fixture(scope="module")
def vendor_tokenizer(tokenizer: Any):
    """SmolLM2's tokenizer taught every vendor's special tokens (so they are single ids, as in the vendor's)."""
    tok = copy.deepcopy(tokenizer)
    names = {*VENDOR_TEMPLATES.values(), *(v for v, _ in NAMED_VENDOR.values())}
    found = sorted({m for name in names for m in SPECIAL.findall(vendor_template(name))})
    tok.add_special_tokens({"additional_special_tokens": found})
    return tok


def encode(tok: Any, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def vendor_ids(tok: Any, source: str, convo: list[dict[str, str]], system: str, fold: bool) -> list[int]:
    messages = [dict(m) for m in convo]
    if system and fold:
        messages[0]["content"] = f"{system}\n\n{messages[0]['content']}"
    elif system:
        messages.insert(0, {"role": "system", "content": system})
    return encode(tok, tok.apply_chat_template(messages, tokenize=False, chat_template=source))


def ours(template: Any, tok: Any, convo: list[dict[str, str]], system: str) -> dict[str, Any]:
    example = {"prompt": convo[:-1], "response": convo[-1:], "system": system, "tools": ""}
    return process_supervised(example, template, Tokens(tok), ProcessorOptions(cutoff_len=4096))


def assert_labels_only_on_answers(tok: Any, item: dict[str, Any], convo: list[dict[str, str]], system: str) -> None:
    labelled, segment = [], []
    for token, label in zip(item["input_ids"], item["labels"], strict=True):
        if label == IGNORE_INDEX:
            if segment:
                labelled.append(segment)
            segment = []
        else:
            assert label == token
            segment.append(token)
    if segment:
        labelled.append(segment)
    texts = [tok.decode(s) for s in labelled]
    answers = [m["content"] for m in convo if m["role"] == "assistant"]
    assert len(texts) == len(answers), texts
    for text, answer in zip(texts, answers, strict=True):
        assert answer in text, (answer, text)
        assert not any(q in text for q in QUESTIONS) and (not system or system not in text), text


@pytest.mark.parametrize("name", sorted(VENDOR_TEMPLATES))
@pytest.mark.parametrize("case", rows(), ids=lambda r: r[0])
def test_vendor_template_ids_match_the_vendors_jinja(name: str, case: Any, vendor_tokenizer: Any) -> None:
    _tid, convo, system = case
    source = vendor_template(VENDOR_TEMPLATES[name])
    template = get_template(name, vendor_tokenizer)
    assert isinstance(template, JinjaTemplate)
    # TRL 1.16 ships a training variant for all but Llama 3.1/3.2, which render incrementally (prefix-preserving)
    assert (template.training is None) == (name in ("llama3.1", "llama3.2"))
    item = ours(template, vendor_tokenizer, convo, system)
    assert item["input_ids"] == vendor_ids(vendor_tokenizer, source, convo, system, template._folds_system())
    assert_labels_only_on_answers(vendor_tokenizer, item, convo, system)


@pytest.mark.parametrize("name", sorted(NAMED_VENDOR))
@pytest.mark.parametrize("case", rows(), ids=lambda r: r[0])
def test_named_template_ids_match_the_vendors_jinja(name: str, case: Any, vendor_tokenizer: Any) -> None:
    _tid, convo, system = case
    vendor, bos = NAMED_VENDOR[name]
    tok = copy.deepcopy(vendor_tokenizer)
    if bos:
        tok.bos_token = bos
    template = get_template(name, tok)
    item = ours(template, tok, convo, system)
    assert item["input_ids"] == vendor_ids(tok, vendor_template(vendor), convo, system, fold=name == "gemma")
    assert_labels_only_on_answers(tok, item, convo, system)


@pytest.mark.parametrize("name", sorted(set(TEMPLATES) | set(VENDOR_TEMPLATES) | {"tokenizer"}))
@pytest.mark.parametrize("case", rows(), ids=lambda r: r[0])
def test_saved_tokenizer_renders_the_training_format(name: str, case: Any, vendor_tokenizer: Any, tmp_path) -> None:
    """What the artifact's tokenizer renders for a conversation is, token for token, what was trained on."""
    from transformers import AutoTokenizer

    from kubetune.trainer.artifacts.tokenizer import save_tokenizer

    _tid, convo, system = case
    tok = copy.deepcopy(vendor_tokenizer)
    template = get_template(name, tok)
    item = ours(template, tok, convo, system)
    save_tokenizer(tok, template, tmp_path)
    saved = AutoTokenizer.from_pretrained(tmp_path)
    fold = isinstance(template, JinjaTemplate) and template._folds_system()
    assert item["input_ids"] == vendor_ids(saved, saved.chat_template, convo, system, fold)
    assert not has_generation_markers(saved.chat_template)  # servers' Jinja has no {% generation %} tag


def test_qwen3_keeps_every_multi_turn_row(vendor_tokenizer: Any) -> None:
    """Qwen3's template drops the think block of earlier answers when a turn is added: no row may be lost."""
    template = get_template("qwen3", vendor_tokenizer)
    for _tid, convo, system in rows():
        item = ours(template, vendor_tokenizer, convo, system)
        assert_labels_only_on_answers(vendor_tokenizer, item, convo, system)
    # the same holds when the tokenizer itself carries Qwen3's template (spec.model.template unset)
    tok = copy.deepcopy(vendor_tokenizer)
    tok.chat_template = vendor_template("qwen3")
    template = get_template(None, tok)
    _tid, convo, system = rows()[-1]
    assert ours(template, tok, convo, system)["input_ids"] == vendor_ids(tok, tok.chat_template, convo, system, False)


def test_every_template_name_the_api_accepts_exists_in_the_trainer() -> None:
    assert set(TEMPLATE_NAMES) == {"tokenizer"} | set(TEMPLATES) | set(VENDOR_TEMPLATES)
