"""Training metrics for Prometheus, exported by rank 0 only.

``TrainerMetrics`` owns the collectors (names from ``kubetune.api.metrics``, one sample per
job, labelled job/namespace/stage/method/model) on its own ``CollectorRegistry``;
``PrometheusCallback`` feeds it from transformers' callback events; ``serve`` starts the
HTTP endpoint on ``runtime.metricsPort``. The operator's progress poller and the Grafana
dashboard read the same names.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from transformers import TrainerCallback

from kubetune.api import metrics as names
from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.callbacks.log_values import as_float
from kubetune.trainer.callbacks.throughput import Throughput, count_parameters, flops_per_token, mfu, peak_flops
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)

DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def model_label(source: str) -> str:
    """A short model name for the ``model`` label: the repo id of hf:// / ms://, else the last path segment."""
    scheme, _, rest = source.partition("://")
    rest = rest.split("?", 1)[0].strip("/")
    if scheme in ("hf", "ms"):
        return rest
    return rest.rsplit("/", 1)[-1] or source


def job_labels(config: TrainerConfig) -> dict[str, str]:
    spec = config.spec
    return {
        "job": config.runtime.job_name,
        "namespace": config.runtime.namespace,
        "stage": str(spec.stage),
        "method": str(spec.method.type),
        "model": model_label(spec.model.source),
    }


class TrainerMetrics:
    """Every trainer collector of one run, bound to the run's labels."""

    def __init__(self, labels: Mapping[str, str], registry: CollectorRegistry | None = None) -> None:
        if set(labels) != set(names.TRAINER_LABELS):
            raise ValueError(f"metric labels must be exactly {names.TRAINER_LABELS}, got {sorted(labels)}")
        self.registry = registry if registry is not None else CollectorRegistry()
        self.labels = dict(labels)
        keys = list(names.TRAINER_LABELS)
        r = self.registry

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, keys + list(extra), registry=r)

        self.train_loss = gauge(names.TRAIN_LOSS, "Latest training loss (mean over the logging window).")
        self.eval_loss = gauge(names.EVAL_LOSS, "Latest evaluation loss.")
        self.learning_rate = gauge(names.LEARNING_RATE, "Current learning rate.")
        self.grad_norm = gauge(names.GRAD_NORM, "Gradient norm before clipping, latest logged value.")
        self.epoch = gauge(names.EPOCH, "Fractional epoch.")
        self.global_step = gauge(names.GLOBAL_STEP, "Optimizer steps done.")
        self.total_steps = gauge(names.TOTAL_STEPS, "Optimizer steps planned.")
        self.progress = gauge(names.PROGRESS_RATIO, "global_step / total_steps, 0..1.")
        self.eta = gauge(names.ETA_SECONDS, "Estimated seconds until training ends (recent step time x steps left).")
        self.tokens_per_second = gauge(names.TOKENS_PER_SECOND, "Non-padding input tokens per second, all ranks.")
        self.samples_per_second = gauge(names.SAMPLES_PER_SECOND, "Training samples per second, all ranks.")
        self.tokens = Counter(
            names.TOKENS_TOTAL.removesuffix("_total"),
            "Non-padding input tokens trained on, all ranks.",
            keys,
            registry=r,
        )
        self.memory_allocated = gauge(
            names.MEMORY_ALLOCATED_BYTES,
            "Memory held by tensors per device (cpu: resident set of the process).",
            ("device",),
        )
        self.memory_reserved = gauge(
            names.MEMORY_RESERVED_BYTES,
            "Memory reserved by the allocator per device (cpu: peak resident set).",
            ("device",),
        )
        self.mfu = gauge(names.MFU_RATIO, "Model FLOPs utilisation estimate, 0..1 (0 on CPU or unknown devices).")
        self.checkpoint_seconds = Histogram(
            names.CHECKPOINT_SECONDS, "Time to write one checkpoint.", keys, buckets=DURATION_BUCKETS, registry=r
        )
        self.upload_seconds = Histogram(
            names.UPLOAD_SECONDS, "Time to publish the artifact folder.", keys, buckets=DURATION_BUCKETS, registry=r
        )
        self.phase_gauge = gauge(names.PHASE, "1 for the trainer's current phase, 0 for the others.", ("phase",))
        self.memory_estimate = gauge(names.MEMORY_ESTIMATE_BYTES, "Estimated memory per GPU from the model config.")
        self.dataset_rows = gauge(
            names.DATASET_ROWS,
            "Rows of each dataset by state (read, valid, dropped, truncated).",
            ("dataset", "state"),
        )
        self.checkpoint_step = gauge(names.CHECKPOINT_LAST_STEP, "Step of the newest checkpoint written.")
        self.rollbacks = Counter(
            names.ROLLBACKS_TOTAL.removesuffix("_total"),
            "Divergence-guard rollbacks (spec.training.guard).",
            keys,
            registry=r,
        )
        self.diverged = gauge(
            names.DIVERGED,
            "1 from a divergence-guard rollback until `window` good steps followed it, by the rollback's reason.",
            ("reason",),
        )
        ProcessCollector(registry=r)

        # Children exist from the start, so every series is scrapeable (0) before the first step.
        # Loss, learning rate, grad norm and ETA appear with their first real value, not as a misleading 0.
        for metric in (
            self.epoch,
            self.global_step,
            self.total_steps,
            self.progress,
            self.tokens_per_second,
            self.samples_per_second,
            self.tokens,
            self.mfu,
            self.checkpoint_seconds,
            self.upload_seconds,
            self.rollbacks,
        ):
            metric.labels(**self.labels)
        for reason in names.GUARD_REASONS:  # 0 until a rollback: the series exist from the start
            self.bind(self.diverged, reason=reason).set(0)
        self.current_phase: str | None = None
        self._phase_started = time.monotonic()
        self.set_phase(names.PHASES[0])

    def bind(self, metric: Any, **extra: str) -> Any:
        return metric.labels(**self.labels, **extra)

    def set_phase(self, phase: str) -> None:
        if phase not in names.PHASES:
            raise ValueError(f"unknown trainer phase {phase!r}; expected one of {names.PHASES}")
        now = time.monotonic()
        if self.current_phase == "uploading" and phase != "uploading":
            self.bind(self.upload_seconds).observe(now - self._phase_started)
        for name in names.PHASES:
            self.bind(self.phase_gauge, phase=name).set(1 if name == phase else 0)
        self.current_phase = phase
        self._phase_started = now

    def set_facts(
        self, memory_estimate_gib: float | None = None, datasets: list[dict[str, Any]] | None = None
    ) -> None:
        """Run facts the operator copies into status (memoryEstimateGib, datasets)."""
        if memory_estimate_gib is not None:
            self.bind(self.memory_estimate).set(memory_estimate_gib * 2**30)
        for report in datasets or []:
            for state in ("rows", "valid", "dropped", "truncated"):
                self.bind(self.dataset_rows, dataset=report["name"], state="read" if state == "rows" else state).set(
                    report.get(state, 0)
                )

    def update_memory(self) -> None:
        for device, allocated, reserved in device_memory():
            self.bind(self.memory_allocated, device=device).set(allocated)
            self.bind(self.memory_reserved, device=device).set(reserved)


