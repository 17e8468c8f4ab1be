"""pt/sft train with transformers' Trainer over TRL's collator: packed rows must not attend across documents."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _rows(tokenizer):
    texts = ["The quick brown fox jumps over the lazy dog.", "Kubernetes runs the trainer as a Job.",
             "Hello there, how are you today? Fine, thanks."]
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
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                             ignore_index=-100, reduction="sum")


def test_packed_padding_free_batch_equals_the_rows_padded(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from kubetune.trainer.data.processors.packing import pack_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    rows = _rows(tokenizer)
    packed, stats = pack_examples(rows, cutoff_len=256)
    assert len(packed) == 1 and stats.rows_out == 1

    padded = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id)(rows)
    flat = DataCollatorForLanguageModeling(pad_token_id=tokenizer.pad_token_id, padding_free=True)(packed)
    assert "attention_mask" not in flat and flat["input_ids"].shape[0] == 1
    with torch.no_grad():
        separate = _summed_loss(model, padded)
        together = _summed_loss(model, flat)
        # the same tokens in one row *with* cross-document attention give a different loss: the check can fail
        leaky = _summed_loss(model, {"input_ids": flat["input_ids"], "labels": flat["labels"]})
    assert together.item() == pytest.approx(separate.item(), abs=1e-3)
    assert abs(leaky.item() - separate.item()) > 0.1

