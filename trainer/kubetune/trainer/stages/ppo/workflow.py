"""run_ppo: prompts → policy (+ value head) → rollouts scored by the reward model → PPO updates → save.

TRL 1.16 has no PPO trainer, so the loop is ours (the math is in :mod:`.core`):

1. generate a response for each prompt of a rollout batch with the current policy (sampling);
2. score prompt+response with the frozen reward model (an ``rm`` job's output);
3. per-token rewards = score on the last token − ``klCoef`` × (log π − log π_ref), where π_ref is the
   base model (the LoRA adapter disabled; a frozen copy for full/freeze);
4. GAE advantages from a value head on the policy's last hidden state;
5. ``ppoEpochs`` passes of the clipped policy loss + ``vfCoef`` × clipped value loss over minibatches.

One optimizer step per minibatch; ``maxSteps`` counts rollouts. The observers' TrainerCallbacks see
the usual train-begin / step-end / log / save events, so metrics, checkpoints and SIGTERM handling
work as in the TRL stages.
"""

from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.models.adapters import export_merged
from kubetune.trainer.models.loader import torch_dtype
from kubetune.trainer.models.reward import load_reward_model
from kubetune.trainer.stages.base import RunContext, StageResult, load_model_and_arguments, stage_callbacks

log = get_logger(__name__)
VALUE_HEAD = "value_head.safetensors"
STATE = "ppo_state.pt"


def _value_head(hidden_size: int) -> Any:
    import torch

    head = torch.nn.Linear(hidden_size, 1)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    return head


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[Any, Any]:
    import torch

    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids, mask


def _forward(
    model: Any,
    head: Any,
    input_ids: Any,
    attention_mask: Any,
    prompt_len: int,
    temperature: float,
    with_values: bool = True,
) -> tuple[Any, Any]:
    """Log-probabilities of the response tokens (and values before each of them)."""
    import torch

    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=with_values,
        use_cache=False,
    )
    logits = out.logits[:, prompt_len - 1 : -1].float() / temperature
    response = input_ids[:, prompt_len:]
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, response.unsqueeze(-1)).squeeze(-1)
    values = None
    if with_values:
        hidden = out.hidden_states[-1][:, prompt_len - 1 : -1]
        values = head(hidden.to(head.weight.dtype)).squeeze(-1).float()
    return logprobs, values


