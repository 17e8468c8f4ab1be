"""run_rm: tokenizer → dataset(pairwise) → sequence-classification model/adapters → RewardConfig → RewardTrainer
→ train → save → metrics (eval accuracy of chosen > rejected)."""

from __future__ import annotations

from typing import Any

from kubetune.trainer.models.adapters import export_merged, optimizers
from kubetune.trainer.stages.base import (
    RunContext,
    StageResult,
    load_model_and_arguments,
    stage_callbacks,
    to_hf_dataset,
    train_evaluate_save,
)


def as_reward_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pairwise rows → RewardTrainer's processed layout: each side is the whole prompt + answer sequence."""
    return [
        {"chosen_ids": r["prompt_ids"] + r["chosen_ids"], "rejected_ids": r["prompt_ids"] + r["rejected_ids"]}
        for r in rows
    ]


def run_rm(ctx: RunContext) -> StageResult:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    spec = ctx.config.spec
    tokenizer = ctx.tokenizer
    model, args = load_model_and_arguments(
        ctx,
        RewardConfig,
        model_class=AutoModelForSequenceClassification,
        model_kwargs={"num_labels": 1, "pad_token_id": tokenizer.pad_token_id},
        task_type="SEQ_CLS",
        max_length=spec.training.cutoff_len,
    )
    for name, param in model.named_parameters():  # the new score head always trains (full/freeze too)
        if "score" in name and "original_module" not in name:
            param.requires_grad = True
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=to_hf_dataset(as_reward_rows(ctx.data.train)),
        eval_dataset=to_hf_dataset(as_reward_rows(ctx.data.eval)),
        processing_class=tokenizer,
        callbacks=stage_callbacks(ctx),
        optimizers=optimizers(model, spec, args),
    )
    result = train_evaluate_save(ctx, trainer)
    export_merged(ctx, trainer.model, model_class=AutoModelForSequenceClassification)
    return result
