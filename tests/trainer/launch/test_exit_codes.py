"""Exit codes survive torchrun: a worker's own code (3 bad config, 4 bad data, 143 preempted) becomes the pod's.

``kubetune-train`` re-launches itself through torchrun's elastic agent when a pod runs several processes; plain
``python -m torch.distributed.run`` would exit 1 for any failed worker and the Job's podFailurePolicy (FailJob on
3 and 4) would never fire.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.api.conditions import NON_RETRYABLE_EXIT_CODES
from kubetune.trainer.distributed import pod_exit_code

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_workers(cmd: list[str], tries: int = 3, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (torchrun inside) with a fresh MASTER_PORT; again on another when a process took it since
    free_port() (the rendezvous store's EADDRINUSE), as the port must be named up front."""
    extra = kwargs.pop("env")
    kwargs.pop("check", None)  # the exit code is what the tests look at
    for _ in range(tries):
        proc = subprocess.run(cmd, env={**extra, "MASTER_PORT": str(free_port())}, check=False, **kwargs)
        log = proc.stdout + proc.stderr
        if "EADDRINUSE" not in log and "address already in use" not in log.lower():
            break
    return proc


def env(**extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'operator'}:{ROOT / 'trainer'}:{ROOT}",
        "OMP_NUM_THREADS": "1",
        "NPROC_PER_NODE": "2",
        "MASTER_PORT": str(free_port()),
        "KUBETUNE_METRICS_LINGER_SECONDS": "0",
        **extra,
    }


# ------------------------------------------------------------------------------------------------ the choice


def test_a_documented_code_from_any_rank_wins_over_the_crashes_it_caused():
    # rank 1 found bad data; rank 0 then died on the broken collective (1) and rank 2 was stopped (SIGTERM)
    failures = {
        0: (1, 100.0, "gloo: connection closed"),
        1: (4, 101.0, "DataError: no valid rows"),
        2: (-15, 99.0, "Signal 15 (SIGTERM)"),
    }
    assert pod_exit_code(failures) == (4, 1, "DataError: no valid rows")


def test_signals_map_to_the_shell_convention_and_ties_go_to_the_lowest_rank():
    assert pod_exit_code({1: (-9, 5.0, "Signal 9"), 0: (-9, 5.0, "Signal 9")})[:2] == (137, 0)
    assert pod_exit_code({0: (1, 5.0, "x"), 1: (143, 6.0, "preempted")})[:2] == (143, 1)
    assert pod_exit_code({})[0] == 1
    # the survivor the agent stopped (SIGTERM, 143 by the shell's rule) is not mistaken for a preempted worker
    assert pod_exit_code({0: (-15, 1.0, "Signal 15"), 1: (1, 2.0, "RuntimeError")})[:2] == (1, 1)


codes = st.one_of(st.sampled_from([1, 2, 3, 4, 143, 255]), st.integers(-31, -1), st.integers(5, 400))


@given(st.dictionaries(st.integers(0, 63), st.tuples(codes, st.floats(0, 1e9), st.text(max_size=5)), min_size=1))
def test_the_pod_code_is_a_workers_own_and_non_retryable_ones_are_never_lost(failures):
    code, rank, message = pod_exit_code(failures)
    assert rank in failures and message == failures[rank][2]
    assert 0 < code < 256
    own = failures[rank][0]
    assert code == (128 - own if own < 0 else own if own < 256 else 1)
    if any(c in NON_RETRYABLE_EXIT_CODES for c, _, _ in failures.values()):
        assert code in NON_RETRYABLE_EXIT_CODES


# ---------------------------------------------------------------------------------------- real torchrun workers


LAUNCH = (
    "import sys; from kubetune.trainer.distributed import launch_plan, relaunch, last_failure; "
    "code = relaunch(launch_plan(), [], module='tests.trainer.launch.exit_worker'); "
    "print('FAILURE', last_failure()); sys.exit(code)"
)


@pytest.mark.slow
@pytest.mark.parametrize(
    "rank, how, expected",
    [
        (1, "code:4", 4),
        (0, "code:3", 3),
        (1, "raise", 1),
        (0, "signal:9", 137),
    ],
    ids=["rank1-bad-data", "rank0-bad-config", "crash", "killed"],
)
def test_two_torchrun_workers_one_fails_and_the_launcher_exits_with_its_code(tmp_path, rank, how, expected):
    proc = run_workers(
        [sys.executable, "-c", LAUNCH],
        env=env(FAIL_RANK=str(rank), FAIL_HOW=how),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == expected, proc.stdout[-3000:] + proc.stderr[-3000:]
    if how.startswith("code:"):
        assert f"rank {rank} gives up on purpose" in proc.stdout  # the message came through torchrun's error file


@pytest.mark.slow
def test_kubetune_train_with_two_workers_exits_4_on_bad_data(tmp_path):
    """The real entry point: both workers reject the dataset before any model is loaded; the pod exits 4."""
    (tmp_path / "bad.json").write_text(json.dumps([{"nothing": "useful"}] * 3))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    from kubetune.api.trainer_config import TrainerConfig

    config = TrainerConfig.model_validate(
        {
            "spec": {
                "model": {"source": f"file://{model}"},
                "datasets": [{"name": "broken", "source": f"file://{tmp_path / 'bad.json'}"}],
                "output": {"uri": f"file://{tmp_path / 'out'}"},
            },
            "runtime": {
                "scratchDir": str(tmp_path / "scratch"),
                "workDir": str(tmp_path),
                "cacheDir": str(tmp_path / "cache"),
                "outputUri": f"file://{tmp_path / 'out'}",
                "jobName": "bad-data",
            },
        }
    )
    path = tmp_path / "trainer.json"
    path.write_text(config.to_json())
    termination = tmp_path / "termination-log"
    proc = run_workers(
        [sys.executable, "-m", "kubetune.trainer", "--config", str(path)],
        cwd=tmp_path,
        env=env(KUBETUNE_TERMINATION_LOG=str(termination)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    log = proc.stdout + proc.stderr
    assert "launching 1 x 2 workers" in log
    assert proc.returncode == 4, log[-4000:]
    assert "no valid rows in dataset(s) broken" in termination.read_text()
