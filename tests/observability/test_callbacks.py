"""The trainer's telemetry pieces on their own: metrics on a CollectorRegistry, driven by real
transformers TrainingArguments/TrainerState; throughput/MFU arithmetic; the live view; curves;
tracker environment; the HTTP endpoint."""

from __future__ import annotations

import io
import json
import math
import socket
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from kubetune.api import metrics as names
from kubetune.api.metrics import format_duration
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.trainer.callbacks.throughput import (
    Throughput,
    flops_per_token,
    format_rate,
    mfu,
    peak_flops,
)
from kubetune.trainer.errors import ConfigError
from tests.conftest import job_doc

LABELS = {"job": "demo", "namespace": "ml", "stage": "sft", "method": "lora", "model": "SmolLM2-135M"}


def config(tmp_path: Path, **training: object) -> TrainerConfig:
    spec = {
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M"},
        "datasets": [{"name": "d", "source": "file://d.json"}],
        "training": training,
    }
    job = FineTuneJob.model_validate({**job_doc(spec, name="demo"), "metadata": {"name": "demo", "namespace": "ml"}})
    return TrainerConfig.from_job(
        job, output_uri="file:///tmp/out", cache_dir=str(tmp_path), scratch_dir=str(tmp_path / "scratch")
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(registry: CollectorRegistry, name: str, **extra: str) -> float | None:
    return registry.get_sample_value(name, {**LABELS, **extra})


# ------------------------------------------------------------------------------------------ arithmetic


def test_throughput_window_rates_and_eta():
    clock = Clock()
    tp = Throughput(window=3, clock=clock)
    tp.reset(step=0, tokens=0, samples=0)
    assert tp.tokens_per_second() == 0.0 and tp.eta_seconds(0, 10) is None
    for step in range(1, 5):
        clock.now += 2.0 if step == 1 else 1.0  # a slow first step drops out of the window
        tp.update(step, tokens=100.0 * step, samples=4.0 * step)
    assert tp.tokens_per_second() == pytest.approx(100.0)
    assert tp.samples_per_second() == pytest.approx(4.0)
    assert tp.seconds_per_step() == pytest.approx(1.0)
    assert tp.eta_seconds(4, 10) == pytest.approx(6.0)


def test_flops_and_mfu_follow_6n_and_4n_plus_6n_lora():
    assert flops_per_token(total_params=1_000, trainable_params=1_000) == 6_000  # full fine-tuning
    assert flops_per_token(total_params=1_010, trainable_params=10) == 4 * 1_000 + 6 * 10  # LoRA
    # 1e4 tokens/s x 6e9 FLOP/token over 2 devices at 1e14 = 30 %
    assert mfu(1e4, 6e9, 1e14, 2) == pytest.approx(0.3)
    assert mfu(1e4, 6e9, 0.0, 1) == 0.0  # CPU: no peak, MFU 0


@pytest.mark.parametrize(
    "name, flops",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H100 PCIe", 756e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("NVIDIA A10G", 70e12),
        ("NVIDIA L4", 121e12),
        ("NVIDIA L40S", 362e12),
        ("Tesla T4", 65e12),
        ("cpu", 0.0),
        (None, 0.0),
        ("Some Future Accelerator", 0.0),
    ],
)
def test_gpu_peak_table(name, flops):
    assert peak_flops(name) == flops


def test_formatting():
    assert [format_duration(s) for s in (None, float("nan"), 5, 65, 3720)] == ["?", "?", "5s", "1m05s", "1h02m"]
    assert [format_rate(r) for r in (12.34, 1234, 2.5e6)] == ["12.3", "1.2k", "2.5M"]


# ------------------------------------------------------------------------------------------ metrics


