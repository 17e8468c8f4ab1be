"""Where a stage resumes: periodic checkpoints marked complete, the newest complete one, save-then-exit on SIGTERM.

(Copying checkpoint folders to and from the output storage is :mod:`kubetune.trainer.storage.checkpoints`.)

The HF Trainer writes ``<work_dir>/checkpoint-<step>/`` every ``spec.checkpointing.everySteps``
and keeps the newest ``keep``. A checkpoint counts as *complete* only once :class:`CheckpointCallback`
has written :data:`MARKER` into it, after the Trainer finished writing (and, in distributed runs,
after every rank did): a run killed mid-save leaves no marker and is never resumed from. The marker
holds a hash of the spec, so a changed FineTuneJob starts over instead of resuming a stale run.

On SIGTERM (pod preemption, ``kubectl delete``) the step in flight finishes, a checkpoint is
saved, and the stage raises :class:`Preempted`; the pod exits 143 and the Job's next pod resumes.

The marker also records the process layout that wrote the checkpoint (world size, batch per process,
gradient accumulation, total steps). A run resumed on a different number of processes (a preempted
4-GPU job rescheduled on 2) gets the gradient accumulation (and, if it must, the batch per process)
that keeps the *global* batch, so the samples of every optimizer step, the learning-rate schedule and
the total number of samples are those of the run that wrote the checkpoint (:func:`keep_global_batch`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.trainer.errors import ConfigError, TrainerError
from kubetune.trainer.logging import get_logger, is_main

log = get_logger(__name__)

MARKER = ".kubetune-checkpoint-complete"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")

CheckpointHook = Callable[[Path, int], None]
"""Called on rank 0 with (checkpoint folder, step) once a checkpoint is complete (e.g. to upload it)."""


class Preempted(TrainerError):
    """SIGTERM arrived; a checkpoint was saved and the run stopped early. The next attempt resumes."""

    exit_code = 143


def spec_fingerprint(spec: FineTuneJobSpec) -> str:
    """What a checkpoint must match to be resumed: everything that changes the training trajectory."""
    data = spec.model_dump(
        mode="json",
        by_alias=True,
        exclude={"output", "resources", "run_policy", "suspend", "queue_name", "checkpointing"},
    )
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT.match(path.name)
    return int(match.group(1)) if match else None


def complete_checkpoints(work_dir: Path, fingerprint: str | None = None) -> list[Path]:
    """Complete checkpoints in ``work_dir``, oldest first; with a fingerprint, only those it matches."""
    if not work_dir.is_dir():
        return []
    found = []
    for path in work_dir.iterdir():
        step = checkpoint_step(path)
        marker = path / MARKER
        if step is None or not marker.is_file():
            continue
        if fingerprint is not None:
            try:
                if json.loads(marker.read_text(encoding="utf-8")).get("spec") != fingerprint:
                    continue
            except (OSError, ValueError):
                continue
        found.append((step, path))
    return [p for _, p in sorted(found)]


def latest_checkpoint(work_dir: Path, fingerprint: str | None = None) -> Path | None:
    done = complete_checkpoints(work_dir, fingerprint)
    return done[-1] if done else None


def clear_checkpoints(work_dir: Path) -> None:
    """After a finished run: a re-run of the same job starts from scratch, not from the final checkpoint."""
    if not work_dir.is_dir():
        return
    for path in work_dir.iterdir():
        if checkpoint_step(path) is not None and path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _any_rank(flag: bool) -> bool:
    """True on every rank when any rank got SIGTERM (all ranks must save at the same step)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def make_callback(fingerprint: str, hooks: list[CheckpointHook] | None = None) -> Any:
    """A TrainerCallback: marks finished checkpoints complete and turns SIGTERM into save-and-stop."""
    from transformers import TrainerCallback

    class CheckpointCallback(TrainerCallback):
        def __init__(self) -> None:
            self.terminated = False
            self.preempted_at: int | None = None
            self._previous: Any = None

        def _on_sigterm(self, signum: int, frame: Any) -> None:
            log.warning("SIGTERM: saving a checkpoint after the current step, then exiting")
            self.terminated = True

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            try:
                self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
            except ValueError:  # not the main thread (e.g. a notebook worker): no preemption handling
                self._previous = None

        def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if self._previous is not None:
                signal.signal(signal.SIGTERM, self._previous)

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if _any_rank(self.terminated) and self.preempted_at is None:
                self.preempted_at = state.global_step
                control.should_save = True
                control.should_training_stop = True

        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _barrier()  # every rank has written its shards
            if not state.is_world_process_zero:
                return
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if not path.is_dir():
                return
            marker = {
                "step": state.global_step,
                "spec": fingerprint,
                **Layout(
                    args.world_size,
                    args.per_device_train_batch_size,
                    args.gradient_accumulation_steps,
                    state.max_steps,
                ).to_dict(),
            }
            (path / MARKER).write_text(json.dumps(marker), encoding="utf-8")
            log.info("checkpoint %s complete", path.name)
            for hook in hooks or []:
                hook(path, state.global_step)

    return CheckpointCallback()


