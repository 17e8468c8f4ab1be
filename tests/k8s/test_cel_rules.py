"""Admission-time validation on the real API server: the CRD's CEL rules (generated from the models by
kubetune.api.crdgen) are accepted (their estimated cost fits the server's budget), refuse each broken cross-field
rule at once with the field path, accept every example, and keep the spec immutable once training started."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.api.test_cel_rules import CASES, doc, spec_of
from tests.harness.realcluster import FTJ, ROOT, ApiError, K8s

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))


@pytest.mark.parametrize("case", sorted(CASES))
async def test_kubectl_apply_of_a_broken_rule_fails_at_once_with_the_path(k8s: K8s, tmp_path: Path, case: str) -> None:
    changes, fragment, path = CASES[case]
    body = doc(spec_of(changes))
    body["metadata"]["namespace"] = k8s.ns
    file = tmp_path / "bad.yaml"
    file.write_text(yaml.safe_dump(body), encoding="utf-8")
    out = await k8s.kubectl("apply", "-f", str(file), check=False)
    assert "is invalid" in out and fragment in out and f"{path}:" in out, out
    assert k8s.get(FTJ, "cel") is None


async def test_every_example_is_accepted(k8s: K8s) -> None:
    for path in EXAMPLES:
        docs = [
            d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d and d.get("kind") == "FineTuneJob"
        ]
        for d in docs:
            d["metadata"]["namespace"] = k8s.ns
            out = await k8s.kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump(d), check=False)
            assert "created (server dry run)" in out, f"{path.name}: {out}"


def _patch(k8s: K8s, patch: dict[str, Any], sub: str | None = None) -> Any:
    return k8s.api.patch(FTJ, k8s.ns, "frozen", patch, sub=sub)


async def test_the_spec_is_immutable_once_the_job_exists_but_suspend(k8s: K8s) -> None:
    k8s.create(k8s.ftj("frozen"))
    _patch(k8s, {"spec": {"training": {"learningRate": 0.001}}})  # before start: any change
    _patch(k8s, {"status": {"jobName": "frozen", "phase": "Running"}}, sub="status")
    with pytest.raises(ApiError) as err:
        _patch(k8s, {"spec": {"training": {"learningRate": 0.002}}})
    assert "spec.training" in str(err.value) and "cannot change once the training Job exists" in str(err.value)
    with pytest.raises(ApiError):
        _patch(k8s, {"spec": {"model": {"revision": "main"}}})
    _patch(k8s, {"spec": {"suspend": True}})
    _patch(k8s, {"metadata": {"labels": {"team": "nlp"}}})
    assert k8s.get(FTJ, "frozen")["spec"]["suspend"] is True
