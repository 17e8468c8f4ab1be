"""Time to first step: from `kubetune run job.yaml` starting to its first optimizer step, beside a bare
`accelerate launch` of the minimal TRL script doing the same training (bench/_ttfs_trl.py): the same model
(SmolLM2-135M, dequantized from the GGUF once), the same data (examples/data/identity.json, alpaca), LoRA r8
on all linear layers, cutoff 512, batch 2, on this machine's CPU. Runs alternate (kubetune, trl, kubetune,
...) after one warm-up each, so caches (kubetune's tokenized-data cache, the datasets map cache, the page
cache) are warm for both and machine load drifts over both alike.

The clock stops when the first training log line (``{'loss': ...}``, printed after optimizer step 1 by
both, ``logging_steps=1``) reaches the parent. Every output line is timestamped on arrival, which gives
kubetune's breakdown: interpreter + CLI imports (until its first line), data (fetch, convert, tokenize),
model (config, fit estimate, load, LoRA), trainer setup and the first step.

    .venv/bin/python bench/ttfs.py [--reps 3]      # writes bench/results/ttfs.{json,md}
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / p) for p in ("operator", "trainer", ".")]

from bench.benchlib import (
    REPO_ROOT,
    WORK_DIR,
    alternate,
    machine_info,
    machine_markdown,
    markdown_table,
    ratio,
    write_results,
)

CUTOFF, BATCH, STEPS = 512, 2, 1
FIRST_STEP = re.compile(r"'loss':|kubetune: step 1/")  # TRL's log dict; kubetune's progress line
# kubetune's milestones, in order: (phase that ENDS at the first line matching, pattern)
MILESTONES = [
    ("python + CLI imports", re.compile(r"kubetune: running")),
    ("trainer imports, data fetch + convert, model resolve + fit estimate", re.compile(r"memory estimate")),
    (
        "tokenizer load + template + tokenize",
        re.compile(r"dataset \S+: (\d+ tokenized rows cached|tokenized rows from cache)"),
    ),
    ("model load + LoRA + TrainingArguments", re.compile(r"training_args\.py|TrainingArguments")),
    ("Trainer init (imports DeepSpeed) + first step", FIRST_STEP),
]


def smollm_dir() -> Path:
    found = next((REPO_ROOT / ".cache" / "kubetune" / "models").glob("gguf-*"), None)
    if found is None:
        sys.exit("SmolLM2-135M is not dequantized yet: run `make model` and the tests (or `kubetune run` once)")
    return found


def job_file(folder: Path, model: Path, data: Path) -> Path:
    import yaml

    spec = {
        "stage": "sft",
        "model": {"source": f"file://{model}"},
        "datasets": [{"name": "identity", "source": f"file://{data}"}],
        "method": {"type": "lora", "lora": {"rank": 8, "alpha": 16, "dropout": 0.0}},
        "training": {
            "maxSteps": STEPS,
            "batchSize": BATCH,
            "cutoffLen": CUTOFF,
            "learningRate": 1e-4,
            "loggingSteps": 1,
        },
        "output": {"uri": f"file://{folder / 'out'}"},
    }
    path = folder / "job.yaml"
    path.write_text(
        yaml.safe_dump(
            {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "ttfs"}, "spec": spec},
            sort_keys=False,
        )
    )
    return path


def timed(cmd: list[str], env: dict[str, str], log: Path) -> dict:
    """Run until the first-step line (then stop the process); every line with its arrival time."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    )
    lines: list[tuple[float, str]] = []
    first = None
    assert proc.stdout is not None
    for raw in iter(proc.stdout.readline, ""):
        for line in raw.replace("\r", "\n").splitlines():
            lines.append((time.perf_counter() - started, line))
            if first is None and FIRST_STEP.search(line):
                first = lines[-1][0]
        if first is not None:
            break
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.write_text("".join(f"{t:8.3f} {text}\n" for t, text in lines))
    if first is None:
        raise RuntimeError(f"{cmd[:3]} never reached a first step; see {log}")
    return {"ttfs_s": round(first, 3), "lines": lines}


def phases(lines: list[tuple[float, str]]) -> dict[str, float]:
    out, previous, at = {}, 0.0, 0
    for name, pattern in MILESTONES:
        for index in range(at, len(lines)):
            if pattern.search(lines[index][1]):
                out[name] = round(lines[index][0] - previous, 3)
                previous, at = lines[index][0], index
                break
    return out