def _scores(reward_model: Any, prompts: list[list[int]], responses: Any, mask: Any, pad_id: int) -> Any:
    """Reward-model score of each prompt + its response (up to and including EOS), right-padded."""
    import torch

    rows = [p + responses[i][: int(mask[i].sum())].tolist() for i, p in enumerate(prompts)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    att = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
    with torch.no_grad():
        return (
            reward_model(input_ids=ids.to(reward_model.device), attention_mask=att.to(reward_model.device))
            .logits[:, 0]
            .float()
        )


def _companion_models(ctx: RunContext, policy: Any) -> tuple[Any, Any, Any]:
    """Beside the policy (with its method applied): its value head, the frozen reference and the reward model.

    The reference is None for LoRA (the policy with its adapter disabled); a frozen copy for full/freeze.
    """
    from peft import PeftModel

    spec = ctx.config.spec
    ref_model = None
    if not isinstance(policy, PeftModel):
        ref_model = copy.deepcopy(policy).requires_grad_(False).eval()
    device = next(policy.parameters()).device
    head = _value_head(policy.config.hidden_size).to(device)
    reward_model = load_reward_model(
        ctx.reward_model,
        ctx.model_ref,
        dtype=torch_dtype(spec.training.precision),
        trust_remote_code=spec.model.trust_remote_code,
    ).to(device)
    return head, ref_model, reward_model


def _total_steps(ctx: RunContext, prompts: int) -> int:
    t = ctx.config.spec.training
    if t.max_steps:
        return t.max_steps
    return max(1, math.ceil(t.epochs * prompts / t.ppo.rollout_batch_size))


def run_ppo(ctx: RunContext) -> StageResult:
    import torch
    from transformers import TrainerControl, TrainerState, TrainingArguments, get_scheduler
    from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

    from kubetune.trainer.stages.resume import Preempted, clear_checkpoints, resume_point

    spec = ctx.config.spec
    t, ppo = spec.training, spec.training.ppo
    if spec.world_size > 1:
        raise ConfigError("spec.resources: stage ppo runs in one process; set nodes: 1 and gpusPerNode: 0 or 1")
    if ctx.reward_model is None:
        raise ConfigError("spec.training.rewardModel: stage ppo needs a reward model (the output of an rm job)")
    prompts = [row["prompt_ids"] for row in ctx.data.train]
    if not prompts:
        raise ConfigError("spec.datasets: no prompts to generate from")
    torch.manual_seed(t.seed)
    rng = random.Random(t.seed)
    tokenizer = ctx.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_id = tokenizer.eos_token_id

    # one process: the loop is not wrapped for DeepSpeed or FSDP, so their arguments are left out
    policy, args = load_model_and_arguments(ctx, TrainingArguments, without=("deepspeed", "fsdp", "fsdp_config"))
    head, ref_model, reward_model = _companion_models(ctx, policy)
    params = [p for p in policy.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=t.learning_rate, weight_decay=t.weight_decay)
    total = _total_steps(ctx, len(prompts))
    minibatch = max(1, min(t.batch_size, ppo.rollout_batch_size))
    updates_per_step = ppo.ppo_epochs * math.ceil(ppo.rollout_batch_size / minibatch)
    scheduler = get_scheduler(
        t.scheduler,
        optimizer,
        num_warmup_steps=int(t.warmup_ratio * total * updates_per_step),
        num_training_steps=total * updates_per_step,
    )

    state = TrainerState(max_steps=total, logging_steps=t.logging_steps, save_steps=args.save_steps)
    handler = CallbackHandler([DefaultFlowCallback(), *stage_callbacks(ctx)], policy, tokenizer, optimizer, scheduler)
    control = handler.on_init_end(args, state, TrainerControl())

    runtime = ctx.config.runtime
    resume = resume_point(ctx.work_dir, spec, ctx.resume_from, runtime.output_uri, runtime.allow_private_urls)
    start = 0
    if resume is not None:
        start = _load_checkpoint(Path(resume), policy, head, optimizer, scheduler, state)
    control = handler.on_train_begin(args, state, control)
    generation = {
        "do_sample": True,
        "temperature": ppo.temperature,
        "top_k": 0,
        "top_p": 1.0,
        "max_new_tokens": ppo.max_new_tokens,
        "pad_token_id": pad_id,
        "eos_token_id": eos_id,
    }
    preempted_at = None
    losses: list[float] = []
    for step in range(start, total):
        control = handler.on_step_begin(args, state, control)
        batch = _rollout_prompts(prompts, seed=t.seed + step, size=ppo.rollout_batch_size)
        rollout = _generate_and_score(
            policy, head, ref_model, reward_model, batch, generation, pad_id=pad_id, eos_id=eos_id, ppo=ppo
        )
        stats = _update_policy_and_value(
            policy, head, rollout, optimizer, scheduler, params, minibatch=minibatch, rng=rng, step=step, ctx=ctx
        )
        record = _step_stats(rollout, stats)
        losses.append(record.policy_loss + record.value_loss)
        state.global_step = step + 1
        tokens = int(rollout.full_mask.sum())  # for the tokens/s metrics
        state.num_input_tokens_seen = (state.num_input_tokens_seen or 0) + tokens
        state.epoch = (step + 1) * ppo.rollout_batch_size / len(prompts)
        control = handler.on_step_end(args, state, control)
        if state.global_step % t.logging_steps == 0 or state.global_step == 1 or state.global_step == total:
            logs = {**record.as_log(), "learning_rate": scheduler.get_last_lr()[0], "epoch": state.epoch}
            state.log_history.append({**logs, "step": state.global_step})
            control = handler.on_log(args, state, control, logs)
        if control.should_save and state.global_step < total:  # every_steps (DefaultFlowCallback) or SIGTERM
            _save_checkpoint(ctx.work_dir, policy, head, optimizer, scheduler, state, spec.checkpointing.keep)
            control = handler.on_save(args, state, control)
            control.should_save = False
        if control.should_training_stop:
            preempted_at = state.global_step if state.global_step < total else None
            break
    handler.on_train_end(args, state, control)
    if preempted_at is not None and preempted_at < total:
        raise Preempted(f"stopped by SIGTERM at step {preempted_at}; checkpoint saved for resume")

    policy.save_pretrained(str(ctx.artifact_dir))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(ctx.artifact_dir / VALUE_HEAD))
    clear_checkpoints(ctx.work_dir)
    rewards_logged = [h["reward"] for h in state.log_history if "reward" in h]
    metrics: dict[str, Any] = {
        "train_loss": sum(losses) / len(losses) if losses else float("nan"),
        "global_step": state.global_step,
        "reward_first": rewards_logged[0] if rewards_logged else None,
        "reward_last": rewards_logged[-1] if rewards_logged else None,
    }
    if resume is not None:
        from kubetune.trainer.stages.resume import checkpoint_step

        metrics["resumed_from_step"] = checkpoint_step(Path(resume))
    export_merged(ctx, policy)
    return StageResult(metrics=metrics, log_history=list(state.log_history))


