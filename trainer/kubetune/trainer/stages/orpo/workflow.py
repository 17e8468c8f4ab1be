"""run_orpo: tokenizer → dataset(pairwise) → model/adapters → ORPOConfig → ORPOTrainer → train → save → metrics.

ORPO lives in ``trl.experimental.orpo`` in TRL 1.16; it is imported here only, when the stage runs.
It needs no reference model. ``spec.training.preference.beta`` is ORPO's lambda.
"""

from __future__ import annotations

from kubetune.trainer.stages.base import RunContext, StageResult, build_and_train, load_model_and_arguments
from kubetune.trainer.stages.pretokenized import legacy_pairwise, legacy_tokenized


def run_orpo(ctx: RunContext) -> StageResult:
    import warnings

    with warnings.catch_warnings():  # the experimental-API notice says nothing a user can act on
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    spec = ctx.config.spec
    model, args = load_model_and_arguments(
        ctx,
        ORPOConfig,
        max_length=spec.training.cutoff_len,
        beta=spec.training.preference.beta,
        padding_value=ctx.tokenizer.pad_token_id,
    )
    return build_and_train(
        ctx,
        legacy_tokenized(ORPOTrainer),
        model,
        args,
        [legacy_pairwise(r) for r in ctx.data.train],
        [legacy_pairwise(r) for r in ctx.data.eval],
    )
