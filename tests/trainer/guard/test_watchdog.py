"""The hang watchdog (spec.training.stallTimeoutSeconds): the default timeout, and a process whose training
loop blocks (one rank stuck in a collective, here a callback that sleeps) is dumped and exits with code 75."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.api.conditions import EXIT_STALLED, NON_RETRYABLE_EXIT_CODES
from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.trainer.callbacks.watchdog import FLOOR_SECONDS, StallWatchdog, default_timeout

ROOT = Path(__file__).resolve().parents[3]


@given(st.lists(st.floats(min_value=0.001, max_value=3600, allow_nan=False), min_size=1, max_size=60))
def test_default_timeout_scales_with_the_median_step(steps):
    limit = default_timeout(steps)
    assert limit == max(FLOOR_SECONDS, 20 * statistics.median(steps))


def test_no_default_before_a_step_and_75_is_retried():
    assert default_timeout([]) is None
    assert StallWatchdog(None).limit() is None  # armed only once the first step is measured
    assert EXIT_STALLED == 75 and EXIT_STALLED not in NON_RETRYABLE_EXIT_CODES
    assert (
        FineTuneJobSpec.model_validate(
            {
                "model": {"source": "hf://a/b"},
                "datasets": [{"name": "d", "source": "file://d.json"}],
                "training": {"stallTimeoutSeconds": 5},
            }
        ).training.stall_timeout_seconds
        == 5
    )


def test_progress_keeps_it_quiet():
    now = [0.0]
    dog = StallWatchdog(10, poll=3600, clock=lambda: now[0], on_stall=lambda m: None)

    class S:
        global_step = 0

    dog.on_train_begin(None, S, None)
    try:
        for step in range(1, 6):
            now[0] += 8
            S.global_step = step
            dog.on_step_end(None, S, None)
            assert now[0] - dog._mark < dog.limit()
        now[0] += 11
        assert now[0] - dog._mark >= dog.limit()
    finally:
        dog.stop()


BLOCKED = textwrap.dedent("""
    import sys, time, threading
    from kubetune.trainer.callbacks.watchdog import StallWatchdog

    class State:
        global_step = 0

    def blocked_in_all_reduce():  # stands for a rank whose peer never joins the collective
        time.sleep(600)

    dog = StallWatchdog(float(sys.argv[1]), poll=0.2)
    dog.on_train_begin(None, State, None)
    dog.on_step_begin(None, State, None)
    State.global_step = 1
    dog.on_step_end(None, State, None)
    blocked_in_all_reduce()
    print("not reached")
""")


@pytest.mark.parametrize("rank", ["0", "1"])
def test_a_blocked_rank_is_dumped_and_exits_75(tmp_path, rank):
    termination = tmp_path / "termination-log"
    env = {
        **os.environ,
        "KUBETUNE_TERMINATION_LOG": str(termination),
        "RANK": rank,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", BLOCKED, "2"], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert proc.returncode == EXIT_STALLED, proc.stderr
    assert "not reached" not in proc.stdout
    message = termination.read_text()
    assert f"stalled: rank {rank} made no optimizer step" in message and "after step 1" in message, message
    assert "blocked_in_all_reduce" in message  # the stuck frame is in the pod's termination message
    assert "blocked_in_all_reduce" in proc.stderr  # and in the log


REAL_RUN = textwrap.dedent("""
    import sys, time
    from transformers import TrainerCallback
    from kubetune.trainer import __main__ as entry, runner

    class SleepsInStep(TrainerCallback):  # rank 0 stuck at step 2, as if its peer never joined an all-reduce
        def on_step_begin(self, args, state, control, **_):
            if state.global_step == 1:
                stuck_in_collective()

    def stuck_in_collective():
        time.sleep(600)

    real_run = runner.run
    runner.run = lambda cfg, callbacks=None, on_phase=None: real_run(
        cfg, callbacks=[*(callbacks or []), SleepsInStep()], on_phase=on_phase)
    sys.exit(entry.main(["--config", sys.argv[1]]))
""")


@pytest.mark.slow
def test_a_real_training_run_that_hangs_is_dumped_exits_75_and_the_retry_resumes_and_completes(
    tmp_path, tiny_model_dir
):
    """The pod's first attempt hangs after its step-1 checkpoint: the watchdog dumps it and exits 75; the retry (what
    the Job does on 75: the same config in a new pod) resumes from that checkpoint and completes."""
    from tests.trainer.guard.test_guard import _config

    config = _config(tmp_path, tiny_model_dir, {}, max_steps=4)
    config.spec.training.stall_timeout_seconds = 3
    config.spec.checkpointing.every_steps = 1
    path = tmp_path / "trainer.json"
    path.write_text(config.to_json(), encoding="utf-8")
    termination = tmp_path / "termination-log"
    env = {
        **os.environ,
        "KUBETUNE_TERMINATION_LOG": str(termination),
        "KUBETUNE_METRICS_LINGER_SECONDS": "0",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "operator"), str(ROOT / "trainer"), str(ROOT)]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", REAL_RUN, str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_STALLED, proc.stderr[-3000:]
    message = termination.read_text()
    assert "made no optimizer step" in message and "after step 1" in message, message
    assert "stuck_in_collective" in message, message
    assert not (tmp_path / "out" / "manifest.json").exists()

    termination.unlink()
    retry = subprocess.run(
        [sys.executable, "-m", "kubetune.trainer", "--config", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
        cwd=tmp_path,
    )
    assert retry.returncode == 0, retry.stderr[-3000:]
    assert termination.read_text().startswith("succeeded: ")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["metrics"]["resumed_from_step"] >= 1 and manifest["metrics"]["global_step"] == 4
