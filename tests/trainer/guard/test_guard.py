"""The divergence guard (spec.training.guard): pure checks, the learning-rate cut, and real CPU runs with an
injected NaN and an injected loss spike (tiny random Llama, LoRA)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import TrainerCallback

from kubetune.api.conditions import EXIT_DIVERGED, NON_RETRYABLE_EXIT_CODES
from kubetune.trainer.callbacks.guard import (
    LOSS_SPIKE,
    NAN_GRAD_NORM,
    NAN_LOSS,
    cut_learning_rate,
    verdict,
)

ROOT = Path(__file__).resolve().parents[3]
finite = st.floats(min_value=0.01, max_value=1e4, allow_nan=False, allow_infinity=False)


@given(st.sampled_from([math.nan, math.inf, -math.inf]), st.lists(finite, max_size=30))
def test_non_finite_loss_is_always_caught(loss, recent):
    assert verdict(loss, 1.0, recent, spike_factor=5, window=2) == NAN_LOSS
    assert verdict(loss, 1.0, recent, spike_factor=5, window=2, spikes=False) == NAN_LOSS


@given(finite, st.sampled_from([math.nan, math.inf]))
def test_non_finite_grad_norm_is_caught(loss, norm):
    assert verdict(loss, norm, [], spike_factor=5, window=20) == NAN_GRAD_NORM


@given(st.lists(finite, min_size=1, max_size=40), st.floats(min_value=1.01, max_value=100), st.integers(2, 20))
def test_spike_is_relative_to_the_window_mean_and_waits_for_warm_up(recent, factor, window):
    mean = sum(recent[-window:]) / window if len(recent) >= window else None
    high = (mean or 1.0) * factor * 1.01
    got = verdict(high, 1.0, recent, spike_factor=factor, window=window)
    assert got == (LOSS_SPIKE if mean is not None else None)  # no spike check during warm-up
    if mean is not None:
        assert verdict(mean * factor * 0.99, 1.0, recent, spike_factor=factor, window=window) is None
        assert verdict(high, 1.0, recent, spike_factor=factor, window=window, spikes=False) is None


def test_learning_rate_cut_survives_the_schedule():
    import torch
    from transformers import get_cosine_schedule_with_warmup

    param = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([param], lr=1e-3)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=0, num_training_steps=100)
    sched.step()
    before = opt.param_groups[0]["lr"]
    assert cut_learning_rate(opt, sched, 0.5) == pytest.approx(before * 0.5)
    sched.step()
    sched.step()
    reference = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=5e-4)
    ref = get_cosine_schedule_with_warmup(reference, num_warmup_steps=0, num_training_steps=100)
    for _ in range(3):
        ref.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(reference.param_groups[0]["lr"])


def test_diverged_is_not_retried():
    assert EXIT_DIVERGED == 5 and EXIT_DIVERGED in NON_RETRYABLE_EXIT_CODES


# ---------------------------------------------------------------------------------------------------- real runs


class Inject(TrainerCallback):
    """Makes the loss of the given optimizer steps NaN (``nan``) or huge (``spike``) through the LM head's output."""

    def __init__(self, faults: dict[int, str]) -> None:
        self.faults = faults
        self.hook: Any = None
        self.fired: list[int] = []

    def on_step_begin(self, args, state, control, model=None, **_):
        step = state.global_step + 1
        kind = self.faults.get(step)
        if kind is None:
            return
        head = next(m for name, m in model.named_modules() if name.endswith("lm_head"))
        scale = math.nan if kind == "nan" else 300.0
        self.hook = head.register_forward_hook(lambda _m, _i, out: out * scale)
        self.fired.append(step)

    def on_pre_optimizer_step(self, args, state, control, **_):
        if self.hook is not None:
            self.hook.remove()
            self.hook = None


