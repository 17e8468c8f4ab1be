"""run_kto: tokenizer → dataset(feedback) → model/adapters → KTOConfig → KTOTrainer → train → save → metrics.

The reference model is the base with the adapter disabled (LoRA) or a frozen copy (full/freeze).
"""

from __future__ import annotations

from kubetune.trainer.stages.base import RunContext, StageResult, build_and_train, load_model_and_arguments
from kubetune.trainer.stages.pretokenized import pretokenized


def run_kto(ctx: RunContext) -> StageResult:
    from trl import KTOConfig, KTOTrainer

    spec = ctx.config.spec
    kto = spec.training.kto
    model, args = load_model_and_arguments(
        ctx,
        KTOConfig,
        max_length=spec.training.cutoff_len,
        beta=kto.beta,
        desirable_weight=kto.desirable_weight,
        undesirable_weight=kto.undesirable_weight,
    )
    return build_and_train(ctx, pretokenized(KTOTrainer), model, args, ctx.data.train, ctx.data.eval)
