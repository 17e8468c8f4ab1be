"""Where the observability tests find their external tools and files (installed by `make tools`)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
DASHBOARD = CHART / "files" / "dashboards" / "kubetune.json"
ALERTS = CHART / "files" / "alerts.yaml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yaml")
NPM_DIR = ROOT / ".tools" / "npm"
TSC = NPM_DIR / "node_modules" / ".bin" / "tsc"


def tool(name: str, installer: str) -> str:
    """The tool's path; installs it with its tools.d script first if it is missing (as `make tools` does)."""
    path = shutil.which(name) or (str(TSC) if name == "tsc" and TSC.exists() else None)
    if path is None:
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "tools.d" / installer), str(ROOT / ".tools")],
            check=True,
            cwd=ROOT,
            timeout=600,
        )
        path = shutil.which(name) or (str(TSC) if name == "tsc" and TSC.exists() else None)
    if path is None:
        pytest.fail(f"{name} is missing: run `make tools` (scripts/tools.d/{installer})")
    return path


def promtool() -> str:
    return tool("promtool", "20-prometheus.sh")


def prometheus() -> str:
    return tool("prometheus", "20-prometheus.sh")


def tsc() -> str:
    return tool("tsc", "30-grafana-schema.sh")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def alerts() -> dict[str, Any]:
    return yaml.safe_load(ALERTS.read_text(encoding="utf-8"))


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every non-row panel, including those nested in collapsed rows."""
    out = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(panel title, refId, target) for every query of every panel."""
    return [(p["title"], t["refId"], t) for p in panels(board) for t in p.get("targets", [])]


def substitute(expr: str, *, namespace: str, job: str, rate_interval: str, range_: str) -> str:
    """Replace Grafana's variables the way Grafana does before it sends a query to Prometheus."""
    out = expr.replace("$__rate_interval", rate_interval).replace("$__range", range_)
    # Grafana regex-escapes multi-value variables; DNS-label names have no regex metacharacters but "-",
    # which needs no escape (and "\\-" is not a valid PromQL string escape)
    out = out.replace("$namespace", namespace).replace("$job", job)
    assert "$" not in out.replace('"$1"', ""), f"unreplaced variable in {out}"
    return out