def _config(tmp_path: Path, model_dir: Path, guard: dict[str, Any], max_steps: int):
    from kubetune.api.trainer_config import RuntimeSpec, TrainerConfig
    from kubetune.api.v1alpha1 import FineTuneJobSpec

    shutil.copy(ROOT / "examples" / "data" / "identity.json", tmp_path / "identity.json")
    spec = FineTuneJobSpec.model_validate(
        {
            "model": {"source": f"file://{model_dir}"},
            "datasets": [{"name": "identity", "source": "file://identity.json"}],
            "method": {"type": "lora", "lora": {"rank": 4}},
            "training": {
                "maxSteps": max_steps,
                "batchSize": 4,
                "learningRate": 0.01,
                "cutoffLen": 96,
                "scheduler": "constant",
                "guard": guard,
            },
            "output": {"uri": "file://out"},
        }
    )
    runtime = RuntimeSpec(
        job_name="guard",
        output_uri=f"file://{tmp_path / 'out'}",
        work_dir=str(tmp_path),
        cache_dir=str(tmp_path / "cache"),
        scratch_dir=str(tmp_path / "scratch"),
    )
    return TrainerConfig(spec=spec, runtime=runtime)


@pytest.mark.slow
def test_nan_and_spike_are_rolled_back_and_the_run_finishes(tmp_path, tiny_model_dir):
    from prometheus_client import CollectorRegistry

    from kubetune.api import metrics as names
    from kubetune.trainer.callbacks.telemetry import Telemetry
    from kubetune.trainer.runner import run

    config = _config(tmp_path, tiny_model_dir, {"window": 2, "spikeFactor": 4, "maxRollbacks": 3}, max_steps=8)
    inject = Inject({3: "nan", 6: "spike"})
    registry = CollectorRegistry()
    with Telemetry(config, registry=registry) as telemetry:
        run(config, callbacks=[*telemetry.callbacks, inject], on_phase=telemetry.on_phase)
    assert inject.fired == [3, 6]

    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    rollbacks = manifest["guard"]["rollbacks"]
    assert [(r["step"], r["reason"]) for r in rollbacks] == [(3, "nan_loss"), (6, "loss_spike")]
    assert rollbacks[0]["loss"] is None and rollbacks[1]["loss"] > 4
    assert all(r["restored_step"] is not None for r in rollbacks)  # LoRA: in-memory snapshots restored
    assert rollbacks[1]["learning_rate"] == pytest.approx(0.01 * 0.25)
    assert manifest["metrics"]["guard_rollbacks"] == 2
    assert math.isfinite(manifest["metrics"]["train_loss"])
    history = [json.loads(line) for line in (tmp_path / "out" / "trainer_log.jsonl").read_text().splitlines()]
    losses = [h["loss"] for h in history if "loss" in h]
    assert losses and all(math.isfinite(x) and x < 50 for x in losses), losses  # the spike is not in the curve

    labels = {"job": "guard", "namespace": "default", "stage": "sft", "method": "lora", "model": tiny_model_dir.name}
    assert registry.get_sample_value(names.ROLLBACKS_TOTAL, labels) == 2
    assert registry.get_sample_value(names.DIVERGED, {**labels, "reason": "loss_spike"}) is not None

    from safetensors.torch import load_file

    weights = load_file(tmp_path / "out" / "adapter_model.safetensors")
    assert all(bool(t.isfinite().all()) for t in weights.values())


@pytest.mark.slow
def test_one_divergence_too_many_fails_with_exit_code_5(tmp_path, tiny_model_dir, monkeypatch):
    from kubetune.trainer import __main__ as entry

    config = _config(tmp_path, tiny_model_dir, {"maxRollbacks": 1}, max_steps=6)
    inject = Inject({2: "nan", 4: "nan"})
    path = tmp_path / "trainer.json"
    path.write_text(config.to_json(), encoding="utf-8")
    termination = tmp_path / "termination-log"
    monkeypatch.setenv("KUBETUNE_TERMINATION_LOG", str(termination))
    monkeypatch.setenv("KUBETUNE_METRICS_LINGER_SECONDS", "0")

    from kubetune.trainer import runner

    real_run = runner.run
    monkeypatch.setattr(
        runner,
        "run",
        lambda cfg, callbacks=None, on_phase=None: real_run(
            cfg, callbacks=[*(callbacks or []), inject], on_phase=on_phase
        ),
    )
    assert entry.main(["--config", str(path)]) == EXIT_DIVERGED
    assert inject.fired == [2, 4]
    message = termination.read_text()
    assert "diverged at step 4" in message and "maxRollbacks is 1" in message, message
    assert not (tmp_path / "out" / "manifest.json").exists()
