"""One package per training stage, each with ``workflow.run_<stage>(ctx) -> StageResult``.

The registry imports a stage's workflow only when that stage runs (TRL trainers are heavy,
and experimental ones must not load unless asked for).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from kubetune.trainer.stages.base import RunContext, StageResult

STAGES: dict[str, str] = {
    "pt": "kubetune.trainer.stages.pt.workflow:run_pt",
    "sft": "kubetune.trainer.stages.sft.workflow:run_sft",
    "rm": "kubetune.trainer.stages.rm.workflow:run_rm",
    "dpo": "kubetune.trainer.stages.dpo.workflow:run_dpo",
    "kto": "kubetune.trainer.stages.kto.workflow:run_kto",
    "orpo": "kubetune.trainer.stages.orpo.workflow:run_orpo",
    "ppo": "kubetune.trainer.stages.ppo.workflow:run_ppo",
    "grpo": "kubetune.trainer.stages.grpo.workflow:run_grpo",
}


def get_stage(name: str) -> Callable[[RunContext], StageResult]:
    if name not in STAGES:
        raise ValueError(f"stage {name!r} is not available; known: {', '.join(sorted(STAGES))}")
    module, func = STAGES[name].split(":")
    return getattr(importlib.import_module(module), func)


__all__ = ["STAGES", "RunContext", "StageResult", "get_stage"]