@dataclass
class Rollout:
    """One rollout batch, generated and scored without gradients: what the PPO epochs learn from."""

    prompts: list[list[int]]
    sequences: Any  # prompt + generated response, left-padded prompts
    full_mask: Any  # attention mask of ``sequences``
    prompt_len: int
    response_mask: Any  # float: 1 for response tokens up to and including EOS
    old_logprobs: Any
    old_values: Any
    advantages: Any
    returns: Any
    scores: Any  # reward-model score per row
    kl: Any  # per-token KL to the reference


def _rollout_prompts(prompts: list[list[int]], *, seed: int, size: int) -> list[list[int]]:
    """``size`` prompts in an order shuffled by ``seed`` (repeated when there are fewer prompts)."""
    order = list(range(len(prompts)))
    random.Random(seed).shuffle(order)
    return [prompts[i] for i in (order * size)[:size]]


def _generate_and_score(
    policy: Any,
    head: Any,
    ref_model: Any,
    reward_model: Any,
    batch: list[list[int]],
    generation: dict[str, Any],
    *,
    pad_id: int,
    eos_id: int,
    ppo: Any,
) -> Rollout:
    """Steps 1-4: sample a response per prompt, score it, KL-penalise the per-token rewards, GAE advantages.

    ``ref_model`` None means the reference is ``policy`` with its LoRA adapter disabled.
    """
    import torch

    from kubetune.trainer.stages.ppo.core import compute_gae, kl_penalized_rewards, masked_whiten, response_mask

    device = next(policy.parameters()).device
    policy.eval()
    prompt_ids, prompt_mask = _left_pad(batch, pad_id)
    prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)
    with torch.no_grad():
        generated = policy.generate(input_ids=prompt_ids, attention_mask=prompt_mask, **generation)
        plen = prompt_ids.shape[1]
        responses = generated[:, plen:]
        if responses.shape[1] == 0:
            raise RuntimeError("the policy generated no tokens")
        mask = response_mask(responses, eos_id, None).to(device)
        full_mask = torch.cat([prompt_mask, mask], dim=1)
        old_logprobs, old_values = _forward(policy, head, generated, full_mask, plen, ppo.temperature)
        if ref_model is None:
            with policy.disable_adapter():
                ref_logprobs, _ = _forward(policy, head, generated, full_mask, plen, ppo.temperature, False)
        else:
            ref_logprobs, _ = _forward(ref_model, head, generated, full_mask, plen, ppo.temperature, False)
        scores = _scores(reward_model, batch, responses, mask, pad_id)
        mask_f = mask.float()
        rewards, kl = kl_penalized_rewards(scores, old_logprobs, ref_logprobs, mask_f, ppo.kl_coef)
        advantages, returns = compute_gae(rewards, old_values * mask_f, mask_f, ppo.gamma, ppo.lam)
        advantages = masked_whiten(advantages, mask_f)
    return Rollout(
        prompts=batch,
        sequences=generated,
        full_mask=full_mask,
        prompt_len=plen,
        response_mask=mask_f,
        old_logprobs=old_logprobs,
        old_values=old_values,
        advantages=advantages,
        returns=returns,
        scores=scores,
        kl=kl,
    )


