"""`kubetune validate` and `kubetune crd` as a user runs them: real subprocesses, no tracebacks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import job_doc

ROOT = Path(__file__).resolve().parents[2]


def kubetune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": f"{ROOT}/operator:{ROOT}/trainer", "PATH": "/usr/bin:/bin"},
    )


def test_validate_examples_pass():
    result = kubetune("validate", *map(str, sorted((ROOT / "examples").glob("*.yaml"))))
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout


def test_validate_reports_one_line_per_problem(tmp_path):
    doc = job_doc(
        {
            "stage": "dpo",
            "model": {"source": "gopher://x"},
            "method": {"type": "lora", "lora": {"rank": -4}},
            "datasets": [{"name": "d", "source": "file://d.json", "formating": "alpaca"}],
        },
        name="Bad_Name",
    )
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    result = kubetune("validate", str(f))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert all(line.startswith(f"{f}: ") for line in lines), lines
    joined = "\n".join(lines)
    for expected in (
        "metadata.name:",
        "spec.model.source: unsupported URI",
        "spec.method.lora.rank: must be > 0",
        "spec.datasets[0].formating: unknown field (did you mean 'formatting'?)",
    ):
        assert expected in joined, joined


def test_validate_bad_yaml_and_missing_file(tmp_path):
    f = tmp_path / "broken.yaml"
    f.write_text("spec: [unclosed")
    result = kubetune("validate", str(f), str(tmp_path / "missing.yaml"))
    assert result.returncode == 1
    assert "not valid YAML" in result.stderr and "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_crd_command_prints_the_committed_crd():
    result = kubetune("crd")
    assert result.returncode == 0
    assert result.stdout == (ROOT / "crds" / "kubetune.io_finetunejobs.yaml").read_text()


def test_run_reports_missing_model_with_its_field(tmp_path):
    data = tmp_path / "d.json"
    data.write_text('[{"instruction": "hi", "output": "hello"}]')
    doc = job_doc(
        {"model": {"source": "file://nope/model.gguf"}, "datasets": [{"name": "d", "source": "file://d.json"}]}
    )
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    result = kubetune("run", str(f), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 3, result.stderr
    assert (
        "spec.model.source" in result.stderr
        and "nope/model.gguf" in result.stderr
        and "does not exist" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_run_fails_before_model_load_when_no_row_is_valid(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": ""}\n{not json\n')
    doc = job_doc(
        {"model": {"source": "file://nope/model.gguf"}, "datasets": [{"name": "broken", "source": "file://d.jsonl"}]}
    )
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    result = kubetune("run", str(f), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 4, result.stderr
    # the data error comes first: the (missing) model was never touched
    assert "broken" in result.stderr and "malformed JSON" in result.stderr and "empty prompt" in result.stderr
    assert "spec.model.source" not in result.stderr
