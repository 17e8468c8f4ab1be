"""The real operator (kopf) against the API emulator and the Job/kubelet simulator."""

from __future__ import annotations

import copy
from typing import Any

from kubetune.api.v1alpha1 import API_VERSION
from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import OperatorPasses, eventually, status_writes

NS = "default"


def ftj(name: str = "demo", **spec: Any) -> dict[str, Any]:
    body = {
        "stage": "sft",
        "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
        "datasets": [{"name": "identity", "source": "s3://data/identity.json"}],
        "resources": {"nodes": 2, "gpusPerNode": 1},
        "output": {"uri": "s3://out/demo"},
    }
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "FineTuneJob",
        "metadata": {"name": name, "namespace": NS},
        "spec": body,
    }


def status(api: KubeEmulator, name: str = "demo") -> dict[str, Any]:
    return (api.get(FTJ, NS, name) or {}).get("status") or {}


def cond(api: KubeEmulator, ctype: str, name: str = "demo") -> dict[str, Any]:
    return next((c for c in status(api, name).get("conditions", []) if c["type"] == ctype), {})


def events(api: KubeEmulator, name: str = "demo") -> list[tuple[str, str]]:
    return [(e.get("type"), e.get("reason")) for e in api.list("v1/events", NS) if e["involvedObject"]["name"] == name]


async def test_two_node_job_runs_to_success(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj())
    await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "demo"))
    cm = kube_api.get("v1/configmaps", NS, "demo-trainer")
    svc = kube_api.get("v1/services", NS, "demo")
    job = kube_api.get("batch/v1/jobs", NS, "demo")
    owner = kube_api.get(FTJ, NS, "demo")["metadata"]["uid"]
    for child in (cm, svc, job):
        assert child["metadata"]["ownerReferences"][0]["uid"] == owner
    await eventually(lambda: len([p for p in cluster.pods("demo") if p["status"]["phase"] == "Running"]) == 2)
    await eventually(lambda: status(kube_api)["phase"] == "Running")
    assert cond(kube_api, "Reconciling")["status"] == "True" and cond(kube_api, "Ready")["status"] == "False"
    cluster.finish("demo", 0)
    cluster.finish("demo", 1)
    await eventually(lambda: status(kube_api)["phase"] == "Succeeded")
    st = status(kube_api)
    assert st["artifacts"] == {"adapterUri": "s3://out/demo", "manifestUri": "s3://out/demo/manifest.json"}
    assert cond(kube_api, "Ready")["status"] == "True" and cond(kube_api, "Reconciling")["status"] == "False"
    assert st["observedGeneration"] == 1 and st["completionTime"] and st["startTime"]
    await eventually(lambda: ("Normal", "TrainingCompleted") in events(kube_api))
    assert ("Normal", "Training") in events(kube_api)
    # ttlSecondsAfterFinished: the Job controller deletes the finished Job; nothing is trained again
    deleted = operator_passes.mark()
    kube_api.delete("batch/v1/jobs", NS, "demo")
    await operator_passes.settled(kube_api, "demo", lambda p: p.job is None, since=deleted)  # a pass saw it gone
    assert kube_api.get("batch/v1/jobs", NS, "demo") is None and status(kube_api)["phase"] == "Succeeded"


GOLDEN = __import__("pathlib").Path(__file__).parent / "golden"