def test_trainer_metrics_labels_phases_and_upload_duration(tmp_path):
    from kubetune.trainer.callbacks.prometheus import TrainerMetrics, job_labels

    registry = CollectorRegistry()
    labels = job_labels(config(tmp_path))
    assert labels == {
        "job": "demo",
        "namespace": "ml",
        "stage": "sft",
        "method": "lora",
        "model": "HuggingFaceTB/SmolLM2-135M",
    }
    metrics = TrainerMetrics(LABELS, registry)
    assert sample(registry, names.PHASE, phase="fetching_model") == 1
    assert sample(registry, names.GLOBAL_STEP) == 0  # scrapeable before the first step
    assert sample(registry, names.TRAIN_LOSS) is None  # no misleading 0 before the first log
    metrics.set_phase("uploading")
    metrics.set_phase("done")
    assert [sample(registry, names.PHASE, phase=p) for p in names.PHASES] == [0, 0, 0, 0, 0, 0, 1, 0]
    assert sample(registry, names.UPLOAD_SECONDS + "_count") == 1
    with pytest.raises(ValueError, match="unknown trainer phase 'trainning'"):
        metrics.set_phase("trainning")
    with pytest.raises(ValueError, match="exactly"):
        TrainerMetrics({"job": "x"}, CollectorRegistry())


def test_model_label():
    from kubetune.trainer.callbacks.prometheus import model_label

    assert model_label("hf://Qwen/Qwen2.5-0.5B") == "Qwen/Qwen2.5-0.5B"
    assert model_label("file:///models/SmolLM2-135M-Instruct.Q4_1.gguf") == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert model_label("s3://bucket/models/llama/") == "llama"


def _state_and_args(tmp_path, max_steps=10):
    from transformers import TrainerState, TrainingArguments

    args = TrainingArguments(
        output_dir=str(tmp_path / "hf"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        use_cpu=True,
        report_to="none",
    )
    state = TrainerState()
    state.max_steps = max_steps
    return args, state


def test_prometheus_callback_feeds_every_gauge(tmp_path):
    import torch
    from transformers import TrainerControl

    from kubetune.trainer.callbacks.prometheus import PrometheusCallback, TrainerMetrics

    registry = CollectorRegistry()
    clock = Clock()
    callback = PrometheusCallback(
        TrainerMetrics(LABELS, registry), Throughput(clock=clock), peak=lambda: (1e9, 2)
    )  # a pretend 1 GFLOP/s device, two of them
    model = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 2))  # 110 + 22 parameters
    model[0].requires_grad_(False)
    args, state = _state_and_args(tmp_path)
    control = TrainerControl()

    callback.on_train_begin(args, state, control, model=model)
    assert sample(registry, names.TOTAL_STEPS) == 10
    for step in (1, 2, 3, 4):
        clock.now += 0.5
        state.global_step, state.num_input_tokens_seen, state.epoch = step, 250 * step, step / 5
        callback.on_step_end(args, state, control)
    callback.on_log(args, state, control, logs={"loss": 1.25, "learning_rate": 2e-4, "grad_norm": 0.7, "epoch": 0.8})
    assert sample(registry, names.GLOBAL_STEP) == 4
    assert sample(registry, names.TOKENS_TOTAL) == 1000
    assert sample(registry, names.TOKENS_PER_SECOND) == pytest.approx(500.0)
    assert sample(registry, names.SAMPLES_PER_SECOND) == pytest.approx(4 * 2 * 1 / 0.5)  # batch x accumulation
    assert sample(registry, names.PROGRESS_RATIO) == pytest.approx(0.4)
    assert sample(registry, names.ETA_SECONDS) == pytest.approx(6 * 0.5)
    assert sample(registry, names.EPOCH) == pytest.approx(0.8)
    assert sample(registry, names.TRAIN_LOSS) == 1.25
    assert sample(registry, names.LEARNING_RATE) == 2e-4
    assert sample(registry, names.GRAD_NORM) == 0.7
    # LoRA-like: 110 frozen (4N) + 22 trainable (6N) FLOPs per token, 500 tokens/s, 2 x 1e9 peak
    assert sample(registry, names.MFU_RATIO) == pytest.approx(500 * (4 * 110 + 6 * 22) / 2e9)
    assert sample(registry, names.MEMORY_ALLOCATED_BYTES, device="cpu") > 1e6  # resident set on CPU

    callback.on_evaluate(args, state, control, metrics={"eval_loss": 1.5})
    assert sample(registry, names.EVAL_LOSS) == 1.5
    clock.now += 1
    callback.on_save(args, state, control)
    assert sample(registry, names.CHECKPOINT_SECONDS + "_count") == 1

    callback.on_log(args, state, control, logs={"loss": float("nan")})
    assert math.isnan(sample(registry, names.TRAIN_LOSS))  # exported as NaN: the alert looks for it

    state.global_step = 10
    callback.on_train_end(args, state, control)
    assert sample(registry, names.PROGRESS_RATIO) == 1.0 and sample(registry, names.ETA_SECONDS) == 0


