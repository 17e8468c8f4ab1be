"""Shared helpers for the benchmarks: the machine description, measured subprocess runs, medians and
ratios, and results written as JSON plus a short markdown table.

Pure functions (``summarize``, ``ratio``, ``markdown_table``, ``alternate``) are unit-tested in
tests/bench/; nothing here is timed by the test suite.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / ".work"
RESULTS_DIR = BENCH_DIR / "results"


# ------------------------------------------------------------------------------------------- machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def package_versions(names: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info(extra_packages: Iterable[str] = (), note: str | None = None) -> dict[str, Any]:
    """What the numbers were measured on; every results file carries it."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _mem_total_gib(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": package_versions(
            ["kubetune", "torch", "transformers", "peft", "trl", "accelerate", "datasets", *extra_packages]
        ),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "measured_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if note:
        info["note"] = note
    return info


# ------------------------------------------------------------------------------------------- runs


@dataclass
class Measured:
    """One measured subprocess: exit code, wall seconds, the peak RSS of the process (and waited children)."""

    cmd: list[str]
    returncode: int
    wall_s: float
    peak_rss_mib: float
    cpu_s: float
    output_tail: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_measured(
    cmd: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_file: Path | None = None,
    timeout_s: float | None = None,
) -> Measured:
    """Run ``cmd``; measure wall time, peak RSS (``wait4`` rusage) and CPU seconds of that process tree."""
    started = time.perf_counter()
    log_file = log_file or (WORK_DIR / "last-run.log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("wb") as log:
        proc = subprocess.Popen(list(cmd), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
        deadline = None if timeout_s is None else started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    text = log_file.read_text(errors="replace")
    return Measured(
        cmd=list(cmd),
        returncode=proc.returncode,
        wall_s=round(wall, 3),
        peak_rss_mib=round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        cpu_s=round(usage.ru_utime + usage.ru_stime, 2),
        output_tail=text[-4000:],
    )


def alternate(tools: Sequence[str], reps: int) -> list[tuple[int, str]]:
    """A B A B ... order: each repetition runs every tool once, so drifting machine load hits all tools alike."""
    if reps < 1:
        raise ValueError("reps must be >= 1")
    return [(rep, tool) for rep in range(reps) for tool in tools]


# ------------------------------------------------------------------------------------------- statistics


def median(values: Iterable[float | None]) -> float | None:
    clean = [v for v in values if v is not None]
    return statistics.median(clean) if clean else None


def summarize(runs: list[dict[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Medians of ``keys`` over successful runs (``ok`` true), plus the spread (min/max) and counts."""
    good = [r for r in runs if r.get("ok")]
    out: dict[str, Any] = {"runs": len(runs), "ok_runs": len(good)}
    for key in keys:
        vals = [r[key] for r in good if r.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
        if len(vals) > 1:
            out[f"{key}_min"], out[f"{key}_max"] = min(vals), max(vals)
    return out


def ratio(numerator: float | None, denominator: float | None, digits: int = 2) -> float | None:
    """numerator / denominator, rounded; None when either side is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)


# ------------------------------------------------------------------------------------------- output


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: list[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub markdown table; ``columns`` is (key, header) pairs; missing values render as an en dash."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(_cell(row.get(k)) for k, _ in columns) + " |" for row in rows]
    return "\n".join([head, sep, *body]) + "\n"


def machine_markdown(info: dict[str, Any]) -> str:
    pkgs = ", ".join(f"{k} {v}" for k, v in info.get("packages", {}).items() if v)
    lines = [
        (
            f"- CPU: {info.get('cpu_model')} ({info.get('cpu_count')} logical cores, {info.get('cpu_affinity')} usable), "
            f"{info.get('memory_gib')} GiB memory; {info.get('platform')}; Python {info.get('python')}"
        ),
        f"- Packages: {pkgs}",
        f"- Measured at {info.get('measured_at')}; load average at start {info.get('load_average_at_start')}",
    ]
    if info.get("note"):
        lines.append(f"- Note: {info['note']}")
    return "\n".join(lines) + "\n"


def write_results(name: str, data: dict[str, Any], markdown: str, out_dir: Path = RESULTS_DIR) -> tuple[Path, Path]:
    """bench/results/<name>.json and <name>.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / f"{name}.json"
    md = out_dir / f"{name}.md"
    js.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    md.write_text(markdown, encoding="utf-8")
    return js, md


def peak_rss_self_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def python_of_this_venv() -> str:
    return sys.executable