def golden_status(api: KubeEmulator, name: str, phase: str) -> None:
    """Keep a real FineTuneJob object (timestamps, uids normalised) as tests/operator/golden/status-<phase>.json,
    for the Argo CD health check tests. Regenerate with KUBETUNE_UPDATE_GOLDEN=1."""
    import json
    import os
    import re

    obj = copy.deepcopy(api.get(FTJ, NS, name))
    meta = obj["metadata"]
    meta["uid"] = "00000000-0000-0000-0000-000000000000"
    meta["resourceVersion"] = "1"
    meta.pop("annotations", None)
    obj.get("status", {}).pop("cost", None)  # seconds of running pods depend on the test's timing (status.cost)
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    text = re.sub(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", "2026-01-01T00:00:00Z", text)
    path = GOLDEN / f"status-{phase}.json"
    if os.environ.get("KUBETUNE_UPDATE_GOLDEN"):
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"{path} is missing: run with KUBETUNE_UPDATE_GOLDEN=1"
    assert json.loads(text) == json.loads(path.read_text(encoding="utf-8")), f"status differs from {path}"


async def test_golden_statuses_pending_running_succeeded(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    cluster.start_after = 3600  # pods stay Pending until the test lets them start
    await start_operator()
    kube_api.create(FTJ, ftj("golden", resources={"nodes": 2, "gpusPerNode": 1}))
    await eventually(lambda: status(kube_api, "golden").get("phase") == "Pending" and len(cluster.pods("golden")) == 2)
    await eventually(lambda: status(kube_api, "golden").get("conditions")[1]["reason"] == "PodsPending")
    golden_status(kube_api, "golden", "pending")
    cluster.start_after = 0
    # the operator reacts to each pod: "1 of 2 pods started" first, then both
    await eventually(
        lambda: (
            status(kube_api, "golden").get("phase") == "Running"
            and status(kube_api, "golden")["conditions"][1]["message"] == "2 of 2 pods started"
        )
    )
    golden_status(kube_api, "golden", "running")
    cluster.finish("golden", 0)
    cluster.finish("golden", 1)
    await eventually(lambda: status(kube_api, "golden").get("phase") == "Succeeded")
    golden_status(kube_api, "golden", "succeeded")


async def test_invalid_spec_is_rejected_once_without_children(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    await start_operator()
    # passes the CRD schema, fails a cross-field rule: stage rm needs pairwise data
    kube_api.create(FTJ, ftj("invalid", stage="rm"))
    await eventually(lambda: cond(kube_api, "Validated", "invalid").get("status") == "False")
    valid = cond(kube_api, "Validated", "invalid")
    assert valid["reason"] == "InvalidSpec" and "spec.datasets[0].ranking" in valid["message"]
    assert cond(kube_api, "Stalled", "invalid")["status"] == "True"
    assert status(kube_api, "invalid")["phase"] == "Failed"
    rv, before = int(kube_api.get(FTJ, NS, "invalid")["metadata"]["resourceVersion"]), status(kube_api, "invalid")
    writes = status_writes(kube_api, "invalid")
    # a whole pass over the rejected object (its own status write come back) decides the same: no churn, no retry loop
    await operator_passes.settled(kube_api, "invalid", lambda p: p.rv >= rv)
    assert status_writes(kube_api, "invalid") == writes and status(kube_api, "invalid") == before
    assert (
        kube_api.get("batch/v1/jobs", NS, "invalid") is None
        and kube_api.get("v1/configmaps", NS, "invalid-trainer") is None
    )
    await eventually(lambda: ("Warning", "InvalidSpec") in events(kube_api, "invalid"))
    assert events(kube_api, "invalid").count(("Warning", "InvalidSpec")) == 1
    golden_status(kube_api, "invalid", "invalid")


async def test_garbage_spec_does_not_crash_the_operator(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    bad = ftj("garbage")
    bad["spec"]["model"] = 5
    kube_api.validate_schemas = False  # as if the CRD had no schema: the operator must cope on its own
    kube_api.create(FTJ, bad)
    kube_api.create(FTJ, ftj("fine"))
    await eventually(lambda: cond(kube_api, "Validated", "garbage").get("status") == "False")
    assert "spec.model" in cond(kube_api, "Validated", "garbage")["message"]
    await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "fine"))


async def test_missing_output_uri_without_default(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("noout", output={}))
    await eventually(lambda: cond(kube_api, "Validated", "noout").get("status") == "False")
    assert "spec.output.uri" in cond(kube_api, "Validated", "noout")["message"]


async def test_default_output_uri(kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any) -> None:
    import json

    await start_operator(default_output_uri="s3://results/kubetune/")
    kube_api.create(FTJ, ftj("defout", output={}))
    cm = await eventually(lambda: kube_api.get("v1/configmaps", NS, "defout-trainer"))
    assert json.loads(cm["data"]["trainer.json"])["runtime"]["outputUri"] == "s3://results/kubetune/default/defout"


async def test_failed_job_reports_the_termination_message(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("bad-data"))
    await eventually(lambda: status(kube_api, "bad-data").get("phase") == "Running")
    cluster.finish(
        "bad-data", 0, exit_code=4, message="dataset identity: no valid rows (row 0: missing column 'output')"
    )
    await eventually(lambda: status(kube_api, "bad-data").get("phase") == "Failed")
    failed = cond(kube_api, "Failed", "bad-data")
    assert failed["reason"] == "JobFailed" and "no valid rows" in failed["message"]
    assert cond(kube_api, "Stalled", "bad-data")["status"] == "True"
    assert cond(kube_api, "Ready", "bad-data")["status"] == "False"
    job = kube_api.get("batch/v1/jobs", NS, "bad-data")
    assert any(c["reason"] == "PodFailurePolicy" for c in job["status"]["conditions"]), "exit 4 must not be retried"
    await eventually(lambda: ("Warning", "JobFailed") in events(kube_api, "bad-data"))
    golden_status(kube_api, "bad-data", "failed")


async def test_suspend_and_resume(kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("pause", suspend=True))
    # "the Job is created suspended" at first, then, once the Job is seen: "pods are stopped"
    await eventually(
        lambda: (
            status(kube_api, "pause").get("phase") == "Suspended"
            and status(kube_api, "pause")["conditions"][1]["message"].endswith("pods are stopped")
        )
    )
    assert kube_api.get("batch/v1/jobs", NS, "pause")["spec"]["suspend"] is True and not cluster.pods("pause")
    golden_status(kube_api, "pause", "suspended")
    kube_api.update(FTJ, NS, "pause", {"spec": {"suspend": False}})
    await eventually(lambda: status(kube_api, "pause").get("phase") == "Running")
    assert cond(kube_api, "Stalled", "pause")["status"] == "False", "suspend is not a spec change that needs a retrain"
    kube_api.update(FTJ, NS, "pause", {"spec": {"suspend": True}})
    await eventually(lambda: status(kube_api, "pause").get("phase") == "Suspended")
    await eventually(lambda: not cluster.pods("pause"))
    assert ("Normal", "SuspendedByUser") in events(kube_api, "pause")


async def test_kueue_queue_name_creates_the_job_suspended(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("queued", queueName="team-a"))
    job = await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "queued"))
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    await eventually(lambda: cond(kube_api, "Reconciling", "queued").get("reason") == "Queued")
    assert status(kube_api, "queued")["phase"] == "Pending"
    admitted = kube_api.update("batch/v1/jobs", NS, "queued", {"spec": {"suspend": False}})  # Kueue admits it
    await eventually(lambda: status(kube_api, "queued").get("phase") == "Running")
    admitted_rv = int(admitted["metadata"]["resourceVersion"])
    await operator_passes.settled(
        kube_api, "queued", lambda p: p.poll and p.job and int(p.job["metadata"]["resourceVersion"]) >= admitted_rv
    )  # a resync pass (after the event-triggered one) saw the admitted Job
    assert kube_api.get("batch/v1/jobs", NS, "queued")["spec"]["suspend"] is False, "the operator must not fight Kueue"


