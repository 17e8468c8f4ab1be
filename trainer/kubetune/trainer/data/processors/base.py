"""What every processor shares: options, the token cache, LLaMA-Factory's truncation rule."""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from kubetune.trainer.data.templates import Template

IGNORE_INDEX = -100
UNLIMITED = 1 << 62


@dataclass
class ProcessorOptions:
    cutoff_len: int
    train_on_prompt: bool = False
    mask_history: bool = False
    packing: bool = False


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """How many source and target tokens to keep when a turn does not fit the remaining budget.

    LLaMA-Factory's rule: a short target is kept whole; else a short source is kept whole;
    else both are cut in proportion to their lengths.
    """
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
    """``tokenizer(text).input_ids`` without special tokens, with a cache.

    Templates repeat the same texts (system prompts, role headers) across rows, and the
    loader primes the cache with one batched tokenizer call per chunk of rows, which is
    where most of the preprocessing speed comes from.

    A conversation's rendered pieces (prompt, answer, prompt, answer, ...) are tokenized as ONE text and
    split back at the piece boundaries (:meth:`joined`), so the ids are exactly those of the vendor's
    template applied to the whole conversation: tokenized apart, ``"...<|end_header_id|>\\n\\n"`` and
    ``"Blue"`` give ``"\\n\\n"`` where the whole text gives ``"\\n", "\\n"``.
    """

    def __init__(self, tokenizer: Any, cache_limit: int = 200_000):
        self.tokenizer = tokenizer
        self.cache: dict[str, list[int]] = {}
        self.ends: dict[str, list[int]] = {}  # end offset of every token of a joined text (see :meth:`joined`)
        self.cache_limit = cache_limit
        self.eos_id: int | None = tokenizer.eos_token_id
        self.bos_id: int | None = tokenizer.bos_token_id if getattr(tokenizer, "add_bos_token", False) else None
        # A fast tokenizer's Rust backend, called directly: what ``tokenizer(texts, add_special_tokens=False)``
        # does underneath, without building offsets, masks and BatchEncoding objects.
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self._batch = getattr(backend, "encode_batch_fast", None) or getattr(backend, "encode_batch", None)
        self._with_offsets = getattr(backend, "encode_batch", None)

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if self._batch is not None:
            return [enc.ids for enc in self._batch(texts, add_special_tokens=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _encode_with_ends(self, texts: list[str]) -> list[tuple[list[int], list[int] | None]]:
        if self._with_offsets is not None:
            return [
                (enc.ids, [end for _, end in enc.offsets])
                for enc in self._with_offsets(texts, add_special_tokens=False)
            ]
        return [(ids, None) for ids in self._encode(texts)]

    def _add(self, texts: Iterable[str]) -> None:
        todo = [t for t in dict.fromkeys(texts) if t not in self.cache]
        if todo:
            self.cache.update(zip(todo, self._encode(todo)))

    def prime(self, texts: Iterable[str]) -> None:
        """Tokenize ``texts`` in one batch and remember them (the loader calls this between chunks of rows)."""
        self.remember(self.encode_missing(texts))

    def encode_missing(self, texts: Iterable[str]) -> dict[str, tuple[list[int], list[int] | None]]:
        """The joined texts not cached yet, tokenized in one batch with token end offsets (the cache is left as it is)."""
        todo = [t for t in dict.fromkeys(texts) if t not in self.ends]
        return dict(zip(todo, self._encode_with_ends(todo))) if todo else {}

    def remember(self, encoded: dict[str, Any]) -> None:
        if len(self.cache) > self.cache_limit:
            self.cache.clear()
            self.ends.clear()
        for text, value in encoded.items():
            ids, ends = value if isinstance(value, tuple) else (value, None)
            self.cache[text] = ids
            if ends is not None:
                self.ends[text] = ends

    def __call__(self, texts: list[str]) -> list[list[int]]:
        self._add(texts)
        return [self.cache[t] for t in texts]

    def one(self, text: str) -> list[int]:
        return self([text])[0]

    def joined(self, pieces: list[str]) -> list[list[int]]:
        """The ids of ``"".join(pieces)`` split back into one list per piece (a token goes to the piece holding
        its last character); pieces tokenized apart when the tokenizer gives no offsets."""
        text = "".join(pieces)
        if text not in self.ends:
            self.remember(self.encode_missing([text]))
        ends = self.ends.get(text)
        if ends is None:
            return self(pieces)
        starts, at = [], 0
        for piece in pieces:
            starts.append(at)
            at += len(piece)
        out: list[list[int]] = [[] for _ in pieces]
        for token, end in zip(self.cache[text], ends, strict=True):
            out[bisect.bisect_right(starts, max(end - 1, 0)) - 1].append(token)
        return out


RENDERED = "_rendered"  # example key where :func:`texts_of` leaves the turns it rendered, for the processor to reuse


def render(template: Template, example: dict[str, Any], answer: dict[str, str]) -> list[tuple[str, str]]:
    """``template.turns`` for the example with ``answer`` as the last response (reusing the loader's rendering)."""
    key = (answer["role"], answer["content"])
    memo = example.get(RENDERED)
    if memo is not None and key in memo:
        return memo[key]
    return template.turns(example["prompt"], answer, example.get("system", ""), example.get("tools", ""))


def render_oneturn(
    template: Template, example: dict[str, Any], answer: dict[str, str], tokens: Tokens
) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): every earlier turn plus the last prompt, then the answer (``encode_oneturn``)."""
    turns = render(template, example, answer)
    flat = tokens.joined([text for pair in turns for text in pair])
    prompt_ids = [t for ids in flat[:-1] for t in ids]
    return prompt_ids, list(flat[-1])


def texts_of(example: dict[str, Any], template: Template) -> list[str]:
    """Every conversation text a processor will tokenize for ``example`` (for :meth:`Tokens.prime`). The rendered turns
    are left in ``example["_rendered"]`` for the processor; the loader removes them after processing."""
    prompt, response = example["prompt"], example["response"]
    system, tools = example.get("system", ""), example.get("tools", "")
    answers = response[:2] or [{"role": "assistant", "content": ""}]
    memo: dict[tuple[str, str], list[tuple[str, str]]] = {}
    out: list[str] = []
    try:
        for answer in answers:
            turns = template.turns(prompt, answer, system, tools)
            memo[(answer["role"], answer["content"])] = turns
            out.append("".join(t for pair in turns for t in pair))
    except Exception:  # noqa: BLE001 - the processor reports the row; priming is best effort
        return []
    example[RENDERED] = memo
    return out


Processor = Callable[[dict[str, Any], Template, Tokens, ProcessorOptions], dict[str, Any]]
