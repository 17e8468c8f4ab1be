"""The live view of `kubetune run` and of a pod: step, loss, eval loss, lr, tokens/s and ETA.

On a terminal it is one progress bar updated in place (like the Hugging Face Trainer's, which kubetune
turns off); anywhere else (a pod's log, a pipe, a file) one plain line per logging step.

It also writes ``runtime.progressFile`` (a small JSON with the same numbers) when set, so
another process can follow a run without scraping the metrics endpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from transformers import TrainerCallback

from kubetune.api.metrics import format_duration
from kubetune.trainer.callbacks.log_values import as_float
from kubetune.trainer.callbacks.throughput import Throughput, format_rate


def format_line(
    *,
    step: int,
    total: int,
    loss: float | None,
    eval_loss: float | None,
    lr: float | None,
    tokens_per_second: float,
    eta: float | None,
) -> str:
    """``step 12/40  30% | loss 2.3412 | eval 2.1007 | lr 1.0e-03 | 1.2k tok/s | ETA 35s``"""
    pct = f"{100 * step / total:3.0f}%" if total > 0 else "  ?%"
    parts = [f"step {step}/{total or '?'} {pct}"]
    if loss is not None:
        parts.append(f"loss {loss:.4f}")
    if eval_loss is not None:
        parts.append(f"eval {eval_loss:.4f}")
    if lr is not None:
        parts.append(f"lr {lr:.1e}")
    parts.append(f"{format_rate(tokens_per_second)} tok/s")
    parts.append(f"ETA {format_duration(eta)}")
    return " | ".join(parts)


class LiveView(TrainerCallback):
    """Prints progress lines to ``stream`` at most every ``min_interval`` seconds (and always the last)."""

    def __init__(
        self,
        stream: TextIO | None = None,
        progress_file: str | os.PathLike[str] | None = None,
        min_interval: float = 1.0,
        throughput: Throughput | None = None,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.progress_file = Path(progress_file) if progress_file else None
        self.min_interval = min_interval
        self.throughput = throughput or Throughput()
        self.loss: float | None = None
        self.eval_loss: float | None = None
        self.lr: float | None = None
        self._last_print = 0.0
        self.lines: list[str] = []
        self._bar: Any = None
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False

    def on_train_begin(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.throughput.reset(state.global_step, float(state.num_input_tokens_seen or 0))

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.throughput.update(state.global_step, float(state.num_input_tokens_seen or 0), 0.0)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **_: Any) -> None:
        logs = logs or {}
        self.loss = _number(logs.get("loss"), self.loss)
        self.eval_loss = _number(logs.get("eval_loss"), self.eval_loss)
        self.lr = _number(logs.get("learning_rate"), self.lr)
        self._show(state, force=state.global_step >= state.max_steps > 0)

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.lines and not self.lines[-1].startswith(f"step {state.global_step}/"):
            self._show(state, force=True)
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def snapshot(self, state: Any) -> dict[str, Any]:
        total = state.max_steps or 0
        return {
            "step": state.global_step,
            "totalSteps": total,
            "epoch": state.epoch,
            "percent": round(100 * state.global_step / total, 2) if total else None,
            "loss": self.loss,
            "evalLoss": self.eval_loss,
            "learningRate": self.lr,
            "tokensPerSecond": round(self.throughput.tokens_per_second(), 2),
            "etaSeconds": self.throughput.eta_seconds(state.global_step, total),
            "eta": format_duration(self.throughput.eta_seconds(state.global_step, total)),
        }

    def _show(self, state: Any, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_print < self.min_interval:
            return
        self._last_print = now
        snap = self.snapshot(state)
        line = format_line(
            step=snap["step"],
            total=snap["totalSteps"],
            loss=self.loss,
            eval_loss=self.eval_loss,
            lr=self.lr,
            tokens_per_second=snap["tokensPerSecond"],
            eta=snap["etaSeconds"],
        )
        if self.lines and self.lines[-1] == line:  # the Trainer's final summary log repeats the last step
            return
        self.lines.append(line)
        if self.tty:
            self._draw(snap, line)
        else:
            print(f"kubetune: {line}", file=self.stream, flush=True)
        if self.progress_file is not None:
            tmp = self.progress_file.with_name(f".{self.progress_file.name}.tmp")
            tmp.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(snap, allow_nan=True), encoding="utf-8")
            tmp.replace(self.progress_file)

    def _draw(self, snap: dict[str, Any], line: str) -> None:
        """One bar, redrawn in place: ``kubetune: 30%|███      | 12/40 loss 2.3412 | lr 1.0e-03 | 1.2k tok/s | ETA 35s``."""
        from tqdm import tqdm

        total = snap["totalSteps"] or None
        if self._bar is None:
            try:
                columns = os.get_terminal_size(self.stream.fileno()).columns
            except (AttributeError, OSError, ValueError):
                columns = 0
            self._bar = tqdm(
                total=total,
                file=self.stream,
                desc="kubetune",
                ncols=columns if columns >= 60 else 120,
                leave=True,
                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix}",
            )
        self._bar.n = snap["step"]
        self._bar.set_postfix_str(line.split(" | ", 1)[1] if " | " in line else "", refresh=False)
        self._bar.refresh()


def _number(value: Any, default: float | None) -> float | None:
    number = as_float(value)
    return default if number is None else number
