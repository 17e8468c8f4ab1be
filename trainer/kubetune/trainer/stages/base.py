"""What every stage workflow receives and returns, and the steps they share.

A workflow starts with :func:`load_model_and_arguments` (the model with its method, the trainer's arguments),
builds its trainer and ends with :func:`train_evaluate_save`; :func:`build_and_train` does both last steps
for the TRL/transformers trainers that take the usual arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.data.loader import DataBundle
from kubetune.trainer.data.templates import Template
from kubetune.trainer.models.loader import ModelRef


@dataclass
class RunContext:
    config: TrainerConfig
    model_ref: ModelRef
    tokenizer: Any
    template: Template
    data: DataBundle
    artifact_dir: Path  # what gets published: adapter/model files, tokenizer, curves, manifest
    work_dir: Path  # trainer scratch: HF output_dir, checkpoints
    callbacks: list[Any] = field(default_factory=list)
    resume_from: str | None = None
    adapter_init: Path | None = None  # spec.model.adapter, fetched
    reward_model: Path | None = None  # spec.training.rewardModel, fetched (ppo, grpo)
    checkpoint_hooks: list[Any] = field(default_factory=list)  # (folder, step) -> None once a checkpoint is complete
    resume_metrics: dict[str, Any] = field(default_factory=dict)  # a resume on another world size, for the manifest


@dataclass
class StageResult:
    metrics: dict[str, Any]
    log_history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def use_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


def common_args(ctx: RunContext) -> dict[str, Any]:
    """TrainingArguments shared by every stage, from ``spec.training`` and ``spec.checkpointing``."""
    from kubetune.trainer.models.precision import autocast_flags

    spec = ctx.config.spec
    t = spec.training
    ckpt = spec.checkpointing
    eval_on = bool(ctx.data.eval)
    args: dict[str, Any] = {
        "output_dir": str(ctx.work_dir),
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation,
        "learning_rate": t.learning_rate,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps or -1,
        "lr_scheduler_type": t.scheduler,
        "warmup_steps": t.warmup_ratio,
        "weight_decay": t.weight_decay,
        "max_grad_norm": t.max_grad_norm,
        "logging_steps": t.logging_steps,
        "logging_first_step": True,
        "seed": t.seed,
        "data_seed": t.seed,
        **autocast_flags(t.precision),  # fp32 master weights under autocast (kubetune.trainer.models.precision)
        "gradient_checkpointing": t.gradient_checkpointing,
        "report_to": list(t.report_to) or "none",
        "include_num_input_tokens_seen": "non_padding",  # tokens/s and MFU in kubetune.trainer.callbacks
        "save_strategy": "steps" if ckpt.every_steps else "no",
        "save_steps": ckpt.every_steps or 500,
        "save_total_limit": ckpt.keep,
        "eval_strategy": ("steps" if t.eval_steps else "no") if eval_on else "no",
        "eval_steps": t.eval_steps,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "use_cpu": use_cpu(),
        "disable_tqdm": True,  # kubetune's live view is the one progress display (callbacks/live.py)
        "ddp_find_unused_parameters": False,
    }
    if t.gradient_checkpointing:
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    from kubetune.trainer.distributed import training_args as distributed_args

    args.update(distributed_args(spec, cache_dir=ctx.config.runtime.cache_dir))
    # the checkpoint to resume is chosen (and fetched) before the arguments exist: on another number of processes
    # the batch layout changes so the global batch, the schedule and the total samples stay the checkpoint's
    from kubetune.trainer.stages.resume import keep_global_batch, resume_point

    runtime = ctx.config.runtime
    ctx.resume_from = resume_point(ctx.work_dir, spec, ctx.resume_from, runtime.output_uri, runtime.allow_private_urls)
    overrides, ctx.resume_metrics = keep_global_batch(ctx.resume_from, spec)
    args.update(overrides)
    return args


def load_model_and_arguments(
    ctx: RunContext,
    arguments_class: Any,
    *,
    model_class: Any = None,
    model_kwargs: dict[str, Any] | None = None,
    task_type: str = "CAUSAL_LM",
    without: tuple[str, ...] = (),
    **stage_arguments: Any,
) -> tuple[Any, Any]:
    """The start of every stage: ``spec.model`` loaded, ``spec.method`` applied, the trainer's arguments built.

    The model is loaded with ``model_class`` (the causal LM by default) and ``model_kwargs``, then gets its
    method (full, freeze, lora, qlora; LoRA starts from ``spec.model.adapter`` when given). The arguments are
    ``arguments_class`` (``TrainingArguments`` or a TRL config) over :func:`common_args` less the keys in
    ``without``, with ``stage_arguments`` added (or replacing a common one). Returns ``(model, arguments)``.
    """
    from kubetune.trainer.models.adapters import apply_method
    from kubetune.trainer.models.loader import load_model

    model = load_model(ctx.model_ref, ctx.config, model_class=model_class, **(model_kwargs or {}))
    model = apply_method(model, ctx.config.spec, ctx.adapter_init, task_type=task_type)
    shared = {k: v for k, v in common_args(ctx).items() if k not in without}
    return model, arguments_class(**{**shared, **stage_arguments})


def stage_callbacks(ctx: RunContext) -> list[Any]:
    """The observers' callbacks plus the checkpoint/preemption one; pass to every trainer."""
    from kubetune.trainer.stages.resume import make_callback, spec_fingerprint

    checkpoint = make_callback(spec_fingerprint(ctx.config.spec), ctx.checkpoint_hooks)
    return [*ctx.callbacks, checkpoint]


