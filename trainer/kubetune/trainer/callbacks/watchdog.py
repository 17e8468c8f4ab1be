"""Hang watchdog (``spec.training.stallTimeoutSeconds``): a run that stops making optimizer steps ends, loudly.

Every rank runs one daemon thread. Each optimizer step (and each evaluation step, save and log) moves the
mark; when the mark is older than the timeout the thread dumps every Python thread's stack of this process
(``faulthandler.dump_traceback(all_threads=True)``), logs the dump's first lines, writes them to the pod's
termination message, records the failure for torchrun's launcher and ends the process with
``EXIT_STALLED`` (75). 75 is not in the Job's FailJob list, so the Job retries the pod, which resumes from the
last checkpoint. A rank blocked in a collective makes every rank stop stepping, so every rank dumps.

Timeout: ``stallTimeoutSeconds`` when set (from the start of training); else :func:`default_timeout`, i.e.
max(600 s, 20 × the median of the measured step times), armed once the first step is done (the first step
includes compilation and warm-up).
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from kubetune.api.conditions import EXIT_STALLED
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)

FLOOR_SECONDS = 600.0
STEP_MULTIPLE = 20.0
DUMP_LINES = 40  # of the stack dump, in the log and the termination message


def default_timeout(step_seconds: list[float]) -> float | None:
    """max(600, 20 × median step time); None before a step was measured. Pure."""
    if not step_seconds:
        return None
    return max(FLOOR_SECONDS, STEP_MULTIPLE * statistics.median(step_seconds))


def dump_stacks() -> str:
    """Every thread's Python stack of this process, as faulthandler writes it (works while the GIL is held
    elsewhere; the writing thread is listed too)."""
    with tempfile.TemporaryFile(mode="w+") as fh:
        faulthandler.dump_traceback(file=fh, all_threads=True)
        fh.seek(0)
        blocks = fh.read().strip("\n").split("\n\n")
    # the main thread (where training runs) first, the watchdog's own thread ("Current thread") last
    main = f"0x{threading.main_thread().ident:016x}"
    order = sorted(blocks, key=lambda block: (main not in block.split("\n", 1)[0], block.startswith("Current thread")))
    return "\n\n".join(order) + "\n"


def _exit(message: str) -> None:
    from kubetune.trainer.distributed import record_failure
    from kubetune.trainer.errors import Stalled, write_termination_message

    write_termination_message(message)
    with contextlib.suppress(Exception):  # the exit below must happen whatever the launcher's error file does
        record_failure(Stalled(message))
    os._exit(EXIT_STALLED)  # the stuck thread cannot be interrupted; the pod must end so the Job retries


class StallWatchdog(TrainerCallback):
    def __init__(
        self,
        timeout: float | None,
        *,
        poll: float | None = None,
        on_stall: Callable[[str], None] = _exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout = timeout
        self.poll = poll
        self.on_stall = on_stall
        self.clock = clock
        self.steps: deque[float] = deque(maxlen=50)
        self.step = 0
        self._mark = clock()
        self._step_started: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.fired: str | None = None

    # ---------------------------------------------------------------- events

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.step = state.global_step
        self._touch()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="kubetune-watchdog", daemon=True)
        self._thread.start()

    def on_step_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._step_started = self.clock()

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        now = self.clock()
        if self._step_started is not None:
            self.steps.append(now - self._step_started)
        self.step = state.global_step
        self._touch()

    def on_prediction_step(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self._touch()  # evaluation makes progress too

    on_evaluate = on_save = on_log = on_substep_end = on_prediction_step

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.stop()

    # ---------------------------------------------------------------- thread

    def stop(self) -> None:
        self._stop.set()

    def limit(self) -> float | None:
        return self.timeout if self.timeout is not None else default_timeout(list(self.steps))

    def _touch(self) -> None:
        self._mark = self.clock()

    def _watch(self) -> None:
        while not self._stop.wait(self.poll or max(0.2, min(30.0, (self.limit() or FLOOR_SECONDS) / 10))):
            limit = self.limit()
            idle = self.clock() - self._mark
            if limit is None or idle < limit:
                continue
            stacks = dump_stacks()
            head = "\n".join(stacks.splitlines()[:DUMP_LINES])
            rank = os.environ.get("RANK", "0")
            message = (
                f"stalled: rank {rank} made no optimizer step for {idle:.0f} s after step {self.step} "
                f"(limit {limit:.0f} s, spec.training.stallTimeoutSeconds); exit {EXIT_STALLED}, the Job "
                f"retries and resumes from the last checkpoint. Python stacks:\n{head}"
            )
            log.error("%s", message)
            self.fired = message
            self.on_stall(message)
            return


def install(trainer: Any, spec: Any) -> StallWatchdog:
    """Add the watchdog to ``trainer`` (every rank); stop it when training ends or fails."""
    watchdog = StallWatchdog(spec.training.stall_timeout_seconds)
    trainer.add_callback(watchdog)
    return watchdog
