"""`kubetune run` on a terminal: kubetune's own lines only, one live bar, the libraries' output in the run's log.

The run is real (the quickstart's model, data and method, a few steps) under a pseudo-terminal, so the
libraries see a TTY exactly as they do for a user, and every byte the terminal receives is checked.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# what the libraries print when they are let through (seen in a run before this was fixed)
STRAY = (
    "Warning",
    "warn(",
    "FutureWarning",
    "UserWarning",
    "bitsandbytes",
    "DeepSpeed",
    "ds_accelerator",
    "real_accelerator",
    "{'loss'",
    "'learning_rate'",
    "it/s]",
    "Loading weights",
    "Traceback",
    "tokenizer has new",
    "PAD/BOS/EOS",
    "Setting accelerator",
)


def quickstart_job(tmp_path: Path, smollm_gguf: Path, steps: int = 4) -> Path:
    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    doc["metadata"]["name"] = f"console-{steps}"  # its own scratch folder: other tests run the quickstart too
    spec = doc["spec"]
    spec["model"]["source"] = f"file://{smollm_gguf}"
    spec["datasets"][0]["source"] = f"file://{ROOT / 'examples' / 'data' / 'identity.json'}"
    spec["training"]["maxSteps"] = steps
    spec["training"]["loggingSteps"] = 1
    spec.pop("evaluation")  # a few steps do not pass the quickstart's gate; its lines are tested elsewhere
    spec.pop("evalDatasets")
    spec["output"]["uri"] = f"file://{tmp_path / 'out'}"
    job = tmp_path / "quickstart.yaml"
    job.write_text(yaml.safe_dump(doc, sort_keys=False))
    return job


def run_on_terminal(args: list[str], env: dict[str, str], timeout: float = 1500.0) -> tuple[int, str]:
    """Run a command with stdin/stdout/stderr on a new pseudo-terminal; return its exit code and everything shown."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a terminal 160 columns wide
    proc = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], timeout)
            if not ready:
                proc.kill()
                raise AssertionError("kubetune run printed nothing for too long")
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the terminal closed with the process
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def screen_lines(raw: str) -> list[str]:
    """What stays on the screen: carriage returns redraw a line in place, so only each line's last frame counts."""
    text = ANSI.sub("", raw).replace("\r\n", "\n")
    return [line.rsplit("\r", 1)[-1].rstrip() for line in text.split("\n") if line.rsplit("\r", 1)[-1].strip()]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_a_terminal_sees_only_kubetunes_lines(tmp_path, smollm_gguf, cache_dir):
    job = quickstart_job(tmp_path, smollm_gguf)
    env = {**os.environ, "KUBETUNE_CACHE_DIR": str(cache_dir), "PYTHONWARNINGS": "default", "TERM": "xterm"}
    env.pop("TOKENIZERS_PARALLELISM", None)
    code, raw = run_on_terminal([sys.executable, "-m", "kubetune.cli", "run", str(job)], env)
    assert code == 0, raw[-3000:]
    lines = screen_lines(raw)
    for needle in STRAY:
        assert needle not in raw, f"{needle!r} reached the terminal:\n" + "\n".join(lines)
    # every line on the screen is kubetune's own: its log lines, its bar, the summary
    for line in lines:
        assert line.startswith(("kubetune", "  ")), f"not a kubetune line: {line!r}\n" + "\n".join(lines)
    # one live display, redrawn in place: a single bar line that reached 100 % with the numbers users look for
    bars = [line for line in lines if re.match(r"kubetune: +\d+%\|", line)]
    assert len(bars) == 1, lines
    assert "100%" in bars[0] and "4/4" in bars[0] and "loss" in bars[0] and "tok/s" in bars[0] and "lr" in bars[0]
    assert "\r" in raw  # redrawn, not one line per step
    # the summary below it names the artifact and the log file, which holds what the terminal did not show
    log_line = next(line for line in lines if "full log:" in line)
    log_path = Path(log_line.split("full log:", 1)[1].strip())
    assert lines.index(bars[0]) < lines.index(next(line for line in lines if "done; artifact:" in line))
    assert log_path.is_file() and log_path.stat().st_size > 0
    assert (tmp_path / "out" / "manifest.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_verbose_shows_the_libraries_and_a_pipe_gets_plain_lines(tmp_path, smollm_gguf, cache_dir):
    job = quickstart_job(tmp_path, smollm_gguf, steps=2)
    env = {**os.environ, "KUBETUNE_CACHE_DIR": str(cache_dir)}
    proc = subprocess.run(
        [sys.executable, "-m", "kubetune.cli", "run", "-v", str(job)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # not a terminal: one plain progress line per logging step, no carriage-return redraws
    steps = [line for line in proc.stderr.splitlines() if line.startswith("kubetune: step ")]
    assert [line.split()[2] for line in steps] == ["1/2", "2/2"], proc.stderr[-3000:]
    assert "\r" not in "".join(steps)
    # -v lets the libraries' own lines through (the Trainer's loading bar at least)
    assert any(not line.startswith(("kubetune", "  ")) for line in proc.stderr.splitlines() if line.strip())