async def test_spec_change_after_start_is_rejected(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("fixed"))
    await eventually(lambda: status(kube_api, "fixed").get("phase") == "Running")
    job_before = kube_api.get("batch/v1/jobs", NS, "fixed")
    kube_api.update(FTJ, NS, "fixed", {"spec": {"training": {"learningRate": 0.5}}})
    await eventually(lambda: cond(kube_api, "Stalled", "fixed").get("reason") == "SpecChangedAfterStart")
    assert status(kube_api, "fixed")["observedGeneration"] == 2
    assert kube_api.get("batch/v1/jobs", NS, "fixed")["metadata"]["uid"] == job_before["metadata"]["uid"]
    assert '"learningRate": 0.5' not in kube_api.get("v1/configmaps", NS, "fixed-trainer")["data"]["trainer.json"]
    await eventually(lambda: ("Warning", "SpecChangedAfterStart") in events(kube_api, "fixed"))


async def test_deletion_cleans_up_through_owner_references(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("gone"))
    await eventually(lambda: len(cluster.pods("gone")) == 2)
    kube_api.delete(FTJ, NS, "gone")
    await eventually(lambda: kube_api.get(FTJ, NS, "gone") is None)  # the operator released its finalizer
    assert kube_api.get("batch/v1/jobs", NS, "gone") is None
    assert (
        kube_api.get("v1/configmaps", NS, "gone-trainer") is None and kube_api.get("v1/services", NS, "gone") is None
    )
    assert not cluster.pods("gone")


