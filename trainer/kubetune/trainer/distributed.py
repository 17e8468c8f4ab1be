"""Distribution: how many processes a pod runs, how they find each other, and what each one trains with.

The operator sets the multi-node environment of a pod (``NNODES``, ``NODE_RANK``, ``NPROC_PER_NODE``,
``MASTER_ADDR``, ``MASTER_PORT``). ``kubetune-train`` reads it with :func:`launch_plan`; when the pod
needs more than one process it re-launches itself through ``torch.distributed.run`` (one worker per
local GPU, or ``NPROC_PER_NODE`` CPU workers), and every worker then builds its TrainingArguments
with :func:`training_args`: DDP, FSDP or DeepSpeed ZeRO-2/3 (optionally offloaded to CPU) from
``spec.distributed``. CPU workers use the gloo backend, so two-process runs work without a GPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kubetune.api.conditions import EXIT_STALLED, NON_RETRYABLE_EXIT_CODES
from kubetune.api.v1alpha1 import DistributedSpec, FineTuneJobSpec
from kubetune.trainer.errors import TrainerError

WORKER_ENV = "KUBETUNE_WORKER"  # set in re-launched workers so they do not launch again


@dataclass(frozen=True)
class LaunchPlan:
    nnodes: int
    nproc_per_node: int
    node_rank: int
    master_addr: str
    master_port: int
    rendezvous_timeout: int = 900  # spec.distributed.rendezvousTimeoutSeconds (torchrun's own default)

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def needs_launcher(self) -> bool:
        return self.world_size > 1


def _int_env(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, "")
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None
    if value < 0 or (value == 0 and name not in ("NODE_RANK", "JOB_COMPLETION_INDEX")):
        raise ValueError(f"environment variable {name}={raw!r} must be positive")
    return value


def launch_plan(env: dict[str, str] | None = None) -> LaunchPlan:
    """The process layout of this pod, from the environment the operator (or the user) sets."""
    env = dict(os.environ if env is None else env)
    node_rank = _int_env(env, "NODE_RANK", _int_env(env, "JOB_COMPLETION_INDEX", 0))
    return LaunchPlan(
        nnodes=_int_env(env, "NNODES", 1),
        nproc_per_node=_int_env(env, "NPROC_PER_NODE", 1),
        node_rank=node_rank,
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int_env(env, "MASTER_PORT", 29500),
    )


def is_worker(env: dict[str, str] | None = None) -> bool:
    env = os.environ if env is None else env
    return env.get(WORKER_ENV) == "1" or "LOCAL_RANK" in env


def launch_command(plan: LaunchPlan, argv: list[str]) -> list[str]:
    """``python -m torch.distributed.run … -m kubetune.trainer <argv>``: one worker per local process."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={plan.nnodes}",
        f"--nproc-per-node={plan.nproc_per_node}",
        f"--node-rank={plan.node_rank}",
        f"--master-addr={plan.master_addr}",
        f"--master-port={plan.master_port}",
        f"--rdzv-conf=timeout={plan.rendezvous_timeout}",
    ]
    return [*cmd, "-m", "kubetune.trainer", *argv]


def with_spec_timeouts(plan: LaunchPlan, argv: list[str]) -> LaunchPlan:
    """The plan with the rendezvous timeout of the job in ``--config`` (the default when it cannot be read:
    the workers then report the bad config themselves, with its exit code)."""
    import dataclasses

    from kubetune.api.trainer_config import TrainerConfig

    if "--config" not in argv[:-1]:
        return plan
    try:
        spec = TrainerConfig.from_file(argv[argv.index("--config") + 1]).spec
    except Exception:  # noqa: BLE001 - reported by the workers
        return plan
    return dataclasses.replace(plan, rendezvous_timeout=spec.distributed.rendezvous_timeout_seconds)


