"""Bad input on the command line: `kubetune validate`, `run`, `render` and `data check` print one line per problem
(file, document, field path, what to do) and exit non-zero: never a traceback, never a 1 MB echo."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import job_doc

ROOT = Path(__file__).resolve().parents[2]
LINE_LIMIT = 500

GOOD = job_doc(
    {"model": {"source": "file://nope/model.gguf"}, "datasets": [{"name": "d", "source": "file://d.jsonl"}]},
    name="good",
)


def kubetune(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kubetune.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={"PYTHONPATH": f"{ROOT}/operator:{ROOT}/trainer", "PATH": "/usr/bin:/bin"},
        timeout=300,
        check=False,
    )


def assert_one_line_each(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert lines and all(len(line) <= LINE_LIMIT for line in lines), [line[:200] for line in lines]
    return lines


def with_spec(**changes: object) -> dict:
    doc = copy.deepcopy(GOOD)
    for dotted, value in changes.items():
        node = doc["spec"]
        *parents, last = dotted.split("__")
        for part in parents:
            node = node[int(part)] if part.isdigit() else node.setdefault(part, {})
        node[last] = value
    return doc


BAD_FILES: dict[str, tuple[str | bytes, str]] = {
    # name: (file content, what the line must name)
    "overflow": (
        yaml.safe_dump(with_spec(model__parameters="1e999B", resources__gpuType="H100")),
        "spec.model.parameters",
    ),
    "name": (yaml.safe_dump(with_spec(resources__serviceAccountName="Bad_Name")), "spec.resources.serviceAccountName"),
    "quantity": (yaml.safe_dump(with_spec(resources__memory="1.2.3")), "spec.resources.memory"),
    "int32": (
        yaml.safe_dump(with_spec(runPolicy__ttlSecondsAfterFinished=2**31)),
        "spec.runPolicy.ttlSecondsAfterFinished",
    ),
    "seed": (yaml.safe_dump(with_spec(training__seed=2**32)), "spec.training.seed"),
    "nan": (
        (
            "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: j}\nspec:\n"
            "  model: {source: hf://a/b}\n  datasets: [{name: d, source: 'file://d.jsonl'}]\n"
            "  training: {weightDecay: .nan}\n"
        ),
        "spec.training.weightDecay",
    ),
    "inf": (yaml.safe_dump(with_spec(training__preference={"beta": float("inf")})), "spec.training.preference.beta"),
    "quoted-int": (yaml.safe_dump(with_spec(training__batchSize="16")), "spec.training.batchSize"),
    "quoted-bool": (yaml.safe_dump(with_spec(training__packing="yes")), "spec.training.packing"),
    "bucket": (yaml.safe_dump(with_spec(output={"uri": "s3:///key"})), "spec.output.uri"),
    "hf-id": (yaml.safe_dump(with_spec(model={"source": "hf://a/b/c"})), "spec.model.source"),
    "template": (yaml.safe_dump(with_spec(model={"source": "hf://a/b", "template": "llama9"})), "spec.model.template"),
    "control": (
        yaml.safe_dump(with_spec(datasets=[{"name": "d\x1b[2J", "source": "file://d.jsonl"}])),
        "spec.datasets[0].name",
    ),
    "num-samples": (
        yaml.safe_dump(with_spec(datasets=[{"name": "d", "source": "file://d.jsonl", "numSamples": 1e11}])),
        "spec.datasets[0].numSamples",
    ),
    "huge": (
        yaml.safe_dump(with_spec(datasets=[{"name": "x" * 1_000_000, "source": "file://d.jsonl"}])),
        "spec.datasets[0].name",
    ),
    "alias-bomb": (
        "a: &a [x,x,x,x,x,x,x,x,x]\n"
        + "".join(f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi")),
        "alias",
    ),
    "deep": ("spec: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper"),
    "binary": (b"\x00\x01\x02\x03\xff\xfe", "binary"),
    "duplicate-key": (yaml.safe_dump(GOOD) + "kind: FineTuneJob\n", "duplicate key"),
    "misspelt-kind": (yaml.safe_dump({**GOOD, "kind": "FinetuneJob"}), "kind: must be FineTuneJob"),
    "list-document": (yaml.safe_dump([GOOD]), "is a list"),
}


def test_validate_reports_every_bad_input_class_in_one_line_each(tmp_path: Path) -> None:
    files = {}
    for name, (content, _) in BAD_FILES.items():
        f = tmp_path / f"{name}.yaml"
        (f.write_bytes if isinstance(content, bytes) else f.write_text)(content)
        files[name] = f
    result = kubetune("validate", *map(str, files.values()))
    assert result.returncode == 1
    lines = assert_one_line_each(result)
    for name, (_, expected) in BAD_FILES.items():
        mine = [line for line in lines if line.startswith(f"{files[name]}: ")]
        assert mine and any(expected in line for line in mine), (name, mine or lines[:5])


def test_a_multi_document_file_names_every_bad_document(tmp_path: Path) -> None:
    second = with_spec(training__epochs=-1)
    second["metadata"]["name"] = "second"
    third = with_spec(method={"type": "lora", "lora": {"rank": "8"}})
    third["metadata"]["name"] = "third"
    f = tmp_path / "jobs.yaml"
    f.write_text("---\n".join(yaml.safe_dump(d) for d in (GOOD, second, third, GOOD)))
    result = kubetune("validate", str(f))
    assert result.returncode == 1
    lines = assert_one_line_each(result)
    assert any(f"{f}: document 2 (FineTuneJob/second): spec.training.epochs: must be > 0" in line for line in lines)
    assert any(
        f"{f}: document 3 (FineTuneJob/third): spec.method.lora.rank: must be an integer" in line for line in lines
    )
    assert any(f"{f}: document 4 (FineTuneJob/good): metadata.name:" in line for line in lines), lines


def test_the_same_job_name_in_two_files_is_refused(tmp_path: Path) -> None:
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(GOOD))
    b.write_text(yaml.safe_dump(GOOD))
    result = kubetune("validate", str(a), str(b))
    assert result.returncode == 1 and f"also defined in {a}" in result.stderr


@pytest.mark.slow
def test_run_and_render_refuse_bad_files_in_one_line(tmp_path: Path) -> None:
    for name in ("overflow", "alias-bomb", "binary", "misspelt-kind"):
        content, expected = BAD_FILES[name]
        f = tmp_path / f"{name}.yaml"
        (f.write_bytes if isinstance(content, bytes) else f.write_text)(content)
        run = kubetune("run", str(f), "--cache-dir", str(tmp_path / "cache"))
        assert run.returncode == 2 and expected in run.stderr, (name, run.stderr[-500:])
        assert_one_line_each(run)
        render = kubetune("render", str(f))
        assert render.returncode == 1 and expected in render.stderr, (name, render.stderr[-500:])
        assert_one_line_each(render)


@pytest.mark.slow
def test_run_with_only_malformed_rows_fails_on_the_data_before_the_model(tmp_path: Path) -> None:
    rows = [
        {"messages": [{"role": ["user"], "content": "hi"}, {"role": "assistant", "content": "x"}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": ["f"]}]},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "images": 3},
    ]
    (tmp_path / "d.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n" + "[" * 100_000 + "\n")
    doc = with_spec(
        datasets=[
            {
                "name": "chat",
                "source": "file://d.jsonl",
                "formatting": "openai",
                "columns": {"messages": "messages", "images": "images"},
            }
        ]
    )
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(doc))
    result = kubetune("run", str(f), "--cache-dir", str(tmp_path / "cache"))
    assert result.returncode == 4, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for reason in ("invalid role", "malformed tool call", "malformed images", "nested too deeply"):
        assert reason in result.stderr
    assert "spec.model.source" not in result.stderr  # the (missing) model was never touched


@pytest.mark.parametrize(
    "args", [["--max-samples", "-1"], ["--max-samples", "0"], ["--max-samples", "x"], ["--cutoff-len", "-5"]]
)
def test_data_check_refuses_bad_numbers_in_one_line(args: list[str], tmp_path: Path) -> None:
    result = kubetune(
        "data",
        "check",
        "--dataset-info",
        str(tmp_path / "dataset_info.json"),
        "--dataset",
        "d",
        "--stage",
        "sft",
        "--model",
        str(tmp_path / "m.gguf"),
        *args,
    )
    assert result.returncode == 2
    lines = assert_one_line_each(result)
    assert len(lines) == 1 and args[0] in lines[0], lines


def test_chat_refuses_an_unknown_template_in_one_line() -> None:
    result = kubetune("chat", "--model", "hf://org/model", "--template", "llama9", "hi")
    assert result.returncode == 2
    assert assert_one_line_each(result)[0].startswith("--template: unknown template 'llama9'")
