"""The Dockerfile, checked statically (no Docker engine here): hadolint, its stages, users, entrypoints
and pins against pyproject.toml, the operator's CLI, the chart and the Jobs the operator builds; and the
`wheel` stage's build command run for real."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from kubetune.api.metrics import DEFAULT_METRICS_PORT
from kubetune.operator.manifests import DEFAULT_IMAGE, MASTER_PORT
from kubetune.operator.manifests.job import RUN_AS_USER

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
CHART_VALUES = yaml.safe_load((ROOT / "charts" / "kubetune" / "values.yaml").read_text())


def _parse(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode()), env_replace=False)


def _stages(text: str) -> dict[str, dict[str, Any]]:
    """Stage name -> {"from": base (global ARGs substituted), "instructions": [(INSTRUCTION, value), ...]}."""
    global_args: dict[str, str] = {}
    stages: dict[str, dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for item in _parse(text).structure:
        instruction, value = item["instruction"], item["value"].strip()
        if instruction == "FROM":
            base, _, name = value.partition(" AS ")
            base = re.sub(r"\$\{(\w+)\}", lambda m: global_args[m.group(1)], base.strip())
            current = stages[name.strip()] = {"from": base, "instructions": []}
        elif current is None:
            if instruction == "ARG" and "=" in value:
                key, default = value.split("=", 1)
                global_args[key] = default.strip('"')
        else:
            current["instructions"].append((instruction, value))
    return stages


STAGES = _stages(DOCKERFILE.read_text())


def _last(stage: str, instruction: str) -> str:
    values = [v for i, v in STAGES[stage]["instructions"] if i == instruction]
    assert values, f"stage {stage} has no {instruction}"
    return values[-1]


def _args(stage: str) -> dict[str, str]:
    return dict(v.split("=", 1) for i, v in STAGES[stage]["instructions"] if i == "ARG" and "=" in v)


def _runs(stage: str) -> str:
    return "\n".join(v for i, v in STAGES[stage]["instructions"] if i == "RUN")


# ------------------------------------------------------------------------------------------ hadolint


def test_hadolint_finds_nothing():
    proc = subprocess.run(
        [str(HADOLINT), "--format", "json", str(DOCKERFILE)], capture_output=True, check=False, text=True
    )
    issues = json.loads(proc.stdout or "[]")
    assert proc.returncode == 0 and issues == [], "\n".join(f"{i['line']}: {i['code']} {i['message']}" for i in issues)


def test_hadolint_would_catch_a_sloppy_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN apt-get update && apt-get install curl\nRUN pip install kopf\nUSER root\n")
    proc = subprocess.run([str(HADOLINT), "--format", "json", str(bad)], capture_output=True, check=False, text=True)
    codes = {i["code"] for i in json.loads(proc.stdout)}
    assert proc.returncode != 0
    assert {"DL3006", "DL3013", "DL3015", "DL3002"} <= codes, codes


# ------------------------------------------------------------------------------------------ stages


def test_stages_and_bases():
    assert list(STAGES) == ["wheel", "operator", "trainer-build", "trainer"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", STAGES["operator"]["from"])
    assert STAGES["wheel"]["from"] == STAGES["operator"]["from"]
    assert re.fullmatch(r"nvidia/cuda:12\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", STAGES["trainer"]["from"])
    devel = STAGES["trainer-build"]["from"]
    assert devel == STAGES["trainer"]["from"].replace("-runtime-", "-devel-"), "build and runtime CUDA must match"


def test_entrypoints_are_installed_console_scripts():
    scripts = PYPROJECT["project"]["scripts"]
    operator = json.loads(_last("operator", "ENTRYPOINT"))
    trainer = json.loads(_last("trainer", "ENTRYPOINT"))
    assert operator == ["kubetune", "operator"] and trainer == ["kubetune-train"]
    assert {operator[0], trainer[0]} <= set(scripts)
    # the subcommand exists and the trainer entry point accepts --config, as the operator's Jobs call it
    kubetune = Path(sys.executable).parent / "kubetune"
    proc = subprocess.run(
        [str(kubetune), "operator", "--help"], capture_output=True, check=False, text=True, timeout=60
    )
    assert proc.returncode == 0 and "--peering" in proc.stdout, proc.stderr
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "kubetune-train"), "--help"],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--config" in proc.stdout, proc.stderr


def _uid(stage: str) -> int:
    user = _last(stage, "USER").split(":")[0]
    assert user.isdigit(), f"{stage}: USER {user} should be numeric so runAsNonRoot can verify it"
    return int(user)


def test_images_run_as_the_users_the_pods_expect():
    operator_uid, trainer_uid = _uid("operator"), _uid("trainer")
    assert operator_uid != 0 and trainer_uid != 0
    assert operator_uid == CHART_VALUES["podSecurityContext"]["runAsUser"]
    assert trainer_uid == RUN_AS_USER
    assert f"--uid {trainer_uid}" in _runs("trainer") and f"--uid {operator_uid}" in _runs("operator")


def test_exposed_ports_match_the_chart_and_the_trainer():
    assert _last("operator", "EXPOSE").split() == [
        str(CHART_VALUES["operator"]["metricsPort"]),
        str(CHART_VALUES["operator"]["healthPort"]),
    ]
    assert _last("trainer", "EXPOSE").split() == [str(DEFAULT_METRICS_PORT), str(MASTER_PORT)]


# ------------------------------------------------------------------------------------------ what gets installed


def _extra(name: str) -> list[str]:
    return PYPROJECT["project"]["optional-dependencies"][name]


def _pin(requirements: list[str], package: str) -> str:
    found = [r for r in requirements if re.match(rf"{package}\s*==", r)]
    assert found, f"{package} is not pinned"
    return found[0].split("==")[1]


def test_operator_image_installs_the_operator_extra_without_torch():
    runs = _runs("operator")
    assert "[operator]" in runs and "torch" not in runs.replace('import torch"', "")
    assert not [r for r in _extra("operator") if re.match(r"(torch|transformers|deepspeed|bitsandbytes)\b", r)]
    assert '! python -c "import torch"' in runs, "the operator build should prove torch is absent"


def test_trainer_image_installs_torch_trainer_extra_deepspeed_and_bitsandbytes():
    runs = _runs("trainer-build")
    args = _args("trainer-build")
    assert "[trainer]" in runs
    assert args["TORCH_VERSION"] == _pin(_extra("trainer"), "torch")
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["DEEPSPEED_VERSION"])
    assert '"deepspeed==${DEEPSPEED_VERSION}"' in runs
    assert _pin(_extra("trainer"), "bitsandbytes")
    cuda = re.search(r"cuda:(\d+)\.(\d+)", STAGES["trainer"]["from"]).groups()
    assert args["TORCH_INDEX_URL"].endswith(f"/cu{cuda[0]}{cuda[1]}"), "torch's CUDA must match the base image"
    copied = [v for i, v in STAGES["trainer"]["instructions"] if i == "COPY"]
    assert copied == ["--from=trainer-build /opt/kubetune /opt/kubetune"]


def test_version_args_match_pyproject():
    version = PYPROJECT["project"]["version"]
    for stage in ("wheel", "operator", "trainer-build"):
        assert _args(stage)["KUBETUNE_VERSION"] == version, stage


def test_chart_default_images_are_the_dockerfile_targets():
    assert CHART_VALUES["image"]["repository"].endswith("/kubetune-operator")
    trainer = CHART_VALUES["trainer"]["image"]["repository"]
    chart = yaml.safe_load((ROOT / "charts" / "kubetune" / "Chart.yaml").read_text())
    assert f"{trainer}:{chart['appVersion']}" == DEFAULT_IMAGE


def test_dockerignore_keeps_exactly_what_the_copies_need():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    kept = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {c for v in STAGES["wheel"]["instructions"] if v[0] == "COPY" for c in v[1].split()[:-1]}
    assert {c.rstrip("/") for c in copied} == kept


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> Path:
    """The `wheel` stage's command, run here on exactly the files the stage COPYs."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / item, src / item)
    for item in ("operator", "trainer"):
        shutil.copytree(ROOT / item, src / item, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    command = re.search(r"pip wheel ([^\\&]+)", _runs("wheel")).group(1).split()
    assert command[-1] == "." and command[command.index("--wheel-dir") + 1] == "/dist"
    command[command.index("--wheel-dir") + 1] = str(tmp / "dist")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", *command],
        cwd=src,
        capture_output=True,
        check=False,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = tmp / "dist" / f"kubetune-{PYPROJECT['project']['version']}-py3-none-any.whl"
    assert wheel.exists(), sorted(p.name for p in (tmp / "dist").iterdir())
    return wheel


@pytest.mark.slow
def test_wheel_has_both_halves_and_both_console_scripts(built_wheel):
    version = PYPROJECT["project"]["version"]
    wheel = zipfile.ZipFile(built_wheel)
    files = wheel.namelist()
    assert "kubetune/operator/rbac.py" in files and "kubetune/trainer/__main__.py" in files
    assert "kubetune/__init__.py" not in files, "kubetune must stay a namespace package"
    entry_points = wheel.read(f"kubetune-{version}.dist-info/entry_points.txt").decode()
    for script, target in PYPROJECT["project"]["scripts"].items():
        assert f"{script} = {target}" in entry_points


@pytest.mark.slow
def test_operator_target_runs_without_torch(built_wheel, tmp_path):
    """The operator stage's install (`<wheel>[operator]`) in a clean venv: `kubetune operator` starts its
    CLI and imports the kopf handlers, and torch is neither installed nor imported."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    install = re.search(r'pip install --no-cache-dir "([^"]+)"', _runs("operator")).group(1)
    assert install.endswith("[operator]")
    proc = subprocess.run(
        [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{built_wheel}[operator]"],
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run(
        [str(venv / "bin" / "kubetune"), *json.loads(_last("operator", "ENTRYPOINT"))[1:], "--help"],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "--all-namespaces" in proc.stdout, proc.stderr
    check = (
        "import importlib.util, sys; import kubetune.operator.handlers.finetunejob, kubetune.cli; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert importlib.util.find_spec('torch') is None, 'torch installed'"
    )
    proc = subprocess.run(
        [str(py), "-c", check], capture_output=True, check=False, text=True, timeout=120, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