def spans_nodes() -> bool:
    """Whether this run's processes are on more than one node (torchrun sets both variables in every worker)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world > int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))


@contextlib.contextmanager
def _node_lock(work_dir: Path) -> Iterator[None]:
    """Held by one process of this node at a time (before any process group exists, so not a barrier)."""
    import fcntl

    work_dir.mkdir(parents=True, exist_ok=True)
    with open(work_dir / ".kubetune-fetch.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_complete(path: Path, fingerprint: str) -> bool:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8")).get("spec") == fingerprint
    except (OSError, ValueError, AttributeError):
        return False


def fetch_uploaded(work_dir: Path, output_uri: str, allow: list[str] | None = None) -> Path | None:
    """Bring the newest completely uploaded checkpoint (``<output>/checkpoints/step-N``) into ``work_dir``.

    A new pod starts with an empty scratch folder; what survives a preemption is the output storage.
    Every process of a node calls this: the first downloads under a lock, the others then find it complete.
    The download lands in a side folder and is merged in with the completion marker last, so a download cut
    short never looks complete (and files this node wrote itself, e.g. its ranks' RNG states, stay).
    """
    from kubetune.trainer.storage.checkpoints import download_checkpoint, latest_complete_checkpoint

    if not output_uri.startswith(("s3://", "file://")):
        return None
    remote = latest_complete_checkpoint(output_uri, allow=allow or [])
    if remote is None:
        return None
    work_dir = Path(work_dir)
    dest = work_dir / f"checkpoint-{remote.step}"
    with _node_lock(work_dir):
        if not (dest / MARKER).is_file():
            log.info("downloading checkpoint step %d from %s", remote.step, remote.uri)
            side = work_dir / f".download-{remote.step}"
            shutil.rmtree(side, ignore_errors=True)
            download_checkpoint(remote, side, allow=allow or [])
            files = sorted((p for p in side.rglob("*") if p.is_file()), key=lambda p: p.name == MARKER)
            for src in files:  # the marker last
                target = dest / src.relative_to(side)
                target.parent.mkdir(parents=True, exist_ok=True)
                src.replace(target)
            shutil.rmtree(side, ignore_errors=True)
    return dest


def resume_point(
    work_dir: Path,
    spec: FineTuneJobSpec,
    explicit: str | None = None,
    output_uri: str | None = None,
    allow: list[str] | None = None,
) -> str | None:
    """The checkpoint to resume from: the one given, else the newest complete one of this spec, local or
    (with ``output_uri``) uploaded — when ``spec.checkpointing.resume`` is on.

    Across nodes every process must resume the same step, and only the output storage is seen by all of them
    (a node's scratch folder holds what that node wrote, and a checkpoint's marker is written on node 0): a
    multi-node run resumes the newest checkpoint complete in the output, which each node brings in unless it
    has it already, and never a checkpoint that only one node's scratch holds."""
    if explicit:
        return explicit
    if not spec.checkpointing.resume:
        return None
    fingerprint = spec_fingerprint(spec)
    uploads = bool(output_uri and spec.checkpointing.every_steps)
    if spans_nodes():
        fetched = fetch_uploaded(work_dir, output_uri, allow) if uploads and output_uri else None
        latest = fetched if fetched is not None and _is_complete(fetched, fingerprint) else None
    else:
        latest = latest_checkpoint(work_dir, fingerprint)
        if latest is None and uploads and output_uri:
            fetch_uploaded(work_dir, output_uri, allow)
            latest = latest_checkpoint(work_dir, fingerprint)
    if latest is not None and is_main():
        log.info("resuming from %s", latest.name)
    return str(latest) if latest is not None else None


@dataclass(frozen=True)
class Layout:
    """How a run is spread: processes x batch per process x gradient accumulation = the global batch."""

    world_size: int
    per_device_batch: int
    gradient_accumulation: int
    max_steps: int

    @property
    def global_batch(self) -> int:
        return self.world_size * self.per_device_batch * self.gradient_accumulation

    def to_dict(self) -> dict[str, int]:
        return {
            "world_size": self.world_size,
            "per_device_batch": self.per_device_batch,
            "gradient_accumulation": self.gradient_accumulation,
            "max_steps": self.max_steps,
            "global_batch": self.global_batch,
        }

    @classmethod
    def of_checkpoint(cls, path: Path) -> Layout | None:
        """The layout recorded in a complete checkpoint's marker (None for one written before layouts were)."""
        try:
            data = json.loads((path / MARKER).read_text(encoding="utf-8"))
            return cls(
                int(data["world_size"]),
                int(data["per_device_batch"]),
                int(data["gradient_accumulation"]),
                int(data["max_steps"]),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def relayout(saved: Layout, world_size: int, per_device_batch: int) -> Layout:
    """The layout for ``world_size`` processes that keeps ``saved``'s global batch and total steps.

    Keeps the batch per process (at most ``per_device_batch``, the spec's) as large as divides the global batch
    and makes up the rest with gradient accumulation; raises ConfigError when no layout gives the same global batch.
    """
    if world_size == saved.world_size:
        return saved
    total = saved.global_batch
    if total % world_size:
        raise ConfigError(
            f"spec.checkpointing.resume: the checkpoint was written by {saved.world_size} processes with a global "
            f"batch of {total} rows, which {world_size} processes cannot keep ({total} is not a multiple of "
            f"{world_size}); run on a number of processes that divides {total}, or set "
            "spec.checkpointing.resume: false to start over"
        )
    per_process = total // world_size
    batch = next(b for b in range(min(per_device_batch, per_process), 0, -1) if per_process % b == 0)
    return Layout(world_size, batch, per_process // batch, saved.max_steps)


def keep_global_batch(checkpoint: str | None, spec: FineTuneJobSpec) -> tuple[dict[str, Any], dict[str, int]]:
    """TrainingArguments overrides and manifest metrics for resuming ``checkpoint`` in this process's world.

    Empty when there is nothing to resume, the checkpoint records no layout, or the world size is unchanged.
    """
    if checkpoint is None:
        return {}, {}
    saved = Layout.of_checkpoint(Path(checkpoint))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if saved is None or saved.world_size == world:
        return {}, {}
    if spec.distributed.strategy == "deepspeed" and spec.distributed.zero_stage > 0:
        # DeepSpeed's checkpoint holds one optimizer partition per process and loads only on as many
        raise ConfigError(
            f"spec.checkpointing.resume: the checkpoint was written by {saved.world_size} DeepSpeed ZeRO processes, "
            f"whose optimizer partitions do not load on {world}; resume on {saved.world_size} processes, or set "
            "spec.checkpointing.resume: false to start over (ddp and fsdp checkpoints resume on any number)"
        )
    now = relayout(saved, world, spec.training.batch_size)
    if is_main():
        log.warning(
            "resuming %s, written by %d processes, on %d: batch per process %d -> %d, gradient accumulation "
            "%d -> %d, so the global batch stays %d rows and the run stays %d steps",
            Path(checkpoint).name,
            saved.world_size,
            world,
            saved.per_device_batch,
            now.per_device_batch,
            saved.gradient_accumulation,
            now.gradient_accumulation,
            now.global_batch,
            now.max_steps,
        )
    args = {
        "per_device_train_batch_size": now.per_device_batch,
        "gradient_accumulation_steps": now.gradient_accumulation,
        "max_steps": now.max_steps,
    }
    metrics = {
        "resumed_from_world_size": saved.world_size,
        "resumed_from_per_device_batch": saved.per_device_batch,
        "resumed_from_gradient_accumulation": saved.gradient_accumulation,
        "per_device_batch": now.per_device_batch,
        "gradient_accumulation": now.gradient_accumulation,
        "global_batch": now.global_batch,
    }
    return args, metrics
