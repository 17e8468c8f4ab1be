"""Pure builders: golden files, contract invariants, and the real Kubernetes schemas.

Regenerate the golden files after an intended change with
``KUBETUNE_UPDATE_GOLDEN=1 pytest tests/operator/test_manifests.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from kubetune.api import TrainerConfig
from kubetune.api.conditions import NON_RETRYABLE_EXIT_CODES
from kubetune.api.validation import load_jobs
from kubetune.operator.manifests import (
    BuildOptions,
    MissingOutput,
    Resolved,
    build_all,
    output_uri,
    spec_hash,
    to_yaml,
)
from kubetune.operator.manifests.labels import FINETUNEJOB_LABEL

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
GOLDEN = HERE / "golden"
OPTIONS = BuildOptions(
    trainer_image="ghcr.io/kubetune/kubetune-trainer:test", default_output_uri="pvc://outputs/kubetune"
)
CASES = {
    "quickstart": ROOT / "examples" / "quickstart.yaml",
    "multinode": HERE / "fixtures" / "multinode.yaml",
    "pipeline": HERE / "fixtures" / "pipeline.yaml",
}
K8S_VERSIONS = ("1.30.0", "1.37.0")


def render(case: str) -> list[dict]:
    (job,) = load_jobs(CASES[case])
    return build_all(job, OPTIONS)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    text = to_yaml(render(case))
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("KUBETUNE_UPDATE_GOLDEN"):
        golden.write_text(text, encoding="utf-8")
    assert golden.exists(), f"{golden} is missing: run with KUBETUNE_UPDATE_GOLDEN=1"
    assert text == golden.read_text(encoding="utf-8"), f"{case}: rendered manifests differ from {golden}"


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_valid_against_kubernetes_schemas(case: str, version: str) -> None:
    for obj in render(case):
        # raises ValidationError naming the first bad field
        kubernetes_validate.validate(obj, version, strict=True)


def test_schema_check_catches_a_bad_field() -> None:
    job = render("quickstart")[2]
    job["spec"]["template"]["spec"]["containers"][0]["envFrm"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, "1.37.0", strict=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_labels_names_and_namespace(case: str) -> None:
    (job,) = load_jobs(CASES[case])
    objs = render(case)
    assert [o["kind"] for o in objs] == ["ConfigMap", "Service", "Job"]
    for obj in objs:
        meta = obj["metadata"]
        assert meta["namespace"] == (job.metadata.namespace or "default")
        assert meta["labels"][FINETUNEJOB_LABEL] == job.metadata.name
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "kubetune-operator"
        assert len(meta["name"]) <= 63
    svc, kjob = objs[1], objs[2]
    pod_labels = kjob["spec"]["template"]["metadata"]["labels"]
    assert all(pod_labels[k] == v for k, v in svc["spec"]["selector"].items()), "Service must select the pods"
    assert kjob["spec"]["template"]["spec"]["subdomain"] == svc["metadata"]["name"]


def _env(kjob: dict) -> dict:
    return {
        e["name"]: e.get("value", e.get("valueFrom")) for e in kjob["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_multinode_job_contract() -> None:
    cm, svc, kjob = render("multinode")
    spec = kjob["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 2
    assert (
        spec["backoffLimit"] == 5
        and spec["activeDeadlineSeconds"] == 86400
        and spec["ttlSecondsAfterFinished"] == 3600
    )
    assert spec["suspend"] is True, "a Kueue job is created suspended"
    assert kjob["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    fail = spec["podFailurePolicy"]["rules"][0]
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["values"] == list(NON_RETRYABLE_EXIT_CODES)
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "registry.example.com/kubetune-trainer:custom"
    assert container["command"] == ["kubetune-train", "--config", "/etc/kubetune/trainer.json"]
    assert container["resources"]["limits"]["amd.com/gpu"] == "8"
    env = _env(kjob)
    assert env["NNODES"] == "2" and env["NPROC_PER_NODE"] == "8" and env["MASTER_PORT"] == "29500"
    assert env["MASTER_ADDR"] == "llama-sft-0.llama-sft"
    assert "job-completion-index" in env["NODE_RANK"]["fieldRef"]["fieldPath"]
    assert env["KUBETUNE_TERMINATION_LOG"] == "/dev/termination-log"
    assert container["envFrom"] == [{"secretRef": {"name": "hf-token"}}, {"secretRef": {"name": "s3-writer"}}]
    assert not any("secret" in json.dumps(e).lower() and "value" in e for e in container["env"]), "no inline secrets"
    assert pod["nodeSelector"] and pod["tolerations"] and pod["affinity"] and pod["priorityClassName"] == "training"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "64Gi"}
    assert volumes[mounts["/var/cache/kubetune"]]["persistentVolumeClaim"] == {"claimName": "model-cache"}
    assert volumes[mounts["/etc/kubetune"]]["configMap"]["name"] == cm["metadata"]["name"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {29500, 9400} and svc["spec"]["clusterIP"] == "None"


def test_configmap_holds_the_trainer_config() -> None:
    cm = render("multinode")[0]
    config = TrainerConfig.model_validate(json.loads(cm["data"]["trainer.json"]))
    assert config.runtime.job_name == "llama-sft" and config.runtime.namespace == "team-a"
    assert config.runtime.output_uri == "s3://models/llama-sft"
    assert config.runtime.metrics_port == 9400
    assert config.spec.resources.nodes == 2


def test_cpu_job_runs_one_process_and_requests_no_gpu() -> None:
    kjob = render("quickstart")[2]
    assert _env(kjob)["NPROC_PER_NODE"] == "1"
    assert "limits" not in kjob["spec"]["template"]["spec"]["containers"][0]["resources"]


def test_default_output_and_pvc_mounts() -> None:
    (job,) = load_jobs(CASES["pipeline"])
    assert output_uri(job, OPTIONS) == "pvc://outputs/kubetune/ml/0-dpo-after-sft"
    with pytest.raises(MissingOutput, match="spec.output.uri"):
        output_uri(job, BuildOptions())
    _cm, svc, kjob = render("pipeline")
    assert svc["metadata"]["name"] == "ftj-0-dpo-after-sft", "a Service name must start with a letter"
    pod = kjob["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["pvc-models"]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
    assert vols["pvc-outputs"]["persistentVolumeClaim"] == {"claimName": "outputs"}
    assert vols["cm-prefs"]["configMap"] == {"name": "prefs"}
    assert kjob["spec"]["suspend"] is True


def test_upstream_adapter_is_resolved_into_the_config() -> None:
    (job,) = load_jobs(CASES["pipeline"])
    cm = build_all(job, OPTIONS, Resolved(output_uri="s3://out/x", adapter_source="s3://out/sft-base"))[0]
    config = json.loads(cm["data"]["trainer.json"])
    assert config["spec"]["model"]["adapter"] == {"source": "s3://out/sft-base"}
    assert config["runtime"]["outputUri"] == "s3://out/x"


def test_long_names_fit_pod_hostnames() -> None:
    (job,) = load_jobs(CASES["quickstart"])
    long = job.model_copy(update={"metadata": job.metadata.model_copy(update={"name": "a" * 63})})
    cm, _svc, kjob = build_all(long, OPTIONS)
    assert len(kjob["metadata"]["name"]) + len("-1023") <= 63
    assert len(cm["metadata"]["name"]) <= 63


def test_spec_hash_ignores_suspend() -> None:
    spec = yaml.safe_load(CASES["pipeline"].read_text())["spec"]
    assert spec_hash(spec) == spec_hash({**spec, "suspend": False})
    assert spec_hash(spec) != spec_hash({**spec, "stage": "sft"})


def test_kubetune_render_prints_the_children(capsys: pytest.CaptureFixture[str]) -> None:
    from kubetune.cli import main

    assert main(["render", str(CASES["multinode"]), "--trainer-image", OPTIONS.trainer_image]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert docs == render("multinode")
    assert main(["render", str(CASES["pipeline"])]) == 1
    assert "spec.output.uri" in capsys.readouterr().err
    assert main(["render", str(CASES["pipeline"]), "--default-output-uri", "s3://b/p", "-n", "other"]) == 0
    assert {d["metadata"]["namespace"] for d in yaml.safe_load_all(capsys.readouterr().out)} == {"other"}


def test_default_storage_secret_applies_only_when_the_job_names_none() -> None:
    import dataclasses

    from kubetune.operator.manifests.job import credential_secrets

    options = dataclasses.replace(OPTIONS, default_credentials_secret="kubetune-storage")
    (job,) = load_jobs(CASES["quickstart"])
    kjob = build_all(job, options)[2]
    env_from = kjob["spec"]["template"]["spec"]["containers"][0]["envFrom"]
    assert env_from == [{"secretRef": {"name": "kubetune-storage"}}]
    named = job.model_copy(
        update={
            "spec": job.spec.model_copy(
                update={"output": job.spec.output.model_copy(update={"credentials_secret": "team-s3"})}
            )
        }
    )
    assert credential_secrets(named, options) == ["team-s3"]
    assert credential_secrets(job) == []


def test_spec_hash_ignores_defaults_so_new_defaulted_fields_do_not_look_like_changes() -> None:
    """Hashed without defaults: a field an upgrade adds with its default (here written out explicitly) keeps the
    hash the children of a running job were annotated with; a real change does not."""
    from kubetune.api.validation import parse_job

    doc = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    with_default = yaml.safe_load((ROOT / "examples" / "quickstart.yaml").read_text())
    with_default["spec"].setdefault("checkpointing", {})["keepAfterSuccess"] = False
    assert spec_hash(parse_job(doc).spec) == spec_hash(parse_job(with_default).spec)
    with_default["spec"]["checkpointing"]["keepAfterSuccess"] = True
    assert spec_hash(parse_job(doc).spec) != spec_hash(parse_job(with_default).spec)
