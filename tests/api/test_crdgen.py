"""The committed CRD is generated from the models (drift check), structural, and accepts the examples."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import pytest
import yaml

from kubetune.api.crdgen import CHART_TEMPLATE, CRD_FILE, build_crd, crd_json_schema, render_chart_template, render_crd
from kubetune.api.validation import load_documents, parse_job

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


def test_committed_crd_matches_the_models():
    committed = (ROOT / "crds" / CRD_FILE).read_text()
    assert committed == render_crd(), "crds/ drifted from kubetune.api: run `make generate`"


def test_chart_copy_matches_when_the_chart_exists():
    chart = ROOT / "charts" / "kubetune"
    if not chart.exists():
        pytest.skip("no chart yet")
    assert (chart / CHART_TEMPLATE).read_text() == render_chart_template(), "run `make generate`"


def _walk(node, path="$"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def test_schema_is_structural():
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if not isinstance(node, dict) or path.endswith(".properties") or "x-kubernetes-validations" in path:
            continue
        assert "$ref" not in node and "anyOf" not in node and "oneOf" not in node and "title" not in node, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
            assert node.get("type") == "object", path
        if node.get("x-kubernetes-preserve-unknown-fields") is None and path.count(".properties.") > 0:
            assert "type" in node, path


def test_every_field_has_a_description():
    spec = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    missing = [
        p
        for p, n in _walk(spec)
        if isinstance(n, dict)
        and ".properties." in p
        and not p.endswith(".properties")
        and p.rsplit(".", 2)[-2] == "properties"
        and "description" not in n
    ]
    assert not missing, missing


def test_printer_columns_and_names():
    crd = build_crd()
    version = crd["spec"]["versions"][0]
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns if not c.get("priority")] == [
        "Stage",
        "Phase",
        "Progress",
        "Loss",
        "ETA",
        "Age",
    ]
    # kubectl get ftj -o wide adds the cost and the guard's rollbacks; each path exists in the status schema
    assert [c["name"] for c in columns if c.get("priority") == 1] == [
        "GPU-Hours",
        "Tokens/GPU-h",
        "Cost",
        "Projected",
        "Rollbacks",
        "Promoted",
    ]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    for column in columns:
        if column["jsonPath"].startswith(".status."):
            node = status
            for part in column["jsonPath"].split(".")[2:]:
                node = node["properties"][part]
            assert node["type"] == column["type"] or (node["type"], column["type"]) == ("number", "string"), column
    assert version["subresources"] == {"status": {}}
    assert crd["spec"]["names"]["shortNames"] == ["ftj"]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_models_and_crd(path):
    schema = crd_json_schema()
    for doc in load_documents(path):
        if doc.get("kind") != "FineTuneJob":
            continue
        parse_job(doc, str(path))
        jsonschema.Draft4Validator(schema).validate(doc)


def test_crd_schema_rejects_what_the_models_reject():
    schema = crd_json_schema()
    bad = yaml.safe_load(
        "apiVersion: kubetune.io/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\n"
        "spec: {stage: nope, model: {source: 'hf://a/b'}, method: {lora: {rank: 0, bogus: 1}}}"
    )
    errors = list(jsonschema.Draft4Validator(schema).iter_errors(bad))
    messages = " ".join(e.message for e in errors)
    assert "'nope' is not one of" in messages
    assert "bogus" in messages
    assert any(list(e.absolute_path)[-1] == "rank" for e in errors)
