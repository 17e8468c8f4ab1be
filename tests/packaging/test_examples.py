"""The cluster examples: every document is a valid object for its API (FineTuneJobs against the models
and the CRD, built-in kinds against the Kubernetes 1.30/1.37 schemas), and the children the operator
builds for each FineTuneJob are valid and meet Pod Security "restricted"."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubetune.api.crdgen import crd_json_schema
from kubetune.api.validation import load_jobs, parse_job
from kubetune.operator.manifests import BuildOptions, build_all
from kubetune.operator.manifests.labels import QUEUE_LABEL
from tests.chart.podsecurity import pod_spec_of, violations

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_EXAMPLES = ["multinode-deepspeed.yaml", "qlora.yaml", "kueue.yaml", "s3-output.yaml"]
OPTIONS = BuildOptions(trainer_image="ghcr.io/kubetune/kubetune-trainer:0.1.0")
KUEUE_KINDS = {"ResourceFlavor", "ClusterQueue", "LocalQueue"}


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if d]


@pytest.mark.parametrize("name", CLUSTER_EXAMPLES)
@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_every_document_is_valid(name, version):
    schema = crd_json_schema()
    docs = _docs(name)
    assert any(d["kind"] == "FineTuneJob" for d in docs)
    for doc in docs:
        if doc["kind"] == "FineTuneJob":
            parse_job(doc, name)
            jsonschema.Draft4Validator(schema).validate(doc)
        elif doc["kind"] in KUEUE_KINDS:
            assert doc["apiVersion"] == "kueue.x-k8s.io/v1beta1"
        else:
            kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("name", CLUSTER_EXAMPLES)
def test_operator_children_are_valid_and_restricted(name):
    for job in load_jobs(ROOT / "examples" / name):
        for child in build_all(job, OPTIONS):
            kubernetes_validate.validate(child, "1.37.0", strict=True)
            pod = pod_spec_of(child)
            if pod is not None:
                # readOnlyRootFilesystem is not part of "restricted"; the trainer writes caches under $HOME
                assert violations(pod, read_only_root=False) == [], (name, child["metadata"]["name"])


def test_multinode_example_asks_for_two_eight_gpu_pods():
    (job,) = load_jobs(ROOT / "examples" / "multinode-deepspeed.yaml")
    k8s_job = next(c for c in build_all(job, OPTIONS) if c["kind"] == "Job")
    assert k8s_job["spec"]["completions"] == k8s_job["spec"]["parallelism"] == 2
    assert k8s_job["spec"]["completionMode"] == "Indexed"
    limits = k8s_job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "8"
    assert job.spec.distributed.strategy == "deepspeed" and job.spec.distributed.zero_stage == 3


def test_kueue_example_job_is_queued_and_suspended():
    (job,) = load_jobs(ROOT / "examples" / "kueue.yaml")
    k8s_job = next(c for c in build_all(job, OPTIONS) if c["kind"] == "Job")
    local_queue = next(d for d in _docs("kueue.yaml") if d["kind"] == "LocalQueue")
    assert k8s_job["metadata"]["labels"][QUEUE_LABEL] == local_queue["metadata"]["name"] == job.spec.queue_name
    assert k8s_job["spec"]["suspend"] is True
    cluster_queue = next(d for d in _docs("kueue.yaml") if d["kind"] == "ClusterQueue")
    assert local_queue["spec"]["clusterQueue"] == cluster_queue["metadata"]["name"]
    flavors = {d["metadata"]["name"] for d in _docs("kueue.yaml") if d["kind"] == "ResourceFlavor"}
    assert {f["name"] for g in cluster_queue["spec"]["resourceGroups"] for f in g["flavors"]} == flavors


def test_qlora_example_quantizes_to_four_bits():
    (job,) = load_jobs(ROOT / "examples" / "qlora.yaml")
    assert job.spec.method.type == "qlora" and job.spec.quantization.bits == 4


def test_s3_example_secret_holds_what_the_trainer_reads_and_is_only_referenced():
    docs = _docs("s3-output.yaml")
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    (job,) = load_jobs(ROOT / "examples" / "s3-output.yaml")
    assert job.spec.output.credentials_secret == secret["metadata"]["name"]
    assert job.spec.output.uri.startswith("s3://")
    rendered = yaml.safe_dump_all(build_all(job, OPTIONS))
    assert secret["metadata"]["name"] in rendered
    for key, value in secret["stringData"].items():
        assert value not in rendered, f"the Secret's {key} value leaked into the operator's children"
