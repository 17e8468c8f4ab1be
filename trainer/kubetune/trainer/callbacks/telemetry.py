"""Telemetry: everything a run reports while it trains, wired once for the pod and for `kubetune run`.

    with Telemetry(config, live=True) as telemetry:
        run(config, callbacks=telemetry.callbacks, on_phase=telemetry.on_phase)

Rank 0 exports Prometheus metrics (when ``runtime.metricsPort`` is set), prints the live
view (``live=True``) and publishes the experiment trackers' files; other ranks get no
callbacks and ignore phases.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TextIO

from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.logging import get_logger, is_main

log = get_logger(__name__)
PREEMPTED_EXIT_CODE = 143


class Telemetry:
    def __init__(
        self,
        config: TrainerConfig,
        *,
        live: bool = False,
        metrics_addr: str = "0.0.0.0",
        stream: TextIO | None = None,
        linger_seconds: float = 0.0,
        registry: Any = None,
    ) -> None:
        from kubetune.trainer.callbacks.tracking import Trackers

        self.config = config
        self.main = is_main()
        self.metrics_addr = metrics_addr
        self.linger_seconds = linger_seconds
        self.trackers = Trackers(config)
        self.callbacks: list[Any] = []
        self.metrics = None
        self.server = None
        self.live = None
        if not self.main:
            return
        if config.runtime.metrics_port is not None or registry is not None:
            from kubetune.trainer.callbacks.prometheus import PrometheusCallback, TrainerMetrics, job_labels

            self.metrics = TrainerMetrics(job_labels(config), registry)
            self.callbacks.append(PrometheusCallback(self.metrics))
        if live or config.runtime.progress_file:
            from kubetune.trainer.callbacks.live import LiveView

            self.live = LiveView(stream=stream if live else _Null(), progress_file=config.runtime.progress_file)
            self.callbacks.append(self.live)

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> Self:
        if self.main:
            self.trackers.setup()
        if self.metrics is not None and self.config.runtime.metrics_port is not None:
            from kubetune.trainer.callbacks.prometheus import serve

            self.server = serve(self.metrics, self.config.runtime.metrics_port, self.metrics_addr)
        return self

    def on_phase(self, phase: str, **facts: Any) -> None:
        if not self.main:
            return
        if facts and self.metrics is not None:
            self.metrics.set_facts(**facts)
        if phase == "saving":
            # before the runner writes the manifest: the tracker files become part of the artifact
            artifact_dir = Path(self.config.runtime.scratch_dir) / "artifact"
            copied = self.trackers.publish(artifact_dir)
            if copied:
                log.info("experiment tracker logs: %s", ", ".join(f"logs/{name}" for name in copied))
        if self.metrics is not None:
            self.metrics.set_phase(phase)

    def close(self, failed: bool = False) -> None:
        if failed:
            self.on_phase("failed")
        if self.server is not None:
            if self.linger_seconds > 0:  # let Prometheus scrape the final phase before the pod exits
                time.sleep(self.linger_seconds)
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.trackers.restore_env()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # a preempted run (SIGTERM, exit code 143) saved a checkpoint and will resume: not a failure
        self.close(failed=exc is not None and getattr(exc, "exit_code", None) != PREEMPTED_EXIT_CODE)


class _Null:
    def write(self, _text: str) -> int:
        return 0

    def flush(self) -> None:
        pass
