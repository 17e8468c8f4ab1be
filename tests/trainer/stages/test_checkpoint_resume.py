"""Preemption: SIGTERM mid-run saves a complete checkpoint and exits 143; the next start resumes from it
(ignoring an incomplete one) and finishes with the same total number of steps."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest

from kubetune.trainer.stages.resume import MARKER, complete_checkpoints
from tests.trainer.stages.helpers import ROOT, history, manifest, tiny_job
from tests.trainer.stages.test_distributed import train, trainer_config

pytestmark = pytest.mark.slow
TOTAL = 16


def test_sigterm_saves_and_restart_resumes(tmp_path, tiny_model_dir, cache_dir):
    name = f"resume-{uuid.uuid4().hex[:8]}"
    job = tiny_job(
        tmp_path,
        tiny_model_dir,
        "sft",
        "sft",
        name=name,
        training={"maxSteps": TOTAL, "batchSize": 4, "cutoffLen": 64},
        checkpointing={"everySteps": 3, "keep": 2},
    )
    config = trainer_config(job, cache_dir)
    work_dir = cache_dir / "runs" / "default" / name / "trainer"
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer'}:{ROOT}",
        "OMP_NUM_THREADS": "1",
        "KUBETUNE_TERMINATION_LOG": str(tmp_path / "termination-log"),
        "KUBETUNE_METRICS_LINGER_SECONDS": "0",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kubetune.trainer", "--config", str(config)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not (work_dir / "checkpoint-3" / MARKER).exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "no checkpoint after 300 s"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-3000:]
    assert "SIGTERM" in (tmp_path / "termination-log").read_text()
    saved = complete_checkpoints(work_dir)
    assert saved, "SIGTERM must leave a complete checkpoint"
    stopped_at = int(saved[-1].name.split("-")[1])
    assert 3 <= stopped_at < TOTAL
    assert len(saved) <= 2  # keep: 2
    assert not (tmp_path / "out" / "manifest.json").exists()  # nothing published for a preempted run
    (work_dir / f"checkpoint-{stopped_at + 1}").mkdir()  # a save that was killed half-way: no marker

    proc2 = train(config, {})
    assert proc2.returncode == 0, (proc2.stdout + proc2.stderr)[-3000:]
    metrics = manifest(tmp_path / "out")["metrics"]
    assert metrics["resumed_from_step"] == stopped_at
    assert metrics["global_step"] == TOTAL
    steps = [h["step"] for h in history(tmp_path / "out") if "loss" in h]
    assert steps == list(range(1, TOTAL + 1)), steps  # the log runs on from the saved step, nothing repeated
    assert complete_checkpoints(work_dir) == []  # a finished job leaves no checkpoint to resume from
    assert json.loads((tmp_path / "out" / "manifest.json").read_text())["config"]["checkpointing"]["everySteps"] == 3
    shutil.rmtree(work_dir.parent, ignore_errors=True)  # this run's scratch in the shared cache