def read_log(path: Path) -> list[tuple[float, str]]:
    return [(float(line[:8]), line[9:]) for line in path.read_text().splitlines() if line[:8].strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--reparse", action="store_true", help="recompute the phases from the last run's logs")
    parser.add_argument("--no-warmup", action="store_true", help="skip the warm-up run of each tool")
    args = parser.parse_args()
    folder = WORK_DIR / "ttfs"
    if args.reparse:
        import json

        results = json.loads((REPO_ROOT / "bench" / "results" / "ttfs.json").read_text())
        for run in results["runs"]:
            if run["tool"] == "kubetune":
                run["phases"] = phases(read_log(folder / f"kubetune-{run['rep']}.log"))
        report(results["runs"], results["machine"], args.reps)
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model, data = smollm_dir(), REPO_ROOT / "examples" / "data" / "identity.json"
    env = {
        **os.environ,
        "PYTHONPATH": f"{REPO_ROOT / 'operator'}:{REPO_ROOT / 'trainer'}",
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    bindir = Path(sys.executable).parent
    commands = {
        "kubetune": [
            str(bindir / "kubetune"),
            "run",
            "-v",
            "--cache-dir",
            str(folder / "cache"),
            str(job_file(folder, model, data)),
        ],
        "trl": [
            str(bindir / "accelerate"),
            "launch",
            "--cpu",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            str(REPO_ROOT / "bench" / "_ttfs_trl.py"),
            str(model),
            str(data),
            str(folder / "trl-out"),
            str(CUTOFF),
            str(BATCH),
            str(STEPS),
        ],
    }
    for tool, cmd in commands.items():  # warm-up: caches filled, first-run costs (GGUF, compile) left out
        if not args.no_warmup:
            timed(cmd, env, folder / f"warmup-{tool}.log")
    runs = []
    for rep, tool in alternate(list(commands), args.reps):
        got = timed(commands[tool], env, folder / f"{tool}-{rep}.log")
        runs.append(
            {
                "tool": tool,
                "rep": rep,
                "ttfs_s": got["ttfs_s"],
                "phases": phases(got["lines"]) if tool == "kubetune" else {},
            }
        )
        print(runs[-1], flush=True)
    info = machine_info(
        note=f"SmolLM2-135M, LoRA r8 all-linear, cutoff {CUTOFF}, batch {BATCH}, CPU, "
        f"{'no warm-up' if args.no_warmup else 'warm caches'}, {args.reps} alternated runs per tool"
    )
    report(runs, info, args.reps)


def report(runs: list[dict], info: dict, reps: int) -> None:
    commands = ("kubetune", "trl")
    med = {tool: statistics.median(r["ttfs_s"] for r in runs if r["tool"] == tool) for tool in commands}
    kube_phases = [r["phases"] for r in runs if r["tool"] == "kubetune"]
    breakdown = {name: round(statistics.median(p.get(name, 0.0) for p in kube_phases), 2) for name, _ in MILESTONES}
    rows = [
        {"tool": "kubetune run -v", "ttfs": med["kubetune"]},
        {"tool": "accelerate launch (TRL SFTTrainer)", "ttfs": med["trl"]},
    ]
    md = (
        "# Time to first step: kubetune run vs a bare accelerate launch of TRL\n\n"
        + machine_markdown(info)
        + "\n"
        + markdown_table(rows, [("tool", "command"), ("ttfs", "median seconds to the first optimizer step")])
        + f"\nRatio kubetune / TRL: **{ratio(med['kubetune'], med['trl'])}x** (target <= 1.2x)\n\n"
        + "Where kubetune's time goes (median seconds per phase):\n\n"
        + markdown_table([{"phase": k, "s": v} for k, v in breakdown.items()], [("phase", "phase"), ("s", "s")])
    )
    write_results(
        "ttfs",
        {
            "machine": info,
            "runs": runs,
            "median_s": med,
            "ratio": ratio(med["kubetune"], med["trl"]),
            "kubetune_phases_s": breakdown,
        },
        md,
    )
    print(md)


if __name__ == "__main__":
    main()
