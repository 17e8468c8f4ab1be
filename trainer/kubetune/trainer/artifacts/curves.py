"""Training curves as PNG next to the adapter: loss, eval loss and learning rate over steps.

Drawn from the Trainer's ``log_history`` with matplotlib's Agg backend (no display needed).
The runner calls ``write_curves`` before it builds the manifest, so the images are listed
and hashed like every other file of the artifact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# file name → (log key, title, y label)
CURVES: dict[str, tuple[str, str, str]] = {
    "training_loss.png": ("loss", "training loss", "loss"),
    "training_eval_loss.png": ("eval_loss", "evaluation loss", "loss"),
    "training_learning_rate.png": ("learning_rate", "learning rate", "learning rate"),
}


def series(log_history: Iterable[Mapping[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one logged key, skipping entries without it and non-finite values."""
    steps: list[int] = []
    values: list[float] = []
    for entry in log_history:
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            steps.append(int(entry.get("step", len(steps))))
            values.append(float(value))
    return steps, values


def smooth(values: list[float], weight: float = 0.6) -> list[float]:
    """TensorBoard-style exponential moving average (bias-corrected), to show the trend under noisy loss."""
    out, last = [], 0.0
    for i, value in enumerate(values, start=1):
        last = weight * last + (1 - weight) * value
        out.append(last / (1 - weight**i))
    return out


def write_curves(log_history: list[dict[str, Any]], out_dir: Path, *, title: str = "") -> list[Path]:
    """Write one PNG per curve that has at least one point; returns the files written."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    written = []
    for filename, (key, label, ylabel) in CURVES.items():
        steps, values = series(log_history, key)
        if not steps:
            continue
        fig = Figure(figsize=(6.4, 4.0), dpi=100)
        ax = fig.add_subplot()
        marker = "o" if len(steps) < 30 else None
        ax.plot(
            steps,
            values,
            color="#1f77b4",
            alpha=0.45 if len(values) >= 5 else 1.0,
            marker=marker,
            markersize=3,
            label="raw" if len(values) >= 5 else label,
        )
        if key.endswith("loss") and len(values) >= 5:
            ax.plot(steps, smooth(values), color="#1f77b4", linewidth=2, label="smoothed")
            ax.legend(loc="upper right")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: {label}" if title else label)
        ax.grid(True, alpha=0.3)
        if key == "learning_rate":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        fig.tight_layout()
        path = out_dir / filename
        fig.savefig(path, format="png", metadata={"Software": None})  # no matplotlib version: reproducible bytes
        written.append(path)
    return written
