"""run_pt: tokenizer → dataset(pretrain, packed blocks) → model/adapters → SFTConfig → SFTTrainer → train → save → metrics."""

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


def run_pt(ctx: RunContext) -> StageResult:
    from trl import SFTConfig, SFTTrainer

    spec = ctx.config.spec
    model = load_model(ctx.model_ref, ctx.config)
    model = apply_method(model, spec, ctx.adapter_init)
    train = to_hf_dataset(ctx.data.train)
    args = SFTConfig(
        **common_args(ctx),
        max_length=spec.training.cutoff_len,
        packing=False,  # the pretrain processor already packed the text into cutoffLen blocks
        padding_free="position_ids" in train.column_names,
        dataset_kwargs={"skip_prepare_dataset": True},
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=to_hf_dataset(ctx.data.eval),
        processing_class=ctx.tokenizer,
        callbacks=stage_callbacks(ctx),
        optimizers=optimizers(model, spec, args),
    )
    result = train_and_save(ctx, trainer, perplexity=True)
    export_merged(ctx, trainer.model)
    return result
