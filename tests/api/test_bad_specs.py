"""Property-based: invalid FineTuneJobs are rejected by the models AND the CRD schema, naming the field path.

Mutations are generated from the CRD schema itself (every property path with its type, bounds and
enums), applied one at a time to a valid job.
"""

from __future__ import annotations

import copy
import string
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api.crdgen import build_crd, crd_json_schema
from kubetune.api.validation import InvalidFineTuneJob, format_path, parse_job
from tests.conftest import job_doc

VALID = job_doc(
    {
        "stage": "sft",
        "model": {"source": "hf://org/model", "quantization": {"bits": 4}, "adapter": {"source": "s3://bkt/adapter"}},
        "datasets": [
            {"name": "d", "source": "s3://bkt/d.json", "columns": {"prompt": "q"}, "tags": {"roleTag": "role"}}
        ],
        "method": {"type": "lora", "lora": {"rank": 8}, "freeze": {"trainableLayers": 2}},
        "training": {"epochs": 1, "preference": {"beta": 0.1}, "kto": {"beta": 0.1}, "ppo": {"klCoef": 0.1}},
        "resources": {"nodes": 1, "gpusPerNode": 1},
        "distributed": {"strategy": "auto"},
        "checkpointing": {"everySteps": 10},
        "output": {"uri": "s3://bkt/out", "hub": {"repo": "org/x", "credentialsSecret": "hf"}},
        "runPolicy": {"backoffLimit": 1},
    },
    name="valid-job",
)
SPEC_SCHEMA = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
CRD_VALIDATOR = jsonschema.Draft4Validator(crd_json_schema())


def _leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    out = []
    for name, sub in node.get("properties", {}).items():
        p = (*path, name)
        if "properties" in sub:
            out.append((p, sub))
            out += _leaves(sub, p)
        elif sub.get("type") == "array" and "properties" in sub.get("items", {}):
            out.append((p, sub))
            out += _leaves(sub["items"], (*p, 0))
        else:
            out.append((p, sub))
    return out


LEAVES = [(p, s) for p, s in _leaves(SPEC_SCHEMA)]
OBJECTS = [p for p, s in LEAVES if "properties" in s]


def _reachable(path: tuple) -> bool:
    """Paths through a list index only where the valid job has that list item."""
    node: Any = VALID["spec"]
    for part in path[:-1]:
        if isinstance(part, int):
            if not isinstance(node, list) or len(node) <= part:
                return False
            node = node[part]
        elif isinstance(node, dict):
            node = node.get(part, {})
    return True


def _set(doc: dict[str, Any], path: tuple, value: Any) -> None:
    node: Any = doc["spec"]
    for part in path[:-1]:
        node = node[part] if isinstance(part, int) else node.setdefault(part, {})
    node[path[-1]] = value


def _wrong_values(schema: dict[str, Any]) -> st.SearchStrategy:
    kind = schema.get("type")
    words = st.text(string.ascii_letters, min_size=2, max_size=8)
    choices = []
    if kind in ("integer", "number"):
        choices.append(words)
        if "minimum" in schema:
            below = schema["minimum"] if schema.get("exclusiveMinimum") else schema["minimum"] - 1
            choices.append(st.just(below))
        if "maximum" in schema:
            above = schema["maximum"] if schema.get("exclusiveMaximum") else schema["maximum"] + 1
            choices.append(st.just(above))
    elif kind == "boolean":
        choices.append(words)
        choices.append(st.just(7))
    elif kind == "string":
        choices.append(st.integers(2, 99))
        choices.append(st.just(["a", "list"]))
        if "enum" in schema:
            choices.append(words.filter(lambda w: w not in schema["enum"]))
    elif kind == "array":
        choices.append(words)
    elif kind == "object":
        choices.append(st.integers(2, 99))
    return st.one_of(choices) if choices else st.nothing()


@st.composite
def bad_jobs(draw) -> tuple[dict[str, Any], str]:
    doc = copy.deepcopy(VALID)
    kind = draw(st.sampled_from(["wrong_value", "unknown_field"]))
    if kind == "unknown_field":
        parent = draw(st.sampled_from([(), *OBJECTS]))
        name = draw(st.text(string.ascii_lowercase, min_size=3, max_size=10))
        path = (*parent, f"zz{name}")
        if not _reachable(path):
            path = (f"zz{name}",)
        _set(doc, path, 1)
        return doc, format_path(("spec", *path))
    candidates = [(p, s) for p, s in LEAVES if "properties" not in s and s.get("type") and _reachable(p)]
    path, schema = draw(st.sampled_from(candidates))
    value = draw(_wrong_values(schema))
    _set(doc, path, value)
    return doc, format_path(("spec", *path))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad_jobs())
def test_invalid_specs_are_rejected_by_models_and_crd_with_the_path(case):
    doc, path = case
    try:
        parse_job(doc, "job.yaml")
    except InvalidFineTuneJob as exc:
        paths = [p.path for p in exc.problems]
        assert any(p == path or p.startswith((path + ".", path + "[")) for p in paths), (path, paths)
    else:
        raise AssertionError(f"models accepted an invalid value at {path}")
    errors = list(CRD_VALIDATOR.iter_errors(doc))
    assert errors, f"CRD schema accepted an invalid value at {path}"


@settings(max_examples=100, deadline=None)
@given(st.text(string.ascii_lowercase + string.digits + "-", min_size=64, max_size=90))
def test_long_names_are_rejected(name):
    doc = copy.deepcopy(VALID)
    doc["metadata"]["name"] = name
    try:
        parse_job(doc)
    except InvalidFineTuneJob as exc:
        assert [p.path for p in exc.problems] == ["metadata.name"]
    else:
        raise AssertionError("a name over 63 characters was accepted")


def test_the_valid_base_is_valid():
    parse_job(VALID)
    assert not list(CRD_VALIDATOR.iter_errors(VALID))
