"""Divergence guard (``spec.training.guard``): a NaN/Inf loss or gradient norm, or a loss spike, rolls back.

Every optimizer step is checked between the backward pass and ``optimizer.step()``:

* the step's loss is the sum of its micro-batch losses (seen through a wrap of ``trainer.training_step``),
  averaged over the ranks with one all-reduce, so every rank takes the same decision;
* the gradient norm is the one the Trainer computed for clipping (a wrap of ``trainer._get_grad_norm``);
* :func:`verdict` says whether the step diverged: a non-finite loss or norm, or (pt/sft) a loss above
  ``spikeFactor`` × the mean of the last ``window`` good steps.

A diverged step's gradients are dropped before the optimizer sees them (its batches are skipped), then the
trainable parameters and the optimizer state are restored from the older of two in-memory snapshots (taken
every ``snapshot_every`` good steps; only when the trainable parameters fit ``SNAPSHOT_MAX_PARAMETERS``, i.e.
adapters and small models — a larger full fine-tune keeps the skip and the cut without a restore), and the
learning rate is multiplied by ``lrCut`` in the optimizer and in the scheduler's base. Each rollback is logged,
recorded for the manifest and sent through ``trainer.log`` (``guard_rollbacks``, ``guard_diverged``), which the
Prometheus callback turns into ``kubetune_train_rollbacks_total`` and ``kubetune_train_diverged``. One more
divergence after ``maxRollbacks`` raises :class:`~kubetune.trainer.errors.Diverged` (exit code 5).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from transformers import TrainerCallback

from kubetune.api.metrics import GUARD_REASONS
from kubetune.trainer.callbacks.throughput import count_parameters
from kubetune.trainer.errors import Diverged
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)

NAN_LOSS, NAN_GRAD_NORM, LOSS_SPIKE = REASONS = GUARD_REASONS
SPIKE_STAGES = ("pt", "sft")  # a cross-entropy: positive, bounded below, so a ratio to its mean means something
SNAPSHOT_MAX_PARAMETERS = 2**27  # 134M trainable parameters: ~1.6 GB for weights + AdamW moments


def verdict(
    loss: float,
    grad_norm: float | None,
    recent: Sequence[float],
    *,
    spike_factor: float,
    window: int,
    spikes: bool = True,
) -> str | None:
    """Why this step diverged (one of ``REASONS``), or None when it is good. Pure."""
    if not math.isfinite(loss):
        return NAN_LOSS
    if grad_norm is not None and not math.isfinite(grad_norm):
        return NAN_GRAD_NORM
    if spikes and len(recent) >= window:
        mean = sum(recent[-window:]) / window
        if mean > 0 and loss > spike_factor * mean:
            return LOSS_SPIKE
    return None


@dataclass
class Rollback:
    """One manifest entry (``guard.rollbacks``)."""

    step: int  # the optimizer step whose batches were skipped
    reason: str
    loss: float | None
    grad_norm: float | None
    restored_step: int | None  # the snapshot the weights went back to; None: skip and cut only
    learning_rate: float  # after the cut

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


class _Snapshot:
    """A copy of the trainable parameters and the optimizer state, on the same device."""

    def __init__(self, step: int, params: list[Any], optimizer: Any) -> None:
        import torch

        self.step = step
        with torch.no_grad():
            self.params = [p.detach().clone() for p in params]
        self.optimizer = _clone(optimizer.state_dict())

    def restore(self, params: list[Any], optimizer: Any) -> None:
        import torch

        with torch.no_grad():
            for p, saved in zip(params, self.params, strict=True):
                p.copy_(saved)
        optimizer.load_state_dict(_clone(self.optimizer))


def _clone(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


class DivergenceGuard(TrainerCallback):
    """Install with :func:`install` (it wraps two Trainer methods); on every rank."""

    def __init__(self, trainer: Any, guard: Any, stage: str) -> None:
        self.trainer = trainer
        self.spec = guard
        self.spikes = stage in SPIKE_STAGES
        self.snapshot_every = max(1, guard.window // 4)
        self.recent: deque[float] = deque(maxlen=guard.window)
        self.rollbacks: list[Rollback] = []
        self._micro: list[Any] = []
        self._grad_norm: float | None = None
        self._bad: tuple[str, float, float | None] | None = None
        self._snapshots: deque[_Snapshot] = deque(maxlen=2)
        self._snapshots_on: bool | None = None
        self._good_since_rollback = 0

    # ---------------------------------------------------------------- wraps

    def wrap(self) -> None:
        trainer = self.trainer
        training_step = trainer.training_step
        get_grad_norm = getattr(trainer, "_get_grad_norm", None)

        def guarded_training_step(*args: Any, **kwargs: Any) -> Any:
            loss = training_step(*args, **kwargs)
            self._micro.append(loss.detach())
            return loss

        trainer.training_step = guarded_training_step
        if get_grad_norm is not None:

            def guarded_grad_norm(*args: Any, **kwargs: Any) -> Any:
                norm = get_grad_norm(*args, **kwargs)
                self._grad_norm = None if norm is None else float(norm)
                return norm

            trainer._get_grad_norm = guarded_grad_norm

    # ---------------------------------------------------------------- events

    def on_train_begin(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **_: Any
    ) -> None:
        trainable = [p for p in model.parameters() if p.requires_grad] if model is not None else []
        count = count_parameters(model)[1] if model is not None else 0
        deepspeed = getattr(self.trainer, "is_deepspeed_enabled", False)
        self._snapshots_on = bool(trainable) and count <= SNAPSHOT_MAX_PARAMETERS and not deepspeed
        if not self._snapshots_on:
            log.info(
                "divergence guard: %d trainable parameters%s: no in-memory snapshot; a divergence skips the "
                "step and cuts the learning rate without restoring the weights",
                count,
                " under DeepSpeed" if deepspeed else "",
            )
        self._take_snapshot(state.global_step, model, optimizer)

    def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._micro.clear()
        self._grad_norm = None
        self._bad = None

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        loss, local = self._step_loss()
        grad_norm = self._grad_norm
        reason = verdict(
            loss,
            grad_norm,
            list(self.recent),
            spike_factor=self.spec.spike_factor,
            window=self.spec.window,
            spikes=self.spikes,
        )
        if reason is None:
            self.recent.append(loss)
            return
        step = state.global_step + 1
        if len(self.rollbacks) >= self.spec.max_rollbacks:
            raise Diverged(
                f"training diverged at step {step} ({_describe(reason, loss, grad_norm)}) after "
                f"{len(self.rollbacks)} rollback(s); spec.training.guard.maxRollbacks is "
                f"{self.spec.max_rollbacks}: lower spec.training.learningRate, raise warmupRatio or "
                "check the data"
            )
        self._bad = (reason, loss, grad_norm)
        self._drop_gradients(model)
        tr_loss = getattr(self.trainer, "_tr_loss", None)
        if reason == LOSS_SPIKE and tr_loss is not None and local is not None:
            tr_loss -= local  # the skipped batches do not count in the logged loss either

    def on_optimizer_step(
        self,
        args: Any,
        state: Any,
        control: Any,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **_: Any,
    ) -> None:
        if self._bad is None:
            return
        reason, loss, grad_norm = self._bad
        restored = None
        if self._snapshots and model is not None and optimizer is not None:
            snapshot = self._snapshots[0]  # the older one: taken before the update that may have caused this
            snapshot.restore(self._trainable(model), optimizer)
            self._snapshots.clear()
            self._snapshots.append(snapshot)
            restored = snapshot.step
        lr = cut_learning_rate(optimizer, lr_scheduler, self.spec.lr_cut)
        entry = Rollback(
            step=state.global_step + 1,
            reason=reason,
            loss=loss,
            grad_norm=grad_norm,
            restored_step=restored,
            learning_rate=lr,
        )
        self.rollbacks.append(entry)
        self._good_since_rollback = 0
        log.warning(
            "divergence guard: rollback %d/%d at step %d (%s): batches skipped, %s, learning rate cut to %.3g",
            len(self.rollbacks),
            self.spec.max_rollbacks,
            entry.step,
            _describe(reason, loss, grad_norm),
            f"weights restored to step {restored}" if restored is not None else "weights kept",
            lr,
        )

    def on_step_end(
        self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None, **_: Any
    ) -> None:
        if self._bad is not None:
            self._report(self._bad[0], diverged=True)
            self._bad = None
            return
        if self.rollbacks:
            self._good_since_rollback += 1
            if self._good_since_rollback == self.spec.window:  # recovered: the Diverged condition ends
                self._report(self.rollbacks[-1].reason, diverged=False)
        if state.global_step % self.snapshot_every == 0:
            self._take_snapshot(state.global_step, model, optimizer)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.rollbacks and self._good_since_rollback < self.spec.window:
            self._report(self.rollbacks[-1].reason, diverged=False)

    # ---------------------------------------------------------------- helpers

    def to_manifest(self) -> dict[str, Any]:
        return {"rollbacks": [r.to_dict() for r in self.rollbacks]}

    def _report(self, reason: str, *, diverged: bool) -> None:
        self.trainer.log(
            {
                "guard_rollbacks": float(len(self.rollbacks)),
                "guard_diverged": 1.0 if diverged else 0.0,
                f"guard_reason_{reason}": 1.0,
            }
        )

    @staticmethod
    def _trainable(model: Any) -> list[Any]:
        return [p for p in model.parameters() if p.requires_grad]

    def _take_snapshot(self, step: int, model: Any, optimizer: Any) -> None:
        if self._snapshots_on and model is not None and optimizer is not None:
            self._snapshots.append(_Snapshot(step, self._trainable(model), optimizer))

    def _step_loss(self) -> tuple[float, Any]:
        """(this step's loss averaged over ranks, this rank's loss tensor); NaN when no micro-batch was seen."""
        import torch

        if not self._micro:
            return 0.0, None
        local = torch.stack([m.float().reshape(()) for m in self._micro]).sum()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            total = local.clone()
            torch.distributed.all_reduce(total)  # NaN on any rank makes the sum NaN: every rank sees it
            return float(total) / torch.distributed.get_world_size(), local
        return float(local), local

    def _drop_gradients(self, model: Any) -> None:
        if model is None:
            return
        scaler = getattr(getattr(self.trainer, "accelerator", None), "scaler", None)
        for p in model.parameters():
            if p.grad is not None:
                if scaler is not None:
                    p.grad.zero_()  # a GradScaler needs gradients to inspect; the restore undoes the step
                else:
                    p.grad = None  # the optimizer skips parameters without a gradient


def cut_learning_rate(optimizer: Any, lr_scheduler: Any, factor: float) -> float:
    """Multiply the learning rate now and the schedule's base (so later steps keep the cut); the new rate."""
    lr = 0.0
    if optimizer is not None:
        for group in optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
            lr = group["lr"]
    if lr_scheduler is not None and hasattr(lr_scheduler, "base_lrs"):
        lr_scheduler.base_lrs = [base * factor for base in lr_scheduler.base_lrs]
    if lr_scheduler is not None and hasattr(lr_scheduler, "_last_lr") and optimizer is not None:
        lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    return lr


def _describe(reason: str, loss: float, grad_norm: float | None) -> str:
    if reason == NAN_GRAD_NORM:
        return f"gradient norm {grad_norm}"
    if reason == NAN_LOSS:
        return f"loss {loss}"
    return f"loss spike {loss:.4g}"


def install(trainer: Any, spec: Any) -> DivergenceGuard | None:
    """Add the guard to ``trainer`` when ``spec.training.guard.enabled``; the guard or None."""
    if not spec.training.guard.enabled:
        return None
    guard = DivergenceGuard(trainer, spec.training.guard, str(spec.stage))
    guard.wrap()
    trainer.add_callback(guard)
    return guard
