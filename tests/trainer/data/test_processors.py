"""Processors, one per data shape, on hand-written examples with golden SmolLM2 token ids."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.stages import DataShape
from kubetune.trainer.data.processors import (
    IGNORE_INDEX,
    PROCESSORS,
    ProcessorOptions,
    Tokens,
    finish,
    infer_seqlen,
    knapsack,
    pack_examples,
)
from kubetune.trainer.data.schema import RowError, example
from kubetune.trainer.data.templates import get_template

# chatml pieces, tokenized by SmolLM2's tokenizer
HI = [1, 4093, 198, 26843, 2, 198, 1, 520, 9531, 198]  # <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n
Q1 = [1, 4093, 198, 65, 33, 2, 198, 1, 520, 9531, 198]
Q2 = [1, 4093, 198, 65, 34, 2, 198, 1, 520, 9531, 198]
HELLO = [19556, 2, 198]  # Hello<|im_end|>\n
NO = [5230, 2, 198]
A1 = [49, 33, 2, 198]
M = IGNORE_INDEX


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def bot(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def chatml(tokenizer: Any) -> Any:
    return get_template("chatml", tokenizer)


@pytest.fixture()
def tokens(tokenizer: Any) -> Tokens:
    return Tokens(tokenizer)


def run(shape: DataShape, ex: dict, template: Any, tokens: Tokens, **opts: Any) -> dict:
    return PROCESSORS[shape](ex, template, tokens, ProcessorOptions(**{"cutoff_len": 64, **opts}))


# ---------------------------------------------------------------------------------------------------- supervised


def test_supervised_masks_the_prompt(chatml: Any, tokens: Tokens) -> None:
    out = run(DataShape.SUPERVISED, example([user("Hi")], [bot("Hello")]), chatml, tokens)
    assert out["input_ids"] == HI + HELLO
    assert out["labels"] == [M] * len(HI) + HELLO
    assert out["_truncated"] is False


def test_supervised_train_on_prompt(chatml: Any, tokens: Tokens) -> None:
    out = run(DataShape.SUPERVISED, example([user("Hi")], [bot("Hello")]), chatml, tokens, train_on_prompt=True)
    assert out["labels"] == HI + HELLO


def test_supervised_multi_turn_and_mask_history(chatml: Any, tokens: Tokens) -> None:
    ex = example([user("Q1"), bot("A1"), user("Q2")], [bot("Hello")])
    out = run(DataShape.SUPERVISED, ex, chatml, tokens)
    assert out["input_ids"] == Q1 + A1 + Q2 + HELLO
    assert out["labels"] == [M] * len(Q1) + A1 + [M] * len(Q2) + HELLO
    masked = run(DataShape.SUPERVISED, ex, chatml, tokens, mask_history=True)
    assert masked["input_ids"] == out["input_ids"]
    assert masked["labels"] == [M] * (len(Q1) + len(A1) + len(Q2)) + HELLO


def test_supervised_truncation_follows_llamafactory_rule(chatml: Any, tokens: Tokens) -> None:
    # source 10, target 3, cutoff 8: the short target is kept, the source cut to 5
    assert infer_seqlen(10, 3, 8) == (5, 3)
    out = run(DataShape.SUPERVISED, example([user("Hi")], [bot("Hello")]), chatml, tokens, cutoff_len=8)
    assert out["input_ids"] == HI[:5] + HELLO
    assert out["_truncated"] is True
    # mask_history keeps the last turn whole when the budget runs out
    ex = example([user("Q1"), bot("A1"), user("Q2")], [bot("Hello")])
    out = run(DataShape.SUPERVISED, ex, chatml, tokens, cutoff_len=14, mask_history=True)
    assert out["input_ids"] == Q2 + HELLO
    assert out["labels"] == [M] * len(Q2) + HELLO


@pytest.mark.parametrize(
    ("a", "b", "cutoff", "want"),
    [(10, 3, 8, (5, 3)), (3, 10, 20, (3, 10)), (10, 10, 10, (5, 5)), (3, 10, 8, (3, 5)), (30, 10, 8, (6, 2))],
    ids=["short-target", "fits", "proportional", "short-source", "proportional-uneven"],
)
def test_infer_seqlen(a: int, b: int, cutoff: int, want: tuple[int, int]) -> None:
    assert infer_seqlen(a, b, cutoff) == want


def test_supervised_rejects_wrong_shape(chatml: Any, tokens: Tokens) -> None:
    with pytest.raises(RowError, match="not a supervised example"):
        run(DataShape.SUPERVISED, example([user("Hi")], []), chatml, tokens)
    with pytest.raises(RowError, match="no trainable tokens"):
        run(
            DataShape.SUPERVISED,
            example([user("Hi")], [bot("Hello")]),
            chatml,
            tokens,
            cutoff_len=1,
            mask_history=False,
            train_on_prompt=False,
        )


def test_supervised_packing_drops_long_rows_and_packs_with_position_ids(chatml: Any, tokens: Tokens) -> None:
    long = example([user("Q1"), bot("A1"), user("Q2")], [bot("Hello")])
    with pytest.raises(RowError, match="longer than cutoffLen"):
        run(DataShape.SUPERVISED, long, chatml, tokens, cutoff_len=20, packing=True)
    a = run(DataShape.SUPERVISED, example([user("Hi")], [bot("Hello")]), chatml, tokens, cutoff_len=20, packing=True)
    b = run(DataShape.SUPERVISED, example([user("Hi")], [bot("No")]), chatml, tokens, cutoff_len=20, packing=True)
    short = {"input_ids": [7, 8, 9, 10, 11], "labels": [M, M, 9, 10, 11]}
    rows, stats = finish(DataShape.SUPERVISED, [a, b, short], ProcessorOptions(20, packing=True), tokens)
    # knapsack: [13, 13, 5] into 20 → {13 + 5}, {13}
    assert rows[0]["input_ids"] == HI + NO + [7, 8, 9, 10, 11]
    assert rows[0]["labels"] == [M] * 10 + NO + [M, M, 9, 10, 11]
    assert rows[0]["position_ids"] == list(range(13)) + list(range(5))
    assert rows[0]["seq_lengths"] == [13, 5]
    assert rows[1]["input_ids"] == HI + HELLO and rows[1]["position_ids"] == list(range(13))
    assert all(not k.startswith("_") for row in rows for k in row)
    assert stats is not None and (stats.rows_in, stats.rows_out, stats.capacity) == (3, 2, 40)
    assert stats.efficiency == pytest.approx(31 / 40)


def test_knapsack_fills_greedily() -> None:
    assert sorted(map(sorted, knapsack([5, 3, 8, 2, 9], 10))) == [[0, 1], [2, 3], [4]]  # 9 | 8+2 | 5+3
    assert knapsack([], 10) == []
    with pytest.raises(ValueError, match="does not fit"):
        knapsack([11], 10)
    packed, _ = pack_examples([{"input_ids": [1] * 4, "labels": [1] * 4}] * 5, 8)
    assert [r["seq_lengths"] for r in packed] == [[4, 4], [4, 4], [4]]


# ---------------------------------------------------------------------------------------------------- pretrain


def test_pretrain_appends_eos_and_truncates_without_packing(chatml: Any, tokens: Tokens) -> None:
    out = run(DataShape.PRETRAIN, example([user("hello world")], []), chatml, tokens)
    assert out["input_ids"] == [28120, 905, 2] and out["labels"] == [28120, 905, 2]
    cut = run(DataShape.PRETRAIN, example([user("hello world")], []), chatml, tokens, cutoff_len=2)
    assert cut["input_ids"] == [28120, 905] and cut["_truncated"] is True
    with pytest.raises(RowError, match="empty text"):
        run(DataShape.PRETRAIN, example([user("")], []), chatml, tokens)


def test_pretrain_packing_concatenates_into_blocks_and_drops_the_tail(chatml: Any, tokens: Tokens) -> None:
    opts = {"cutoff_len": 3, "packing": True}
    items = [
        run(DataShape.PRETRAIN, example([user(t)], []), chatml, tokens, **opts) for t in ("hello world", "the cat sat")
    ]
    assert items[1]["input_ids"] == [1195, 2644, 2643, 2]  # not cut before packing
    rows, stats = finish(DataShape.PRETRAIN, items, ProcessorOptions(**opts), tokens)
    assert rows == [
        {"input_ids": [28120, 905, 2], "labels": [28120, 905, 2]},
        {"input_ids": [1195, 2644, 2643], "labels": [1195, 2644, 2643]},
    ]
    assert stats is not None and stats.to_dict()["tokensDropped"] == 1


def test_pretrain_packing_forces_bos_when_the_tokenizer_adds_one(chatml: Any, tokens: Tokens) -> None:
    tokens.bos_id = 99
    items = [run(DataShape.PRETRAIN, example([user("hello world")], []), chatml, tokens, cutoff_len=2, packing=True)]
    rows, _ = finish(DataShape.PRETRAIN, items, ProcessorOptions(2, packing=True), tokens)
    assert rows == [{"input_ids": [99, 905], "labels": [99, 905]}]


# ---------------------------------------------------------------------------------------------------- pairwise


def test_pairwise_completion_only_ids(chatml: Any, tokens: Tokens) -> None:
    out = run(DataShape.PAIRWISE, example([user("Hi")], [bot("Hello"), bot("No")]), chatml, tokens)
    assert (out["prompt_ids"], out["chosen_ids"], out["rejected_ids"]) == (HI, HELLO, NO)
    multi = run(
        DataShape.PAIRWISE, example([user("Q1"), bot("A1"), user("Q2")], [bot("Hello"), bot("No")]), chatml, tokens
    )
    assert multi["prompt_ids"] == Q1 + A1 + Q2


def test_pairwise_truncates_with_the_longer_answer(chatml: Any, tokens: Tokens) -> None:
    ex = example([user("Hi")], [bot("Hello"), bot("A1")])  # chosen 3, rejected 4 tokens
    out = run(DataShape.PAIRWISE, ex, chatml, tokens, cutoff_len=12)
    # infer_seqlen(10, max(3, 4)=4, 12) = (8, 4)
    assert out["prompt_ids"] == HI[:8] and out["chosen_ids"] == HELLO and out["rejected_ids"] == A1
    assert out["_truncated"] is True
    with pytest.raises(RowError, match="not a preference pair"):
        run(DataShape.PAIRWISE, example([user("Hi")], [bot("Hello")]), chatml, tokens)


# ---------------------------------------------------------------------------------------------------- feedback


def test_feedback_labels_and_kl_pairs_rotate_by_one(chatml: Any, tokens: Tokens) -> None:
    good = run(DataShape.FEEDBACK, example([user("Hi")], [bot("Hello"), bot("")], label=True), chatml, tokens)
    bad = run(DataShape.FEEDBACK, example([user("Q1")], [bot(""), bot("No")], label=False), chatml, tokens)
    third = run(DataShape.FEEDBACK, example([user("Q2")], [bot("A1"), bot("")], label=True), chatml, tokens)
    assert (good["prompt_ids"], good["completion_ids"], good["label"]) == (HI, HELLO, True)
    assert (bad["prompt_ids"], bad["completion_ids"], bad["label"]) == (Q1, NO, False)
    rows, stats = finish(DataShape.FEEDBACK, [good, bad, third], ProcessorOptions(64), tokens)
    assert stats is None
    assert [r["KL_completion_ids"] for r in rows] == [A1, HELLO, NO]
    assert set(rows[0]) == {"prompt_ids", "completion_ids", "KL_completion_ids", "label"}
    with pytest.raises(RowError, match="no KTO label"):
        run(DataShape.FEEDBACK, example([user("Hi")], [bot("Hello")]), chatml, tokens)


def test_feedback_kl_completion_is_cut_to_fit(chatml: Any, tokens: Tokens) -> None:
    a = run(DataShape.FEEDBACK, example([user("Hi")], [bot("Hello"), bot("")]), chatml, tokens, cutoff_len=12)
    b = run(DataShape.FEEDBACK, example([user("Hi")], [bot(""), bot("A1")]), chatml, tokens, cutoff_len=12)
    rows, _ = finish(DataShape.FEEDBACK, [a, b], ProcessorOptions(12), tokens)
    # row 0's prompt (10) + row 1's completion (4) > 12: infer_seqlen(10, 4, 12) keeps the whole completion (4*2 < 12)
    assert rows[0]["KL_completion_ids"] == A1
    assert len(rows[0]["prompt_ids"]) + len(rows[0]["completion_ids"]) <= 12


# ---------------------------------------------------------------------------------------------------- prompt only


def test_prompt_only_keeps_text_and_reference(chatml: Any, tokens: Tokens) -> None:
    out = run(DataShape.PROMPT_ONLY, example([user("Hi")], [bot("Hello")]), chatml, tokens)
    assert out == {
        "prompt_ids": HI,
        "prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        "response_text": "Hello",
    }
    bare = run(DataShape.PROMPT_ONLY, example([user("Q1"), bot("A1"), user("Q2")], []), chatml, tokens)
    assert bare["prompt_ids"] == Q1 + A1 + Q2 and bare["response_text"] == ""
    with pytest.raises(RowError, match="prompt longer than cutoffLen"):
        run(DataShape.PROMPT_ONLY, example([user("Hi")], []), chatml, tokens, cutoff_len=5)


# ---------------------------------------------------------------------------------------------------- tokenizer template


def test_tokenizer_chat_template_matches_apply_chat_template(tokenizer: Any, tokens: Tokens) -> None:
    template = get_template(None, tokenizer)
    ex = example([user("Q1"), bot("A1"), user("Q2")], [bot("Hello")], system="Be brief.")
    out = run(DataShape.SUPERVISED, ex, template, tokens, cutoff_len=512)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "Q2"},
        {"role": "assistant", "content": "Hello"},
    ]
    assert tokenizer.decode(out["input_ids"]) == tokenizer.apply_chat_template(messages, tokenize=False)
    trained = tokenizer.decode([t for t in out["labels"] if t != M])
    assert trained == "A1<|im_end|>\nHello<|im_end|>\n"


def test_packed_rows_feed_trl_padding_free_collator(chatml: Any, tokens: Tokens) -> None:
    """TRL's collator restarts positions at each packed example (from ``seq_lengths``): no cross-example attention."""
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    opts = {"cutoff_len": 20, "packing": True}
    a = run(DataShape.SUPERVISED, example([user("Hi")], [bot("Hello")]), chatml, tokens, **opts)
    b = {"input_ids": [7, 8, 9, 10, 11], "labels": [M, M, 9, 10, 11]}
    rows, _ = finish(DataShape.SUPERVISED, [a, b], ProcessorOptions(**opts), tokens)
    batch = DataCollatorForLanguageModeling(pad_token_id=2, padding_free=True)(rows)
    assert batch["position_ids"].tolist() == [rows[0]["position_ids"]] == [list(range(13)) + list(range(5))]
    assert batch["cu_seq_lens_q"].tolist() == [0, 13, 18]
    assert batch["labels"].tolist() == [[M] * 10 + HELLO + [M, M, 9, 10, 11]]
