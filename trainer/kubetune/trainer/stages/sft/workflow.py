"""run_sft: tokenizer → dataset(supervised) → model/adapters → SFTConfig → SFTTrainer → train → save → metrics."""

from __future__ import annotations

from kubetune.trainer.models.adapters import apply_method
from kubetune.trainer.models.loader import load_model
from kubetune.trainer.stages.base import (
    RunContext,
    StageResult,
    common_args,
    fit,
)


def run_sft(ctx: RunContext) -> StageResult:
    from trl import SFTConfig, SFTTrainer

    spec = ctx.config.spec
    model = load_model(ctx.model_ref, ctx.config)
    model = apply_method(model, spec, ctx.adapter_init)
    args = SFTConfig(
        **common_args(ctx),
        # kubetune's processors already cut (or pack) every row to cutoffLen; TRL refuses max_length with
        # padding-free batches that it did not pack itself
        max_length=None if spec.packing else spec.training.cutoff_len,
        packing=False,
        padding_free=spec.packing,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    return fit(ctx, SFTTrainer, model, args, ctx.data.train, ctx.data.eval, perplexity=True)
