"""pt/sft train with transformers' Trainer over TRL's collator: packed rows must not attend across documents."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _rows(tokenizer):
    texts = [
        "The quick brown fox jumps over the lazy dog.",
        "Kubernetes runs the trainer as a Job.",
        "Hello there, how are you today? Fine, thanks.",
    ]
    rows = []
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        labels = [-100] * 3 + ids[3:]  # a masked "prompt", like the supervised processor's
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _summed_loss(model, batch):
    """Sum of per-token cross-entropy over the trained labels (independent of how the batch is laid out)."""
    # use_cache=False as transformers' Trainer sets it (TrainingArguments.use_cache): with a cache the model
    # does not look for packed sequences in position_ids
    out = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
    )


def test_packed_padding_free_batch_equals_the_rows_padded(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from kubetune.trainer.data.processors.packing import pack_examples
    from kubetune.trainer.stages.causal_lm import Collator

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = _rows(tokenizer)
    packed, stats = pack_examples(rows, cutoff_len=256)
    assert len(packed) == 1 and stats.rows_out == 1

    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(packed)
    assert "attention_mask" not in flat and flat["input_ids"].shape[0] == 1
    # kubetune's collator keeping packed rows as rows: two packed rows (two documents + one), padded
    two, _ = pack_examples(rows, cutoff_len=len(rows[0]["input_ids"]) + len(rows[1]["input_ids"]))
    assert sorted(len(r["seq_lengths"]) for r in two) == [1, 2]
    as_rows = Collator(pad_token_id=tokenizer.pad_token_id, flatten=lambda _lengths: False)(two)
    assert as_rows["input_ids"].shape[0] == 2 and "attention_mask" not in as_rows
    with torch.no_grad():
        separate = _summed_loss(model, padded)
        together = _summed_loss(model, flat)
        assert _summed_loss(model, as_rows).item() == pytest.approx(separate.item(), abs=1e-3)
        # the same tokens in one row *with* cross-document attention give a different loss: the check can fail
        leaky = _summed_loss(model, {"input_ids": flat["input_ids"], "labels": flat["labels"]})
    assert together.item() == pytest.approx(separate.item(), abs=1e-3)
    assert abs(leaky.item() - separate.item()) > 0.1


# ------------------------------------------------------------------ the cost model (pure)


def test_attention_cost_ratio_of_a_llama_config():
    from transformers import LlamaConfig

    from kubetune.trainer.stages.causal_lm import attention_cost_ratio

    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3)
    per_layer = 576 * 64 * (2 * 9 + 2 * 3) + 3 * 576 * 1536  # q, o (9 heads) + k, v (3) + gate, up, down
    assert attention_cost_ratio(cfg) == pytest.approx(2 * 576 / per_layer)


@pytest.mark.parametrize(
    ("lengths", "varlen", "expected"),
    [
        ([256, 256, 256, 256], False, False),  # nothing to save, and attention would grow 4x
        ([250, 40, 60, 30], False, True),  # mostly padding
        ([256], False, False),  # one row has no padding
        ([256, 256], True, True),  # varlen kernels never pay for the flattening
        ([4000, 3000], False, False),  # long rows: the dense n x n mask costs more than the padding saves
    ],
)
def test_flatten_only_when_cheaper(lengths, varlen, expected):
    from kubetune.trainer.stages.causal_lm import flatten_is_cheaper

    ratio = 2 * 576 / 3.5e6  # SmolLM2-135M
    assert flatten_is_cheaper(lengths, ratio, varlen_attention=varlen) is expected


def test_collator_flattens_per_batch_and_always_for_packed_rows():
    from kubetune.trainer.stages.causal_lm import Collator

    collate = Collator(pad_token_id=0, flatten=lambda lengths: max(lengths) > 2 * min(lengths))
    even = collate([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8, 9], "labels": [-100, 9]}])
    assert even["input_ids"].shape == (2, 3) and "attention_mask" in even
    uneven = collate(
        [{"input_ids": [5, 6, 7, 8, 9], "labels": [-100, 6, 7, 8, 9]}, {"input_ids": [8, 9], "labels": [-100, 9]}]
    )
    assert uneven["input_ids"].shape == (1, 7) and "attention_mask" not in uneven
    assert uneven["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1]]
    packed = collate(
        [
            {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lengths": [2, 3]},
            {"input_ids": [5, 6], "labels": [5, 6], "seq_lengths": [2]},
        ]
    )
    assert packed["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0, 1]] and "attention_mask" not in packed
    # packed rows of even length stay rows: positions restart per document, no attention mask
    rows = collate(
        [
            {"input_ids": [5, 6, 7, 8, 9], "labels": [5, 6, 7, 8, 9], "seq_lengths": [2, 3]},
            {"input_ids": [5, 6, 7, 8], "labels": [5, 6, 7, 8], "seq_lengths": [4]},
        ]
    )
    assert rows["position_ids"].tolist() == [[0, 1, 0, 1, 2], [0, 1, 2, 3, 0]] and "attention_mask" not in rows
    assert rows["labels"].tolist() == [[-100, 6, -100, 8, 9], [-100, 6, 7, 8, -100]]


# ------------------------------------------------------------------ the loss (tiny model)


def _trainer(model, tmp_path):
    from transformers import TrainingArguments

    from kubetune.trainer.stages.causal_lm import make_trainer_class

    args = TrainingArguments(
        output_dir=str(tmp_path), use_cpu=True, report_to="none", include_num_input_tokens_seen="non_padding"
    )
    return make_trainer_class()(model=model, args=args)


def test_loss_on_trained_positions_equals_the_models_own_loss(tiny_model_dir, tmp_path):
    """The gathered LM head gives the model's own loss and gradients, padded or flattened."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    trainer = _trainer(model, tmp_path)
    rows = _rows(tokenizer)
    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(rows)

    def grads(loss):
        model.zero_grad()
        loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])

    reference = model(**padded, use_cache=False).loss
    ref_grads = grads(reference)
    for batch in (padded, flat):
        loss = trainer.compute_loss(model, dict(batch))
        assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
        assert torch.allclose(grads(loss), ref_grads, rtol=1e-4, atol=1e-6)
    # with the Trainer's count of the whole accumulated batch: sum / that count
    n = (padded["labels"][..., 1:] != -100).sum()
    assert trainer.compute_loss(model, dict(flat), num_items_in_batch=2 * n).item() == pytest.approx(
        reference.item() / 2, rel=1e-5
    )
    # the hook is off outside compute_loss: a plain forward still scores every position
    assert model(**padded, use_cache=False).logits.shape[:2] == padded["input_ids"].shape
    # a model whose head the hook never sees (it scores with the embedding matrix itself) gets the same loss
    trainer._hook.remove()
    assert trainer.compute_loss(model, dict(padded)).item() == pytest.approx(reference.item(), rel=1e-5)


def test_padding_free_batches_count_every_token_seen(tiny_model_dir, tmp_path):
    """SmolLM2's pad token is its eos (<|im_end|>), which also ends every turn: count the flattened row's length."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    trainer = _trainer(model, tmp_path)
    trainer._track_num_input_tokens(
        {"input_ids": torch.tensor([[5, 2, 7, 2, 9]]), "position_ids": torch.tensor([[0, 1, 0, 1, 2]])}
    )
    assert trainer.state.num_input_tokens_seen == 5
    trainer._track_num_input_tokens(
        {"input_ids": torch.tensor([[5, 6, 2], [7, 2, 2]]), "attention_mask": torch.tensor([[1, 1, 1], [1, 1, 0]])}
    )
    assert trainer.state.num_input_tokens_seen == 10
