"""run_pt: tokenizer → dataset(pretrain, packed blocks) → model/adapters → Trainer (model's own loss) → train → save → metrics."""

from __future__ import annotations

from kubetune.trainer.stages.base import RunContext, StageResult, fit_causal_lm


def run_pt(ctx: RunContext) -> StageResult:
    # the pretrain processor already packed the text into cutoffLen blocks; rows that carry
    # position_ids hold several documents and train padding-free
    return fit_causal_lm(ctx, padding_free=any("position_ids" in row for row in ctx.data.train[:1]))