def relaunch(plan: LaunchPlan, argv: list[str], module: str = "kubetune.trainer") -> int:
    """Run the workers with torchrun's elastic agent in this process; return the pod's exit code.

    ``python -m torch.distributed.run`` exits 1 whenever a worker fails, which would hide a worker's
    ``3`` (bad config) or ``4`` (bad data) from the Job's podFailurePolicy. Running the same agent
    in-process gives us its :class:`ChildFailedError`: every failed rank's own exit code, and the
    message the worker recorded in its ``TORCHELASTIC_ERROR_FILE`` (see :func:`record_failure`).
    SIGTERM goes to the agent, which passes it on to the workers (they save a checkpoint) before exiting.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    os.environ[WORKER_ENV] = "1"
    if not _cuda_available():
        os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch.distributed as dist
    from torch.distributed.elastic.rendezvous.api import RendezvousError

    plan = with_spec_timeouts(plan, argv)
    cmd = launch_command(plan, argv)
    cmd[cmd.index("kubetune.trainer")] = module
    _last_failure.clear()
    try:
        torchrun(parse_args(cmd[3:]))
    except (RendezvousError, dist.DistError) as exc:  # the nodes never met: no worker ran
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        message = (
            f"node {plan.node_rank}: the {plan.nnodes} nodes of this job did not all meet at "
            f"{plan.master_addr}:{plan.master_port} within spec.distributed.rendezvousTimeoutSeconds="
            f"{plan.rendezvous_timeout} s - a pod that never started, a wrong MASTER_ADDR or a blocked "
            f"port ({first[:300]})"
        )
        from kubetune.trainer.logging import get_logger

        get_logger(__name__).error("%s", message)
        _last_failure.update(code=1, rank=plan.node_rank * plan.nproc_per_node, message=message)
        return 1
    except ChildFailedError as exc:
        code, rank, message = pod_exit_code(
            {rank: (f.exitcode, f.timestamp, _message_of(f)) for rank, f in exc.failures.items()}
        )
        from kubetune.trainer.logging import get_logger

        get_logger(__name__).error("worker rank %d failed with exit code %d: %s", rank, code, message)
        _last_failure.update(code=code, rank=rank, message=message)
        return code
    except SignalException as exc:  # SIGTERM/SIGINT to the launcher: the workers were stopped with it
        return 128 + int(exc.sigval)
    return 0


_last_failure: dict[str, Any] = {}  # the failure that decided the pod's exit code (for the termination message)


def last_failure() -> dict[str, Any]:
    """``{code, rank, message}`` of the worker failure behind :func:`relaunch`'s last non-zero code (else empty)."""
    return dict(_last_failure)


# Exit codes a worker chooses itself (kubetune.trainer.errors, Preempted) outrank a crash, and a crash outranks a
# signal (the agent SIGTERMs the surviving workers once one fails), so the non-retryable 3 and 4 always reach the
# Job's podFailurePolicy.
_TIER_OF_CODE = {**{code: 0 for code in NON_RETRYABLE_EXIT_CODES}, EXIT_STALLED: 1, 143: 1}  # 143: preempted


def _tier(code: int) -> int:
    if code >= 0:
        return _TIER_OF_CODE.get(code, 2)
    return 4 if code == -15 else 3  # SIGTERM is what the agent stops the other workers with


def pod_exit_code(failures: dict[int, tuple[int, float, str]]) -> tuple[int, int, str]:
    """(exit code, rank, message) for the pod from the failed workers' ``{rank: (exitcode, timestamp, message)}``.

    A documented code (3 bad config, 4 bad data, 5 diverged; then 75 stalled, 143 preempted) from any rank wins
    over a crash, a crash
    over a signal; among equals the earliest failure (then the lowest rank) decides. A worker killed by
    signal N (exitcode ``-N``) gives the shell's ``128 + N``.
    """
    if not failures:
        return 1, -1, "no worker failure reported"

    def order(item: tuple[int, tuple[int, float, str]]) -> tuple[int, float, int]:
        rank, (code, timestamp, _message) = item
        return _tier(code), timestamp, rank

    rank, (code, _timestamp, message) = min(failures.items(), key=order)
    if code < 0:
        code = 128 - code
    return (code if 0 < code < 256 else 1), rank, message