def _update_policy_and_value(
    policy: Any,
    head: Any,
    rollout: Rollout,
    optimizer: Any,
    scheduler: Any,
    params: list[Any],
    *,
    minibatch: int,
    rng: random.Random,
    step: int,
    ctx: RunContext,
) -> list[tuple[float, float, float, float]]:
    """Step 5: ``ppoEpochs`` passes of clipped policy + value loss over shuffled minibatches, one optimizer
    step each; returns (policy loss, value loss, clip fraction, approx KL) per minibatch."""
    import torch

    from kubetune.trainer.stages.ppo.core import policy_loss, value_loss

    t = ctx.config.spec.training
    ppo = t.ppo
    device = next(policy.parameters()).device
    r = rollout
    policy.train()
    stats = []
    for _epoch in range(ppo.ppo_epochs):
        idx = list(range(len(r.prompts)))
        rng.shuffle(idx)
        for s in range(0, len(idx), minibatch):
            mb = torch.tensor(idx[s : s + minibatch], device=device)
            logprobs, values = _forward(policy, head, r.sequences[mb], r.full_mask[mb], r.prompt_len, ppo.temperature)
            pl, pstats = policy_loss(
                logprobs, r.old_logprobs[mb], r.advantages[mb], r.response_mask[mb], ppo.clip_range
            )
            vl = value_loss(values, r.old_values[mb], r.returns[mb], r.response_mask[mb], ppo.clip_range_value)
            loss = pl + ppo.vf_coef * vl
            if not torch.isfinite(loss):
                raise RuntimeError(f"PPO loss is not finite at step {step + 1}; lower the learning rate")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            stats.append((pl.item(), vl.item(), pstats["clipfrac"], pstats["approx_kl"]))
    return stats


def _step_stats(rollout: Rollout, stats: list[tuple[float, float, float, float]]) -> Any:
    """The numbers one PPO step logs: the rollout's score, KL and length, the updates' mean losses."""
    from kubetune.trainer.stages.ppo.core import PpoStats

    n = len(stats)
    return PpoStats(
        score=rollout.scores.mean().item(),
        kl=(rollout.kl.sum(dim=1)).mean().item(),
        policy_loss=sum(s[0] for s in stats) / n,
        value_loss=sum(s[1] for s in stats) / n,
        clipfrac=sum(s[2] for s in stats) / n,
        approx_kl=sum(s[3] for s in stats) / n,
        response_length=rollout.response_mask.sum(dim=1).mean().item(),
    )


def _save_checkpoint(
    work_dir: Path, policy: Any, head: Any, optimizer: Any, scheduler: Any, state: Any, keep: int
) -> Path:
    import torch

    from kubetune.trainer.stages.resume import checkpoint_step

    path = Path(work_dir) / f"checkpoint-{state.global_step}"
    path.mkdir(parents=True, exist_ok=True)
    trainable = {n: p.detach().cpu() for n, p in policy.named_parameters() if p.requires_grad}
    torch.save(
        {
            "policy": trainable,
            "value_head": head.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        path / STATE,
    )
    state.save_to_json(str(path / "trainer_state.json"))
    older = sorted(
        (p for p in Path(work_dir).iterdir() if checkpoint_step(p) is not None and p != path),
        key=lambda p: checkpoint_step(p) or 0,
    )
    for old in older[: max(0, len(older) - (keep - 1))]:
        import shutil

        shutil.rmtree(old, ignore_errors=True)
    return path


def _load_checkpoint(path: Path, policy: Any, head: Any, optimizer: Any, scheduler: Any, state: Any) -> int:
    import torch

    saved = torch.load(path / STATE, map_location="cpu", weights_only=False)
    missing = policy.load_state_dict(saved["policy"], strict=False)
    if missing.unexpected_keys:
        raise ConfigError(f"checkpoint {path} does not match the policy: {missing.unexpected_keys[:3]}")
    head.load_state_dict(saved["value_head"])
    optimizer.load_state_dict(saved["optimizer"])
    scheduler.load_state_dict(saved["scheduler"])
    torch.set_rng_state(saved["torch_rng"])
    loaded = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
    state.global_step = loaded["global_step"]
    state.epoch = loaded.get("epoch", 0.0)
    state.log_history = loaded.get("log_history", [])
    state.num_input_tokens_seen = loaded.get("num_input_tokens_seen", 0)
    log.info("resumed PPO at step %d from %s", state.global_step, path.name)
    return state.global_step
