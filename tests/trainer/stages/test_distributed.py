"""Two worker processes on CPU (gloo) through `kubetune-train`'s own launcher: DDP, DeepSpeed ZeRO-2 and ZeRO-3
with CPU offload. The adapter saved from the sharded run must load back with peft."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from kubetune.api.validation import load_jobs
from kubetune.trainer.local import local_config
from tests.trainer.stages.helpers import ROOT, losses, manifest, tiny_job

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A port free a moment ago, for torchrun's MASTER_PORT (it must be named up front): see ``train_on_a_free_port``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def trainer_config(job_file: Path, cache_dir: Path) -> Path:
    (job,) = load_jobs(job_file)
    path = job_file.with_name("trainer.json")
    path.write_text(local_config(job, job_file, cache_dir=cache_dir).to_json(), encoding="utf-8")
    return path


def train(config: Path, env: dict[str, str], timeout: float = 600) -> subprocess.CompletedProcess[str]:
    full = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer'}:{ROOT}",
        "KUBETUNE_TERMINATION_LOG": str(config.with_name("termination-log")),
        "KUBETUNE_METRICS_LINGER_SECONDS": "0",
        "OMP_NUM_THREADS": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "kubetune.trainer", "--config", str(config)],
        check=False,
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=config.parent,
    )


def port_taken(log: str) -> bool:
    """torchrun's rendezvous store could not bind MASTER_PORT (c10d: EADDRINUSE)."""
    return "EADDRINUSE" in log or "address already in use" in log.lower()


def train_on_a_free_port(config: Path, env: dict[str, str], tries: int = 3) -> subprocess.CompletedProcess[str]:
    """``train`` with a fresh MASTER_PORT, once more on another when a process took it since free_port()."""
    for _ in range(tries):
        proc = train(config, {**env, "MASTER_PORT": str(free_port())})
        if proc.returncode == 0 or not port_taken(proc.stdout + proc.stderr):
            break
    return proc


@pytest.mark.parametrize(
    "distributed",
    [
        {"strategy": "ddp"},
        {"strategy": "deepspeed", "zeroStage": 2},
        {"strategy": "deepspeed", "zeroStage": 3, "offload": True},
    ],
    ids=["ddp", "deepspeed-zero2", "deepspeed-zero3-offload"],
)
def test_two_processes_on_cpu(tmp_path, tiny_model_dir, cache_dir, distributed):
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "sft",
        "sft",
        name=f"dist-{distributed['strategy']}",
        distributed=distributed,
        training={"maxSteps": 3, "batchSize": 2},
    )
    proc = train_on_a_free_port(trainer_config(job, cache_dir), {"NPROC_PER_NODE": "2"})
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "launching 1 x 2 workers" in log
    out = tmp_path / "out"
    values = losses(out)
    data = manifest(out)
    assert data["metrics"]["global_step"] == 3, data["metrics"]
    # 2 ranks x batch 2 = 4 rows per step: an epoch of the 30 rows is 8 steps (7.5), not 15 as on one rank
    assert data["metrics"]["epoch"] == pytest.approx(3 / 7.5, abs=0.05), data["metrics"]
    assert values[-1] < values[0], values
    expected = f"deepspeed-zero{distributed['zeroStage']}" if distributed["strategy"] == "deepspeed" else "ddp"
    assert (data["metrics"]["distributed"], data["metrics"]["world_size"]) == (expected, 2), data["metrics"]
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), out)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained weights, not an empty ZeRO-3 shard
