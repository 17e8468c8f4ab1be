"""Resolve ``training.attention`` and ``training.kernels`` against this machine, and apply them.

:func:`resolve` is pure (the device and the importable modules are passed in) so the choice of ``auto``
and every refusal is unit-tested without a GPU; :func:`probe` reads them off the running process.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.kernels import REQUIREMENTS
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)
AUTO_ORDER = ("flash_attention_3", "flash_attention_2")


@dataclass(frozen=True)
class Device:
    """What the kernels care about: is there a CUDA GPU, and its compute capability."""

    cuda: bool
    capability: tuple[int, int] | None = None
    name: str = "cpu"


@dataclass(frozen=True)
class Kernels:
    attention: str
    kernels: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    def to_manifest(self) -> dict[str, Any]:
        return {"attention": self.attention, "kernels": list(self.kernels)}


def _usable(name: str, device: Device, installed: frozenset[str]) -> str | None:
    """None when ``name`` can run here, else why not (one clause)."""
    need = REQUIREMENTS[name]
    if need.cuda and not device.cuda:
        return "needs an NVIDIA GPU and this process sees none"
    if (
        need.cuda
        and device.capability is not None
        and not (need.min_capability <= device.capability <= need.max_capability)
    ):
        cap = ".".join(map(str, device.capability))
        return f"runs on {need.hardware}, not on {device.name} (compute capability {cap}); use sdpa or auto"
    if need.module and need.module not in installed:
        return f"needs the {need.module} package, which this image lacks: {need.install}"
    return None


def resolve(
    attention: str, kernels: list[str] | tuple[str, ...], device: Device, installed: frozenset[str]
) -> Kernels:
    """The attention implementation and kernels to use, or a ConfigError naming the field and what to do."""
    notes: list[str] = []
    if attention == "auto":
        chosen = next((name for name in AUTO_ORDER if _usable(name, device, installed) is None), "sdpa")
        if device.cuda and chosen == "sdpa":
            notes.append(
                "FlashAttention is not installed in this image; training uses PyTorch SDPA "
                "(set training.attention to silence this, or install flash-attn for more speed)"
            )
    else:
        why = _usable(attention, device, installed)
        if why:
            raise ConfigError(f"training.attention: {attention} {why}")
        chosen = attention
    for i, name in enumerate(kernels):
        why = _usable(name, device, installed)
        if why:
            raise ConfigError(f"training.kernels[{i}]: {name} {why}")
    return Kernels(attention=chosen, kernels=tuple(kernels), notes=tuple(notes))


def probe() -> tuple[Device, frozenset[str]]:
    """This process's device and which optional kernel packages are importable (without importing them)."""
    import torch

    if torch.cuda.is_available():
        device = Device(
            cuda=True,
            capability=tuple(torch.cuda.get_device_capability(0)),  # type: ignore[arg-type]
            name=torch.cuda.get_device_name(0),
        )
    else:
        device = Device(cuda=False)
    modules = {r.module for r in REQUIREMENTS.values() if r.module}
    installed = frozenset(m for m in modules if importlib.util.find_spec(m) is not None)
    return device, installed


def resolve_for_training(training: Any) -> Kernels:
    device, installed = probe()
    chosen = resolve(training.attention, list(training.kernels), device, installed)
    for note in chosen.notes:
        log.warning(note)
    return chosen


def apply_liger(model: Any) -> None:
    """Swap in Liger's fused RMSNorm, RoPE, SwiGLU and linear cross-entropy for the model's architecture."""
    from liger_kernel.transformers import _apply_liger_kernel_to_instance

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    _apply_liger_kernel_to_instance(model=base)
