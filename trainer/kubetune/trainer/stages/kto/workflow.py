"""run_kto: tokenizer → dataset(feedback) → model/adapters → KTOConfig → KTOTrainer → train → save → metrics.

The reference model is the base with the adapter disabled (LoRA) or a frozen copy (full/freeze).
"""

from __future__ import annotations

from kubetune.trainer.models.adapters import apply_method
from kubetune.trainer.models.loader import load_model
from kubetune.trainer.stages.base import (
    RunContext,
    StageResult,
    common_args,
    fit,
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
    return fit(ctx, pretokenized(KTOTrainer), model, args, ctx.data.train, ctx.data.eval)
