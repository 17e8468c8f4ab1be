"""run_sft: tokenizer → dataset(supervised) → model/adapters → SFTConfig → SFTTrainer → train → save → metrics."""

from __future__ import annotations

from kubetune.trainer.models.adapters import apply_method, export_merged, optimizers
from kubetune.trainer.models.loader import load_model
from kubetune.trainer.stages.base import (
    RunContext,
    StageResult,
    common_args,
    stage_callbacks,
    to_hf_dataset,
    train_and_save,
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
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=to_hf_dataset(ctx.data.train),
        eval_dataset=to_hf_dataset(ctx.data.eval),
        processing_class=ctx.tokenizer,
        callbacks=stage_callbacks(ctx),
        optimizers=optimizers(model, spec, args),
    )
    result = train_and_save(ctx, trainer, perplexity=True)
    export_merged(ctx, trainer.model)
    return result