def _strategy_name(trainer: Any) -> str:
    """What actually ran (recorded in the manifest): single, ddp, fsdp or deepspeed-zeroN."""
    if getattr(trainer, "is_deepspeed_enabled", False):
        return f"deepspeed-zero{trainer.accelerator.state.deepspeed_plugin.zero_stage}"
    if getattr(trainer, "is_fsdp_enabled", False):
        return "fsdp"
    return "ddp" if trainer.args.world_size > 1 else "single"


def train_evaluate_save(ctx: RunContext, trainer: Any, *, perplexity: bool = False, save: bool = True) -> StageResult:
    """The common tail of every workflow: resume → train → (preempted?) → evaluate → save → metrics."""
    import math

    from kubetune.trainer.stages.resume import Preempted, clear_checkpoints, resume_point

    runtime = ctx.config.runtime
    resume = resume_point(
        ctx.work_dir, ctx.config.spec, ctx.resume_from, runtime.output_uri, runtime.allow_private_urls
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from kubetune.trainer.distributed import lost_peers_as_error

    for raw in (
        PrinterCallback,
        ProgressCallback,
    ):  # the Trainer's raw log dicts and its bar: the live view shows them
        trainer.remove_callback(raw)
    from kubetune.trainer.callbacks.guard import install as install_guard

    guard = install_guard(trainer, ctx.config.spec)  # spec.training.guard: NaN/Inf/spike → roll back, cut the rate
    from kubetune.trainer.callbacks.watchdog import install as install_watchdog

    watchdog = install_watchdog(trainer, ctx.config.spec)  # spec.training.stallTimeoutSeconds: dump stacks, exit 75
    try:
        with lost_peers_as_error(ctx.config.spec):  # a dead node fails this one with a clear line, not a gloo trace
            output = trainer.train(resume_from_checkpoint=resume)
    finally:
        watchdog.stop()  # evaluation, saving and upload after training are not optimizer steps
    checkpoint = next((cb for cb in trainer.callback_handler.callbacks if hasattr(cb, "preempted_at")), None)
    if checkpoint is not None and checkpoint.preempted_at is not None:
        raise Preempted(f"stopped by SIGTERM at step {checkpoint.preempted_at}; checkpoint saved for resume")
    metrics: dict[str, Any] = dict(output.metrics)
    metrics["global_step"] = trainer.state.global_step
    metrics["world_size"] = trainer.args.world_size
    metrics["global_batch"] = (
        trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps * trainer.args.world_size
    )
    metrics.update(ctx.resume_metrics)
    metrics["distributed"] = _strategy_name(trainer)
    from kubetune.trainer.distributed import sharded_parameters

    metrics["sharded_parameters"] = sharded_parameters(trainer.model)  # > 0 only where FSDP / ZeRO-3 really shard
    if resume is not None:
        from kubetune.trainer.stages.resume import checkpoint_step

        metrics["resumed_from_step"] = checkpoint_step(Path(resume))
    if trainer.eval_dataset is not None:
        metrics.update(trainer.evaluate())
        if perplexity and "eval_loss" in metrics:
            metrics["eval_perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
    if save:
        trainer.save_model(str(ctx.artifact_dir))
    if trainer.is_world_process_zero():
        clear_checkpoints(ctx.work_dir)
    extra = {"guard": guard.to_manifest()} if guard is not None else {}
    metrics["guard_rollbacks"] = len(guard.rollbacks) if guard is not None else 0
    return StageResult(metrics=metrics, log_history=list(trainer.state.log_history), extra=extra)


def build_and_train(
    ctx: RunContext,
    trainer_cls: Any,
    model: Any,
    args: Any,
    train: list[dict[str, Any]],
    evaluation: list[dict[str, Any]],
    *,
    perplexity: bool = False,
    **kwargs: Any,
) -> StageResult:
    """Build a TRL/transformers trainer the way every stage does, :func:`train_evaluate_save` it, export the
    merged model."""
    from kubetune.trainer.models.adapters import export_merged, optimizers

    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=to_hf_dataset(train),
        eval_dataset=to_hf_dataset(evaluation),
        processing_class=ctx.tokenizer,
        callbacks=stage_callbacks(ctx),
        optimizers=optimizers(model, ctx.config.spec, args),
        **kwargs,
    )
    result = train_evaluate_save(ctx, trainer, perplexity=perplexity)
    export_merged(ctx, trainer.model)
    return result


def to_hf_dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    if not rows:
        return None
    return datasets.Dataset.from_list(rows)
