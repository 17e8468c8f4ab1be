"""run_grpo: tokenizer → dataset(prompt-only) → model/adapters + reward model → GRPOConfig → GRPOTrainer
→ train → save → metrics.

Each prompt gets ``G = max(2, ppo.rolloutBatchSize)`` sampled completions of up to ``ppo.maxNewTokens``
tokens, scored by the reward model (an ``rm`` job's output) and/or the rule-based
``training.rewardFunctions`` (:mod:`.rewards`: the reference answer found, a format regex), summed with
their weights; advantages are relative within the group.
A device's micro-batch holds ``batchSize`` prompts, i.e. ``batchSize × G`` completions.
``ppo.klCoef`` is GRPO's beta (0 skips the reference model); ``ppo.temperature`` the sampling temperature.
"""

from __future__ import annotations

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.models.adapters import export_merged, optimizers
from kubetune.trainer.models.loader import torch_dtype
from kubetune.trainer.models.reward import load_reward_model
from kubetune.trainer.stages.base import (
    RunContext,
    StageResult,
    load_model_and_arguments,
    stage_callbacks,
    to_hf_dataset,
    train_evaluate_save,
)
from kubetune.trainer.stages.grpo.rewards import reward_functions


def run_grpo(ctx: RunContext) -> StageResult:
    from trl import GRPOConfig, GRPOTrainer

    spec = ctx.config.spec
    t, ppo = spec.training, spec.training.ppo
    rules = reward_functions(t.reward_functions)
    if ctx.reward_model is None and not rules:
        raise ConfigError(
            "spec.training.rewardModel: stage grpo needs a reward model (the output of an rm job) "
            "or spec.training.rewardFunctions"
        )
    group = max(2, ppo.rollout_batch_size)
    # the reward model's score (weight 1) first, then the rule-based functions with theirs
    weights = ([1.0] if ctx.reward_model is not None else []) + [weight for _fn, weight in rules]
    model, args = load_model_and_arguments(
        ctx,
        GRPOConfig,
        per_device_train_batch_size=t.batch_size * group,  # a device's batch: batchSize prompts x G completions
        per_device_eval_batch_size=t.batch_size * group,
        num_generations=group,
        max_completion_length=ppo.max_new_tokens,
        temperature=ppo.temperature,
        beta=ppo.kl_coef,
        epsilon=ppo.clip_range,
        reward_weights=weights,
    )
    funcs: list = []
    classes: list = []
    if ctx.reward_model is not None:
        funcs.append(
            load_reward_model(
                ctx.reward_model,
                ctx.model_ref,
                dtype=torch_dtype(t.precision),
                trust_remote_code=spec.model.trust_remote_code,
            )
        )
        classes.append(ctx.tokenizer)
    for fn, _weight in rules:
        funcs.append(fn)
        classes.append(None)
    # response_text (the reference answer) reaches the reward functions as a keyword argument
    rows = [{"prompt": r["prompt"], "response_text": r.get("response_text", "")} for r in ctx.data.train]
    evals = [{"prompt": r["prompt"], "response_text": r.get("response_text", "")} for r in ctx.data.eval]
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=funcs,
        args=args,
        train_dataset=to_hf_dataset(rows),
        eval_dataset=to_hf_dataset(evals),
        processing_class=ctx.tokenizer,
        reward_processing_classes=classes,
        callbacks=stage_callbacks(ctx),
        optimizers=optimizers(model, spec, args),
    )
    result = train_evaluate_save(ctx, trainer)
    export_merged(ctx, trainer.model)
    return result
