"""run_dpo: tokenizer → dataset(pairwise) → model/adapters → DPOConfig → DPOTrainer → train → save → metrics.

``spec.training.preference.loss`` picks the loss: sigmoid (DPO), ipo, hinge with TRL's DPOTrainer,
whose reference model is the base with the adapter disabled (LoRA) or a frozen copy (full/freeze);
simpo (reference-free) with ``trl.experimental.cpo``; orpo hands over to the orpo stage, as
LLaMA-Factory allows. ``preference.ftx`` adds an SFT loss on the chosen answer.
"""

from __future__ import annotations

from kubetune.trainer.stages.base import RunContext, StageResult, build_and_train, load_model_and_arguments
from kubetune.trainer.stages.pretokenized import legacy_pairwise, legacy_tokenized, pretokenized


def run_dpo(ctx: RunContext) -> StageResult:
    pref = ctx.config.spec.training.preference
    if pref.loss == "orpo":
        from kubetune.trainer.stages.orpo.workflow import run_orpo

        return run_orpo(ctx)
    if pref.loss == "simpo":
        return _run_simpo(ctx)
    from trl import DPOConfig, DPOTrainer

    losses, weights = [pref.loss], [1.0]
    if pref.ftx > 0:
        losses, weights = [pref.loss, "sft"], [1.0, pref.ftx]
    model, args = load_model_and_arguments(
        ctx,
        DPOConfig,
        max_length=ctx.config.spec.training.cutoff_len,
        beta=pref.beta,
        loss_type=losses,
        loss_weights=weights,
    )
    return build_and_train(ctx, pretokenized(DPOTrainer), model, args, ctx.data.train, ctx.data.eval)


def _run_simpo(ctx: RunContext) -> StageResult:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.cpo import CPOConfig, CPOTrainer

    spec = ctx.config.spec
    pref = spec.training.preference
    model, args = load_model_and_arguments(
        ctx,
        CPOConfig,
        max_length=spec.training.cutoff_len,
        loss_type="simpo",
        beta=pref.beta,
        simpo_gamma=pref.simpo_gamma,
        cpo_alpha=pref.ftx,  # 0: pure SimPO; > 0 adds the NLL term on chosen (CPO-SimPO)
    )
    return build_and_train(
        ctx,
        legacy_tokenized(CPOTrainer),
        model,
        args,
        [legacy_pairwise(r) for r in ctx.data.train],
        [legacy_pairwise(r) for r in ctx.data.eval],
    )
