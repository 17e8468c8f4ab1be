"""Pure training-speed arithmetic: a sliding window of (time, step, tokens), ETA and MFU.

MFU (model FLOPs utilisation) follows the usual per-token estimate: a forward pass costs
2N FLOPs, a backward pass 4N for trainable weights (gradients for inputs and weights) and
2N for frozen ones (gradients for inputs only). Full fine-tuning is therefore 6N per token
and LoRA about 4N_base + 6N_lora. Attention FLOPs are left out, as in most published MFU
numbers. The peak is the dense bf16/fp16 tensor throughput of the device from a table;
on CPU (or an unknown device) MFU is reported as 0.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# Dense (no sparsity) bf16/fp16 tensor-core peak, FLOP/s per device, from the vendors' datasheets.
# Matched in order against the lower-cased torch.cuda.get_device_name(); the first hit wins.
GPU_PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("gb200", 2.5e15),
    ("b200", 2.25e15),
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("h800", 989e12),
    ("gh200", 989e12),
    ("a100", 312e12),
    ("a800", 312e12),
    ("l40s", 362e12),
    ("l40", 181e12),
    ("l4", 121e12),
    ("a10g", 70e12),
    ("a10", 125e12),
    ("a40", 150e12),
    ("a6000", 155e12),
    ("rtx 4090", 165e12),
    ("rtx 3090", 71e12),
    ("v100", 125e12),
    ("t4", 65e12),
    ("mi300x", 1307e12),
    ("mi250", 362e12),
)


def peak_flops(device_name: str | None) -> float:
    """Peak FLOP/s of one device by name; 0.0 for CPUs and devices not in the table."""
    if not device_name:
        return 0.0
    name = device_name.lower()
    for key, flops in GPU_PEAK_FLOPS:
        if key in name:
            return flops
    return 0.0


def count_parameters(model: Any) -> tuple[int, int]:
    """(all, trainable) parameters; DeepSpeed ZeRO-3 shards report their full size through ``ds_numel``."""
    total = trainable = 0
    for param in model.parameters():
        n = getattr(param, "ds_numel", None) or param.numel()
        # bitsandbytes 4-bit weights pack two values per byte-element
        if param.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
        if param.requires_grad:
            trainable += n
    return total, trainable


def flops_per_token(total_params: int, trainable_params: int) -> float:
    """6N for fully trained weights, 4N for frozen ones (forward + input gradients)."""
    frozen = max(total_params - trainable_params, 0)
    return 6.0 * trainable_params + 4.0 * frozen


def mfu(tokens_per_second: float, flops_token: float, peak_per_device: float, devices: int) -> float:
    """Achieved model FLOP/s over the summed peak of every device of the job."""
    if peak_per_device <= 0 or devices <= 0 or tokens_per_second <= 0:
        return 0.0
    return tokens_per_second * flops_token / (peak_per_device * devices)


@dataclass
class Throughput:
    """Rates over the last ``window`` optimizer steps, so a slow first step fades out."""

    window: int = 20
    clock: Callable[[], float] = time.monotonic
    _points: deque[tuple[float, int, float, float]] = field(default_factory=deque, init=False)

    def reset(self, step: int = 0, tokens: float = 0.0, samples: float = 0.0) -> None:
        self._points.clear()
        self._points.append((self.clock(), step, tokens, samples))

    def update(self, step: int, tokens: float, samples: float) -> None:
        if not self._points:
            self.reset(step, tokens, samples)
            return
        self._points.append((self.clock(), step, tokens, samples))
        while len(self._points) > self.window + 1:
            self._points.popleft()

    def _span(self) -> tuple[float, int, float, float] | None:
        if len(self._points) < 2:
            return None
        t0, s0, k0, n0 = self._points[0]
        t1, s1, k1, n1 = self._points[-1]
        dt = t1 - t0
        if dt <= 0:
            return None
        return dt, s1 - s0, k1 - k0, n1 - n0

    def tokens_per_second(self) -> float:
        span = self._span()
        return span[2] / span[0] if span else 0.0

    def samples_per_second(self) -> float:
        span = self._span()
        return span[3] / span[0] if span else 0.0

    def seconds_per_step(self) -> float | None:
        span = self._span()
        if not span or span[1] <= 0:
            return None
        return span[0] / span[1]

    def eta_seconds(self, step: int, total_steps: int) -> float | None:
        per_step = self.seconds_per_step()
        if per_step is None or total_steps <= 0:
            return None
        return max(total_steps - step, 0) * per_step


def format_rate(value: float) -> str:
    """1.2k, 35.0, 3.4M."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.1f}{unit}"
    return f"{value:.1f}"
