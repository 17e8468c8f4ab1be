"""Run the real helm binary on charts/kubetune and load what it renders."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
TOOLS = ROOT / ".tools"
HELM = TOOLS / "bin" / "helm"
RELEASE = "kubetune"
NAMESPACE = "kubetune"


def ensure_helm() -> Path:
    """helm 3.19.0 from `scripts/tools.d/10-helm.sh` (a no-op when it is already installed)."""
    if not HELM.exists():
        subprocess.run(["bash", str(ROOT / "scripts/tools.d/10-helm.sh"), str(TOOLS)], cwd=ROOT, check=True)
    return HELM


def helm(*args: str, chart: Path = CHART) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ensure_helm()), *args], capture_output=True, check=False, text=True, cwd=ROOT, timeout=60
    )


def set_args(values: dict[str, Any] | None) -> list[str]:
    """--set-json flags, one per top-level key (keeps types exact: ints, bools, lists)."""
    import json

    return [f for k, v in (values or {}).items() for f in ("--set-json", f"{k}={json.dumps(v)}")]


def template(values: dict[str, Any] | None = None, *extra: str, chart: Path = CHART) -> list[dict[str, Any]]:
    """`helm template` the chart with these values; returns the rendered objects (fails on a helm error)."""
    proc = helm("template", RELEASE, str(chart), "--namespace", NAMESPACE, *set_args(values), *extra)
    assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = find(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]