def _message_of(failure: Any) -> str:
    """The worker's one-line reason: torchrun keeps a recorded exception as ``{"message": ..., "extraInfo": ...}``."""
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message", "")
    return str(message)


def record_failure(exc: BaseException) -> None:
    """In a torchrun worker: write ``exc`` to torchrun's error file, where the launcher reads the message."""
    if not os.environ.get("TORCHELASTIC_ERROR_FILE"):
        return
    from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

    ErrorHandler().record_exception(exc)


def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover - torch is a trainer dependency
        return False


def strategy(spec: DistributedSpec, world_size: int) -> str:
    """The effective strategy: ``single`` for one process; ``auto`` means DDP on several."""
    if world_size <= 1 and spec.strategy in ("auto", "ddp"):
        return "single"
    return "ddp" if spec.strategy == "auto" else spec.strategy


def deepspeed_config(spec: DistributedSpec) -> dict[str, Any]:
    """A DeepSpeed config whose ``auto`` values transformers fills from the TrainingArguments."""
    zero: dict[str, Any] = {
        "stage": spec.zero_stage,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if spec.zero_stage == 3:
        zero.update(
            {
                "stage3_prefetch_bucket_size": "auto",
                "stage3_param_persistence_threshold": "auto",
                "stage3_gather_16bit_weights_on_model_save": True,
            }
        )
    if spec.offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": _cuda_available()}
        if spec.zero_stage == 3:
            zero["offload_param"] = {"device": "cpu", "pin_memory": _cuda_available()}
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        # transformers builds a torch optimizer; keep it even with offload (DeepSpeedCPUAdam needs a compiler)
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }


def fsdp_args(spec: DistributedSpec) -> dict[str, Any]:
    return {
        "fsdp": "full_shard auto_wrap" + (" offload" if spec.offload else ""),
        # the layer class to wrap comes from the model's _no_split_modules; orig params keep LoRA's frozen mix legal
        "fsdp_config": {"use_orig_params": True},
    }


def training_args(
    spec: FineTuneJobSpec, world_size: int | None = None, cache_dir: str | None = None
) -> dict[str, Any]:
    """The TrainingArguments entries that select the distribution strategy for this worker.

    ``cache_dir`` (the runtime's model/data cache) also keeps DeepSpeed's CPU communication op, which DeepSpeed
    compiles with the system C++ compiler on first use: once per cache instead of once per pod."""
    world = world_size if world_size is not None else int(os.environ.get("WORLD_SIZE", "1"))
    chosen = strategy(spec.distributed, world)
    cpu = not _cuda_available()
    args: dict[str, Any] = {}
    if world > 1:
        args["ddp_backend"] = "gloo" if cpu else "nccl"
        # every collective (gloo and NCCL alike) fails after this long instead of waiting for a dead peer
        args["ddp_timeout"] = spec.distributed.collective_timeout_seconds
        if cpu and chosen != "deepspeed" and os.environ.get("WORLD_SIZE") == str(world):  # in a torchrun worker
            init_cpu_process_group(spec.distributed.collective_timeout_seconds)
    if chosen == "deepspeed" and cpu and world <= 1:
        from kubetune.trainer.logging import get_logger

        get_logger(__name__).warning(
            "spec.distributed.strategy deepspeed: one CPU process has nothing to shard; "
            "training without DeepSpeed (set NPROC_PER_NODE>1 or use GPUs)"
        )
    elif chosen == "deepspeed":
        if cpu:
            if cache_dir:
                os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(cache_dir, "torch_extensions"))
            init_deepspeed_on_cpu(spec.distributed.collective_timeout_seconds)
        args["deepspeed"] = deepspeed_config(spec.distributed)
    elif chosen == "fsdp":
        if cpu and world > 1:
            allow_fsdp_on_cpu()
        args.update(fsdp_args(spec.distributed))
    return args


