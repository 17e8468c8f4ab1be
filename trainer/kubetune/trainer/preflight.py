"""Checks that run after the model's config.json is local and before any weight is loaded."""

from __future__ import annotations

import json
from pathlib import Path

from kubetune.api.memory import ModelShape, estimate_for_spec, fit_problem
from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)


def device_memory_gib() -> float | None:
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_properties(0).total_memory / 2**30


def check_fit(config: TrainerConfig, model_dir: Path) -> float | None:
    """Estimate memory per GPU from the real model config; fail early when it cannot fit. Returns GiB."""
    path = model_dir / "config.json"
    if not path.exists():
        return None
    try:
        shape = ModelShape.from_config(json.loads(path.read_text(encoding="utf-8")))
    except (KeyError, TypeError, ValueError) as exc:
        log.info("no GPU-fit estimate for this architecture (%s)", exc)
        return None
    spec = config.spec
    est = estimate_for_spec(spec, shape)
    log.info("model: %.0fM parameters; memory estimate %s", shape.parameters / 1e6, est.describe())
    problem = fit_problem(spec, shape)
    if problem:
        raise ConfigError(f"spec.resources.gpuType: {problem}")
    capacity = device_memory_gib()
    if capacity is not None and spec.resources.gpus_per_node > 0 and est.total_gib > capacity:
        raise ConfigError(
            f"spec.resources: the job needs {est.describe()}, more than this GPU's {capacity:.0f} GiB; "
            "use method qlora, gradientCheckpointing, ZeRO-3 or more GPUs"
        )
    return round(est.total_gib, 2)
