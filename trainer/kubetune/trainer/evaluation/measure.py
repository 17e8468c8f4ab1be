"""What the evaluation measures on one model: eval loss and perplexity, greedy answers, rule and reward scores."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from kubetune.trainer.stages.grpo.rewards import reward_functions


def model_device(model: Any) -> Any:
    return next(model.parameters()).device


def eval_loss(model: Any, rows: Sequence[dict[str, Any]], pad_token_id: int, batch_size: int) -> float | None:
    """The token-weighted mean next-token loss over the trained positions of ``rows`` (pt/sft rows as the training
    saw them, packed ones included: the training's collator keeps packed documents apart); None without rows."""
    import torch

    from kubetune.trainer.stages.causal_lm import Collator

    if not rows:
        return None
    collate = Collator(pad_token_id=pad_token_id, flatten=lambda _lengths: False)
    device = model_device(model)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            batch = collate([dict(r) for r in rows[start : start + batch_size]])
            labels = batch.pop("labels")
            inputs = {
                k: v.to(device)
                for k, v in batch.items()
                if k in ("input_ids", "attention_mask", "position_ids") and torch.is_tensor(v)
            }
            logits = model(**inputs, use_cache=False).logits
            targets = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:].to(device)
            keep = targets != -100
            total += torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep], reduction="sum").item()
            count += int(keep.sum().item())
    return total / count if count else None


def perplexity(loss: float | None) -> float | None:
    return None if loss is None or not math.isfinite(loss) else math.exp(min(loss, 50.0))


def stop_token_ids(tokenizer: Any, stop: str) -> list[int]:
    """The tokenizer's eos and the template's end-of-turn token (when it is one token)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if stop:
        encoded = tokenizer.encode(stop, add_special_tokens=False)
        if len(encoded) == 1 and encoded[0] not in ids:
            ids.append(encoded[0])
    return ids


def generate(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int, stop: str, batch_size: int
) -> list[str]:
    """Greedy answers to rendered prompts, left-padded in batches; each cut at the template's end of turn."""
    import torch

    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = stop_token_ids(tokenizer, stop)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    answers: list[str] = []
    model.eval()
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(
                    **enc,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    pad_token_id=pad,
                    eos_token_id=eos or None,
                )
            for row in out[:, enc["input_ids"].shape[1] :]:
                text = tokenizer.decode(row, skip_special_tokens=True)
                answers.append((text.split(stop, 1)[0] if stop else text).strip())
    finally:
        tokenizer.padding_side = side
    return answers


def rule_scores(
    rules: Sequence[Any], answers: Sequence[str], references: Sequence[str]
) -> tuple[float | None, dict[str, float]]:
    """(the weighted rule score, 0-1, mean over the answers; each rule's mean) — grpo's reward functions scored
    on the answers, combined as ``sum(weight x score) / sum(weight)``."""
    if not rules or not answers:
        return None, {}
    scored = [(fn.__name__, fn(list(answers), response_text=list(references)), w) for fn, w in reward_functions(rules)]
    per_rule = {name: sum(values) / len(values) for name, values, _ in scored}
    weight = sum(w for _, _, w in scored)
    if weight <= 0:
        return None, per_rule
    per_answer = [sum(w * values[i] for _, values, w in scored) / weight for i in range(len(answers))]
    return sum(per_answer) / len(per_answer), per_rule


def reward_score(
    reward_model: Any, tokenizer: Any, prompts: Sequence[str], answers: Sequence[str], *, stop: str, batch_size: int
) -> float | None:
    """The reward model's mean score of each prompt with its answer (rendered as the template ends a turn)."""
    import torch

    if reward_model is None or not answers:
        return None
    device = model_device(reward_model)
    texts = [p + a + stop for p, a in zip(prompts, answers, strict=True)]
    scores: list[float] = []
    side, tokenizer.padding_side = tokenizer.padding_side, "right"
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(device)
            with torch.no_grad():
                scores += reward_model(**enc).logits[:, 0].float().tolist()
    finally:
        tokenizer.padding_side = side
    return sum(scores) / len(scores)