def allow_fsdp_on_cpu() -> None:
    """Let accelerate run its FSDP2 path (``fully_shard``) on CPU workers over gloo.

    accelerate 1.15 turns an FSDP plugin into ``DistributedType.FSDP`` only for accelerator devices
    (``AcceleratorState.__init__``); on CPU it silently falls back to DDP. torch's FSDP2 itself shards
    on CPU with gloo (all-gather and reduce-scatter), so after accelerate's own initialisation we make
    the same promotion it makes for GPUs: the model then goes through the very ``fsdp2_prepare_model``
    and sharded checkpointing code a GPU run uses. Idempotent; only in CPU workers with strategy fsdp.
    """
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    init = AcceleratorState.__init__
    if getattr(init, "_kubetune_fsdp_on_cpu", False):
        return

    def __init__(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        init(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP

    __init__._kubetune_fsdp_on_cpu = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = __init__  # type: ignore[method-assign]


def init_cpu_process_group(timeout_seconds: int) -> None:
    """The gloo process group of a CPU worker, with the collective timeout, before transformers makes one.

    transformers 5.23 passes ``ddp_timeout`` to the process group only for accelerators
    (``TrainingArguments._setup_devices``); a CPU group would wait torch's default 30 minutes on a dead peer
    (measured: a node unplugged mid-run left the other blocked in ``all_gather`` well past a 60 s
    ``ddp_timeout``). accelerate reuses a group that already exists."""
    from datetime import timedelta

    import torch.distributed as dist

    if dist.is_available() and not dist.is_initialized():
        dist.init_process_group("gloo", timeout=timedelta(seconds=timeout_seconds))


def init_deepspeed_on_cpu(timeout_seconds: int = 1800) -> None:
    """DeepSpeed picks NCCL by default; on CPU its process group must be gloo (done before transformers asks)."""
    from datetime import timedelta

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    deepspeed.init_distributed(dist_backend="gloo", timeout=timedelta(seconds=timeout_seconds))


class PeersLost(TrainerError):
    """A collective operation failed because another process stopped answering (retryable: exit code 1)."""


# What gloo, NCCL and the c10d store say when a peer is gone: killed (connection closed/reset) or silent (timeout).
_LOST_PEER_SIGNS = (
    "timed out waiting",
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "socket timeout",
    "watchdog caught collective operation timeout",
    "nccl communicator was aborted",
    "connection refused",
    "no route to host",
)


def lost_peer_message(exc: BaseException, collective_timeout: int) -> str | None:
    """One clear line when ``exc`` means another process of the job is gone; None for any other failure."""
    import torch.distributed as dist

    text = str(exc)
    is_dist = isinstance(exc, getattr(dist, "DistError", ())) or any(s in text.lower() for s in _LOST_PEER_SIGNS)
    if not is_dist or not (dist.is_available() and dist.is_initialized()):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return (
        f"lost contact with the other processes of this job (world size {dist.get_world_size()}): a collective "
        f"operation failed or got no answer within spec.distributed.collectiveTimeoutSeconds={collective_timeout} s "
        f"- another node died, was preempted or was cut off; the next attempt resumes from the last complete "
        f"checkpoint ({first[:300]})"
    )


@contextlib.contextmanager
def lost_peers_as_error(spec: FineTuneJobSpec) -> Iterator[None]:
    """Turn a collective that failed because a peer is gone into :class:`PeersLost` with a message that says so."""
    try:
        yield
    except TrainerError:
        raise
    except Exception as exc:
        message = lost_peer_message(exc, spec.distributed.collective_timeout_seconds)
        if message is None:
            raise
        raise PeersLost(message) from exc


def sharded_parameters(model: Any) -> int:
    """How many parameter tensors this process holds only a shard of: FSDP2 ``DTensor`` parameters, DeepSpeed
    ZeRO-3 partitioned ones. 0 under DDP (every process holds every parameter); recorded in the manifest."""
    from torch.distributed.tensor import DTensor

    return sum(1 for p in model.parameters() if isinstance(p, DTensor) or hasattr(p, "ds_tensor"))