def device_memory() -> list[tuple[str, int, int]]:
    """(device, allocated, reserved) bytes for each local accelerator; the process RSS on CPU-only machines."""
    try:
        import torch

        if torch.cuda.is_available():
            return [
                (f"cuda:{i}", torch.cuda.memory_allocated(i), torch.cuda.memory_reserved(i))
                for i in range(torch.cuda.device_count())
            ]
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return [("mps", torch.mps.current_allocated_memory(), torch.mps.driver_allocated_memory())]
    except ImportError:
        pass
    return [("cpu", _rss_bytes(), _peak_rss_bytes())]


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def device_peak_flops() -> tuple[float, int]:
    """(peak FLOP/s of one device, devices in the job); (0, 1) on CPU."""
    try:
        import torch

        if torch.cuda.is_available():
            world = int(os.environ.get("WORLD_SIZE", "1"))
            return peak_flops(torch.cuda.get_device_name(0)), world
    except ImportError:
        pass
    return 0.0, 1


class PrometheusCallback(TrainerCallback):
    """Feeds ``TrainerMetrics`` from the Trainer's events (add it on rank 0 only)."""

    def __init__(
        self,
        metrics: TrainerMetrics,
        throughput: Throughput | None = None,
        peak: Callable[[], tuple[float, int]] = device_peak_flops,
    ) -> None:
        self.metrics = metrics
        self.throughput = throughput or Throughput()
        self._peak = peak
        self._flops_token = 0.0
        self._peak_device = 0.0
        self._devices = 1
        self._samples_per_step = 0
        self._tokens_seen = 0.0
        self._rollbacks = 0.0
        self._reasons: set[str] = set(names.GUARD_REASONS)
        self._mark = time.monotonic()

    # ---------------------------------------------------------------- events

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **_: Any) -> None:
        m = self.metrics
        if model is not None:
            self._flops_token = flops_per_token(*count_parameters(model))
        self._peak_device, self._devices = self._peak()
        self._samples_per_step = args.train_batch_size * args.gradient_accumulation_steps * max(args.world_size, 1)
        self._tokens_seen = float(state.num_input_tokens_seen or 0)
        m.bind(m.total_steps).set(state.max_steps)
        m.bind(m.global_step).set(state.global_step)
        self._progress(state)
        self.throughput.reset(state.global_step, self._tokens_seen, state.global_step * self._samples_per_step)
        m.update_memory()
        self._mark = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        m = self.metrics
        tokens = float(state.num_input_tokens_seen or 0)
        if tokens > self._tokens_seen:
            m.bind(m.tokens).inc(tokens - self._tokens_seen)
        self._tokens_seen = tokens
        self.throughput.update(state.global_step, tokens, state.global_step * self._samples_per_step)
        m.bind(m.global_step).set(state.global_step)
        m.bind(m.epoch).set(state.epoch or 0.0)
        tps = self.throughput.tokens_per_second()
        m.bind(m.tokens_per_second).set(tps)
        m.bind(m.samples_per_second).set(self.throughput.samples_per_second())
        m.bind(m.mfu).set(mfu(tps, self._flops_token, self._peak_device, self._devices))
        self._progress(state)
        m.update_memory()
        self._mark = time.monotonic()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        m = self.metrics
        logs = logs or {}
        for key, gauge in (
            ("loss", m.train_loss),
            ("learning_rate", m.learning_rate),
            ("grad_norm", m.grad_norm),
            ("eval_loss", m.eval_loss),
        ):
            value = as_float(logs.get(key))
            if value is not None:
                m.bind(gauge).set(value)  # NaN/Inf are exported as such: the alert rules look for them
        if "epoch" in logs and as_float(logs["epoch"]) is not None:
            m.bind(m.epoch).set(float(logs["epoch"]))
        self._guard(logs)
        self._mark = time.monotonic()

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, Any] | None = None, **_: Any
    ) -> None:
        value = as_float((metrics or {}).get("eval_loss"))
        if value is not None:
            self.metrics.bind(self.metrics.eval_loss).set(value)
        self._mark = time.monotonic()

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        # on_save fires right after the checkpoint is on disk; logging/eval in between reset the mark
        self.metrics.bind(self.metrics.checkpoint_seconds).observe(time.monotonic() - self._mark)
        self.metrics.bind(self.metrics.checkpoint_step).set(state.global_step)
        self._mark = time.monotonic()

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        m = self.metrics
        m.bind(m.global_step).set(state.global_step)
        m.bind(m.eta).set(0)
        m.bind(m.progress).set(
            1.0
            if state.max_steps and state.global_step >= state.max_steps
            else state.global_step / max(state.max_steps, 1)
        )
        m.update_memory()

    # ---------------------------------------------------------------- helpers

    def _guard(self, logs: dict[str, Any]) -> None:
        """The divergence guard's reports (kubetune.trainer.callbacks.guard) → rollbacks counter, diverged gauge."""
        m = self.metrics
        total = as_float(logs.get("guard_rollbacks"))
        if total is None:
            return
        if total > self._rollbacks:
            m.bind(m.rollbacks).inc(total - self._rollbacks)
            self._rollbacks = total
        diverged = as_float(logs.get("guard_diverged")) or 0.0
        reasons = [key.removeprefix("guard_reason_") for key in logs if key.startswith("guard_reason_")]
        self._reasons.update(reasons)
        for reason in self._reasons:  # one reason at a time: the latest rollback's
            m.bind(m.diverged, reason=reason).set(diverged if reason in reasons else 0.0)

    def _progress(self, state: Any) -> None:
        m = self.metrics
        total = state.max_steps or 0
        m.bind(m.progress).set(min(state.global_step / total, 1.0) if total > 0 else 0.0)
        eta = self.throughput.eta_seconds(state.global_step, total)
        if eta is not None:
            m.bind(m.eta).set(eta)


def serve(metrics: TrainerMetrics, port: int, addr: str = "0.0.0.0") -> Any:
    """Start the /metrics endpoint in a daemon thread; returns the server (call ``shutdown()``)."""
    try:
        server, _thread = start_http_server(port, addr=addr, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(
            f"runtime.metricsPort {port}: cannot listen on {addr}:{port} ({exc.strerror or exc}); "
            "pick a free port (kubetune run --metrics-port)"
        ) from exc
    log.info("Prometheus metrics on http://%s:%d/metrics", addr, port)
    return server
