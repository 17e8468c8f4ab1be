"""run_kto: tokenizer → dataset(feedback) → model/adapters → KTOConfig → KTOTrainer → train → save → metrics.

The reference model is the base with the adapter disabled (LoRA) or a frozen copy (full/freeze).
"""

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
from kubetune.trainer.stages.pretokenized import pretokenized


def run_kto(ctx: RunContext) -> StageResult:
    from trl import KTOConfig, KTOTrainer

    spec = ctx.config.spec
    kto = spec.training.kto
    model = load_model(ctx.model_ref, ctx.config)
    model = apply_method(model, spec, ctx.adapter_init)
    args = KTOConfig(
        **common_args(ctx),
        max_length=spec.training.cutoff_len,
        beta=kto.beta,
        desirable_weight=kto.desirable_weight,
        undesirable_weight=kto.undesirable_weight,
    )
    trainer = pretokenized(KTOTrainer)(
        model=model,
        args=args,
        train_dataset=to_hf_dataset(ctx.data.train),
        eval_dataset=to_hf_dataset(ctx.data.eval),
        processing_class=ctx.tokenizer,
        callbacks=stage_callbacks(ctx),
        optimizers=optimizers(model, spec, args),
    )
    result = train_and_save(ctx, trainer)
    export_merged(ctx, trainer.model)
    return result
