"""run_sft: tokenizer → dataset(supervised) → model/adapters → Trainer (model's own loss) → train → save → metrics."""

from __future__ import annotations

from kubetune.trainer.stages.base import RunContext, StageResult, fit_causal_lm


def run_sft(ctx: RunContext) -> StageResult:
    # kubetune's processors already cut every row to cutoffLen, masked the prompt and, with
    # training.packing, bin-packed rows into cutoffLen blocks (position ids restart per document)
    return fit_causal_lm(ctx, padding_free=ctx.config.spec.packing)
