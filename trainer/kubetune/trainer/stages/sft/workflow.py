"""run_sft: tokenizer → dataset(supervised) → model/adapters → CausalLMTrainer → train → save → metrics."""

from __future__ import annotations

from kubetune.trainer.stages.base import RunContext, StageResult
from kubetune.trainer.stages.causal_lm import train_causal_lm


def run_sft(ctx: RunContext) -> StageResult:
    # kubetune's processors already cut every row to cutoffLen, masked the prompt and, with
    # training.packing, bin-packed rows into cutoffLen blocks (position ids restart per document)
    return train_causal_lm(ctx, packed=ctx.config.spec.packing)
