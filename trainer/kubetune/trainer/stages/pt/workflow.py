"""run_pt: tokenizer → dataset(pretrain, packed blocks) → model/adapters → CausalLMTrainer → train → save → metrics."""

from __future__ import annotations

from kubetune.trainer.stages.base import RunContext, StageResult
from kubetune.trainer.stages.causal_lm import train_causal_lm


def run_pt(ctx: RunContext) -> StageResult:
    # the pretrain processor concatenates the text and cuts it into cutoffLen blocks (no padding to save)
    return train_causal_lm(ctx, packed=False)