async def test_operator_restart_creates_no_duplicates(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    operator = await start_operator()
    kube_api.create(FTJ, ftj("restart"))
    await eventually(lambda: status(kube_api, "restart").get("phase") == "Running")
    job_uid = kube_api.get("batch/v1/jobs", NS, "restart")["metadata"]["uid"]
    await operator.stop()
    kube_api.update(FTJ, NS, "restart", {"status": {"phase": "Pending"}}, status=True)  # stale status from a crash
    await start_operator()
    await eventually(lambda: status(kube_api, "restart").get("phase") == "Running")
    assert len(kube_api.list("batch/v1/jobs", NS)) == 1 and len(kube_api.list("v1/configmaps", NS)) == 1
    assert kube_api.get("batch/v1/jobs", NS, "restart")["metadata"]["uid"] == job_uid
    cluster.finish("restart", 0)
    cluster.finish("restart", 1)
    await eventually(lambda: status(kube_api, "restart").get("phase") == "Succeeded")


async def test_missing_secret_waits(kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("creds", output={"uri": "s3://out/creds", "credentialsSecret": "s3-writer"}))
    await eventually(lambda: cond(kube_api, "Waiting", "creds").get("reason") == "SecretMissing")
    assert "s3-writer" in cond(kube_api, "Waiting", "creds")["message"]
    assert status(kube_api, "creds")["phase"] == "Pending" and kube_api.get("batch/v1/jobs", NS, "creds") is None
    kube_api.create(
        "v1/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "s3-writer", "namespace": NS},
            "stringData": {"AWS_ACCESS_KEY_ID": "x"},
        },
    )
    job = await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "creds"))
    assert job["spec"]["template"]["spec"]["containers"][0]["envFrom"] == [{"secretRef": {"name": "s3-writer"}}]
    await eventually(lambda: cond(kube_api, "Waiting", "creds").get("status") == "False")


async def test_status_follows_watch_events_not_the_sync_interval(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    """With a one-hour resync (its first pass an hour away), every step happens: each watch event reconciles."""
    await start_operator(sync_interval=3600)
    kube_api.create(FTJ, ftj("quick", resources={"nodes": 1, "gpusPerNode": 1}))
    await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "quick"))
    await eventually(lambda: status(kube_api, "quick").get("phase") == "Running")
    cluster.finish("quick", 0)
    await eventually(lambda: status(kube_api, "quick").get("phase") == "Succeeded")
    assert kube_api.get(FTJ, NS, "quick")["metadata"].get("finalizers") is None, "standalone: no kopf finalizer"
    # the phase events, once each; no flapping back to Pending between the pod finishing and the Job completing
    done = int(kube_api.get(FTJ, NS, "quick")["metadata"]["resourceVersion"])
    await operator_passes.settled(kube_api, "quick", lambda p: p.rv >= done)  # its Events are posted by now
    phases = sorted(r for t, r in events(kube_api, "quick"))
    assert phases == ["ChildrenCreated", "Training", "TrainingCompleted"], phases