def test_metrics_endpoint_serves_and_reports_a_busy_port(tmp_path):
    from kubetune.trainer.callbacks.prometheus import TrainerMetrics, serve

    metrics = TrainerMetrics(LABELS, CollectorRegistry())
    server = serve(metrics, 0, "127.0.0.1")  # the port it bound: nothing can take it in between
    port = server.server_port
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert (
            f'{names.PHASE}{{job="demo",method="lora",model="SmolLM2-135M",namespace="ml",phase="fetching_model"'
            in body
        )
        assert names.TOKENS_TOTAL in body
        with pytest.raises(ConfigError, match=f"runtime.metricsPort {port}"):
            serve(TrainerMetrics(LABELS, CollectorRegistry()), port, "127.0.0.1")
    finally:
        server.shutdown()
        server.server_close()


def test_telemetry_phases_and_failure(tmp_path):
    from kubetune.trainer.callbacks.telemetry import Telemetry

    registry = CollectorRegistry()
    with pytest.raises(RuntimeError), Telemetry(config(tmp_path), registry=registry) as telemetry:
        assert [type(cb).__name__ for cb in telemetry.callbacks] == ["PrometheusCallback"]
        telemetry.on_phase("training")
        assert (
            registry.get_sample_value(
                names.PHASE, {**LABELS, "model": "HuggingFaceTB/SmolLM2-135M", "phase": "training"}
            )
            == 1
        )
        raise RuntimeError("boom")
    assert (
        registry.get_sample_value(names.PHASE, {**LABELS, "model": "HuggingFaceTB/SmolLM2-135M", "phase": "failed"})
        == 1
    )


# ------------------------------------------------------------------------------------------ live view


def test_live_view_prints_compact_lines_and_progress_file(tmp_path):
    from transformers import TrainerControl

    from kubetune.trainer.callbacks.live import LiveView, format_line

    assert (
        format_line(step=12, total=40, loss=2.34117, eval_loss=None, lr=1e-3, tokens_per_second=1234.0, eta=35)
        == "step 12/40  30% | loss 2.3412 | lr 1.0e-03 | 1.2k tok/s | ETA 35s"
    )
    clock = Clock()
    out = io.StringIO()
    view = LiveView(
        stream=out, progress_file=tmp_path / "p" / "progress.json", min_interval=0, throughput=Throughput(clock=clock)
    )
    args, state = _state_and_args(tmp_path, max_steps=4)
    control = TrainerControl()
    view.on_train_begin(args, state, control)
    for step in range(1, 5):
        clock.now += 1
        state.global_step, state.num_input_tokens_seen = step, 100 * step
        view.on_step_end(args, state, control)
        view.on_log(args, state, control, logs={"loss": 3.0 - step / 2, "learning_rate": 1e-4})
    view.on_log(args, state, control, logs={"eval_loss": 1.75})
    lines = out.getvalue().splitlines()
    assert lines[0] == "kubetune: step 1/4  25% | loss 2.5000 | lr 1.0e-04 | 100.0 tok/s | ETA 3s"
    assert lines[3] == "kubetune: step 4/4 100% | loss 1.0000 | lr 1.0e-04 | 100.0 tok/s | ETA 0s"
    assert lines[-1].startswith("kubetune: step 4/4 100% | loss 1.0000 | eval 1.7500")
    progress = json.loads((tmp_path / "p" / "progress.json").read_text())
    assert progress["step"] == 4 and progress["evalLoss"] == 1.75 and progress["tokensPerSecond"] == 100.0


# ------------------------------------------------------------------------------------------ curves


def test_curves_written_for_logged_keys_only(tmp_path):
    from kubetune.trainer.artifacts.curves import series, write_curves

    history = [{"loss": 3.0 - i * 0.1, "learning_rate": 1e-3 * (1 - i / 20), "step": i + 1} for i in range(20)]
    history.insert(5, {"loss": float("nan"), "step": 99})
    written = write_curves(history, tmp_path, title="demo")
    assert sorted(p.name for p in written) == ["training_learning_rate.png", "training_loss.png"]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert 99 not in series(history, "loss")[0]  # the NaN row is skipped, not plotted

    history.append({"eval_loss": 2.0, "step": 20})
    assert [p.name for p in write_curves(history, tmp_path)] == [
        "training_loss.png",
        "training_eval_loss.png",
        "training_learning_rate.png",
    ]


# ------------------------------------------------------------------------------------------ report_to


def test_tracker_environment_is_local_and_respects_the_pods_env(tmp_path, monkeypatch):
    from kubetune.trainer.callbacks.tracking import Trackers, tracking_env

    cfg = config(tmp_path, reportTo=["tensorboard", "mlflow", "wandb"])
    env = tracking_env(cfg, tmp_path / "tracking")
    assert env["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tracking" / "tensorboard")
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "tracking" / "mlruns").as_uri()
    assert env["WANDB_MODE"] == "offline" and env["MLFLOW_EXPERIMENT_NAME"] == "ml/demo"

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    trackers = Trackers(config(tmp_path, reportTo=["tensorboard", "mlflow"]))
    trackers.setup()
    import os

    try:
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.example:5000"  # a configured server wins
        assert os.environ["TENSORBOARD_LOGGING_DIR"].endswith("tracking/tensorboard")
    finally:
        trackers.restore_env()
    assert "TENSORBOARD_LOGGING_DIR" not in os.environ


def test_missing_tracker_package_is_a_config_error(tmp_path, monkeypatch):
    import importlib.util

    from kubetune.trainer.callbacks.tracking import check_installed

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"spec.training.reportTo: wandb .* pip install wandb"):
        check_installed(config(tmp_path, reportTo=["wandb"]))


# ------------------------------------------------------------------------------------------ the pod entry point


@pytest.mark.slow
def test_pod_entry_point_exports_the_failed_phase_before_exiting(tmp_path):
    """`kubetune-train` with a bad dataset: exit code 3/4, and /metrics shows phase failed while it lingers."""
    import os
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = config(tmp_path).model_copy(
        update={
            "runtime": config(tmp_path).runtime.model_copy(update={"metrics_port": port, "work_dir": str(tmp_path)})
        }
    )
    (tmp_path / "trainer.json").write_text(cfg.to_json())
    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "KUBETUNE_METRICS_LINGER_SECONDS": "5",
        "KUBETUNE_TERMINATION_LOG": str(tmp_path / "term"),
        "PYTHONPATH": os.pathsep.join([str(root / "operator"), str(root / "trainer")]),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune.trainer", "--config", str(tmp_path / "trainer.json")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    failed = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and failed is None:
            try:
                body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if 'phase="failed",stage="sft"} 1.0' in body:
                    failed = body
            except OSError:
                if proc.poll() is not None:
                    break
            time.sleep(0.3)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert failed is not None, stderr[-3000:]
    assert proc.returncode in (3, 4), stderr[-3000:]  # bad config / bad data: not retried by the Job
    assert 'phase="training"' in failed and 'phase="training",stage="sft"} 0.0' in failed
    assert "d.json" in (tmp_path / "term").read_text()  # the reason, for the FineTuneJob's status
