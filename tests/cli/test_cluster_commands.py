"""`kubetune submit/get/logs/wait/cancel` and :mod:`kubetune.client` against the API emulator, with the real operator
and the cluster simulator finishing the pods."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.cli import main
from kubetune.client import JobFailed, KubetuneClient, KubetuneError, WaitTimeout
from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import eventually

INDEX = "batch.kubernetes.io/job-completion-index"


def job_doc(name: str, nodes: int = 1, **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kubetune.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name, **meta},
        "spec": {
            "stage": "sft",
            "model": {"source": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"},
            "datasets": [{"name": "identity", "source": "s3://datasets/identity.json"}],
            "resources": {"nodes": nodes, "gpusPerNode": 1},
            "output": {"uri": f"s3://models/{name}"},
        },
    }


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = await asyncio.to_thread(main, list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def phase(kube_api: KubeEmulator, name: str, ns: str = "default") -> str | None:
    return ((kube_api.get(FTJ, ns, name) or {}).get("status") or {}).get("phase")


def rank_pod(cluster: ClusterSimulator, job: str, index: int) -> dict[str, Any]:
    pods = [
        p
        for p in cluster.pods(job)
        if p["metadata"]["annotations"][INDEX] == str(index) and p["status"]["phase"] == "Running"
    ]
    assert pods, f"no running pod of {job} rank {index}"
    return pods[-1]


async def test_cli_submit_get_logs_wait_cancel(
    kube_api: KubeEmulator,
    cluster: ClusterSimulator,
    start_operator: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await start_operator()
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_doc("two", nodes=2)), encoding="utf-8")
    rc, out, err = await cli(capsys, "submit", str(path))
    assert rc == 0, err
    assert "finetunejob.kubetune.io/two submitted in namespace default" in out
    assert kube_api.get(FTJ, "default", "two")["spec"]["resources"]["nodes"] == 2

    # submitting again applies (no AlreadyExists); a changed field lands
    doc = job_doc("two", nodes=2)
    doc["spec"]["training"] = {"epochs": 2}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    rc, out, err = await cli(capsys, "submit", str(path), "-n", "default")
    assert rc == 0, err
    assert kube_api.get(FTJ, "default", "two")["spec"]["training"]["epochs"] == 2

    await eventually(lambda: len([p for p in cluster.pods("two") if p["status"]["phase"] == "Running"]) == 2)
    await eventually(lambda: phase(kube_api, "two") == "Running")
    rc, out, err = await cli(capsys, "get")
    assert rc == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split() == ["NAME", "STAGE", "PHASE", "PROGRESS", "LOSS", "ETA", "AGE"]
    assert [r.split()[:3] for r in rows] == [["two", "sft", "Running"]]

    rc, out, err = await cli(capsys, "get", "two")
    assert rc == 0, err
    assert "Phase:      Running" in out and "Conditions:" in out and "Reconciling" in out

    for index in (0, 1):
        pod = rank_pod(cluster, "two", index)
        kube_api.pod_logs[("default", pod["metadata"]["name"])] = f"rank {index} line 1\nrank {index} line 2\n"
    rc, out, err = await cli(capsys, "logs", "two")
    assert rc == 0, err
    assert out.splitlines() == ["rank 0 line 1", "rank 0 line 2"]
    rc, out, err = await cli(capsys, "logs", "two", "--rank", "1")
    assert rc == 0 and out.splitlines() == ["rank 1 line 1", "rank 1 line 2"], err
    rc, out, err = await cli(capsys, "logs", "two", "--rank", "5")
    assert rc == 1 and "no pod of rank 5" in err and len(err.strip().splitlines()) == 1

    rc, out, err = await cli(capsys, "wait", "two", "--timeout", "0")
    assert rc == 124 and "still Running" in err, err

    waiter = asyncio.create_task(cli(capsys, "wait", "two", "--timeout", "60"))
    for index in (0, 1):
        cluster.finish("two", index)
    rc, out, err = await waiter
    assert rc == 0, err
    assert "finetunejob.kubetune.io/two Succeeded" in out

    rc, out, err = await cli(capsys, "cancel", "two")
    assert rc == 0 and "finetunejob.kubetune.io/two deleted" in out, err
    await eventually(
        lambda: kube_api.get(FTJ, "default", "two") is None and kube_api.get("batch/v1/jobs", "default", "two") is None
    )
    rc, out, err = await cli(capsys, "get", "two")
    assert rc == 1 and "not found" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


async def test_cli_wait_on_a_failing_job(
    kube_api: KubeEmulator,
    cluster: ClusterSimulator,
    start_operator: Any,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await start_operator()
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(job_doc("bad-data")), encoding="utf-8")
    assert (await cli(capsys, "submit", str(path)))[0] == 0
    await eventually(lambda: phase(kube_api, "bad-data") == "Running")
    waiter = asyncio.create_task(cli(capsys, "wait", "bad-data"))
    cluster.finish(
        "bad-data", 0, exit_code=4, message="dataset identity: no valid rows (row 0: missing column 'output')"
    )
    rc, out, err = await waiter
    assert rc == 1, (out, err)
    # the reason: the trainer's termination message, or (when the operator judged before it saw the pod) the Job's
    assert "kubetune wait: FineTuneJob default/bad-data failed: JobFailed: " in err, err
    assert "no valid rows" in err or "exit code 4" in err, err
    assert len(err.strip().splitlines()) == 1

    def failed_message() -> str:
        conds = kube_api.get(FTJ, "default", "bad-data")["status"]["conditions"]
        return next(c["message"] for c in conds if c["type"] == "Failed")

    await eventually(lambda: "no valid rows" in failed_message())
    rc, out, _ = await cli(capsys, "get", "bad-data")
    assert "Phase:      Failed" in out and "no valid rows" in out
    rc, _, err = await cli(capsys, "wait", "bad-data")
    assert rc == 1 and "no valid rows" in err


async def test_cli_refuses_bad_input_before_the_api(
    kube_api: KubeEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = job_doc("typo")
    doc["spec"]["resources"]["gpusPerNod"] = 1
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    rc, _, err = await cli(capsys, "submit", str(path))
    assert rc == 1 and "gpusPerNod" in err and len(err.strip().splitlines()) == 1, err
    assert kube_api.get(FTJ, "default", "typo") is None
    rc, _, err = await cli(capsys, "submit", str(tmp_path / "missing.yaml"))
    assert rc == 1 and "no such file" in err
    rc, _, err = await cli(capsys, "wait", "nothing-here")
    assert rc == 1 and "not found" in err and len(err.strip().splitlines()) == 1
    rc, _, err = await cli(capsys, "get", "x", "--kubeconfig", str(tmp_path / "nope"))
    assert rc == 1 and "does not exist" in err


async def test_cli_without_any_kubeconfig_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    rc, _, err = await cli(capsys, "get")
    assert rc == 1 and "no kubeconfig" in err and len(err.strip().splitlines()) == 1


async def test_client_api(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, tmp_path: Path
) -> None:
    await start_operator()
    kt = await asyncio.to_thread(KubetuneClient)
    assert kt.namespace == "default"

    # a pydantic model, a dict and a YAML string are all accepted; invalid ones never reach the server
    model = FineTuneJob.model_validate(job_doc("from-model"))
    submitted = await asyncio.to_thread(kt.submit, model)
    assert submitted.name == "from-model" and submitted.namespace == "default"
    await asyncio.to_thread(kt.submit, job_doc("from-dict", namespace="default"))
    await asyncio.to_thread(kt.submit, yaml.safe_dump(job_doc("from-yaml")))
    with pytest.raises(KubetuneError, match="spec.resources.nodes"):
        bad = job_doc("bad")
        bad["spec"]["resources"]["nodes"] = 0
        await asyncio.to_thread(kt.submit, bad)
    with pytest.raises(KubetuneError, match="namespace other"):
        await asyncio.to_thread(kt.submit, job_doc("elsewhere", namespace="other"), "default")
    assert kube_api.get(FTJ, "default", "bad") is None
    assert [j.name for j in await asyncio.to_thread(kt.list)] == ["from-dict", "from-model", "from-yaml"]

    await eventually(lambda: phase(kube_api, "from-model") == "Running")
    job = await asyncio.to_thread(kt.get, "from-model")
    assert job.phase == "Running" and job.condition("Reconciling") is not None and job.stage == "sft"
    with pytest.raises(WaitTimeout, match="still Running"):
        await asyncio.to_thread(kt.wait, "from-model", 0.1, None, 0.05)

    pod = rank_pod(cluster, "from-model", 0)
    kube_api.pod_logs[("default", pod["metadata"]["name"])] = "step 1 loss 2.0\nstep 2 loss 1.5\n"
    assert await asyncio.to_thread(lambda: list(kt.logs("from-model"))) == ["step 1 loss 2.0", "step 2 loss 1.5"]

    # follow: the stream of the running pod, then (it ends) polling until the job finishes
    lines: list[str] = []

    def follow() -> None:
        lines.extend(kt.logs("from-model", follow=True, poll_interval=0.05))

    follower = asyncio.create_task(asyncio.to_thread(follow))
    await eventually(lambda: len(lines) == 2)
    assert not follower.done()
    cluster.finish("from-model", 0)
    done = await asyncio.to_thread(kt.wait, "from-model", 60, None, 0.05)
    assert done.phase == "Succeeded" and done.condition("Succeeded").status == "True"
    await asyncio.wait_for(follower, 30)
    assert lines == ["step 1 loss 2.0", "step 2 loss 1.5"]

    # the manifest: through the trainer's storage code, from status.artifacts.manifestUri
    with pytest.raises(KubetuneError, match="has no manifest yet"):
        await asyncio.to_thread(kt.manifest, "from-dict")
    manifest = tmp_path / "out" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"files": ["adapter_model.safetensors"]}), encoding="utf-8")
    kube_api.update(
        FTJ, "default", "from-dict", {"status": {"artifacts": {"manifestUri": manifest.as_uri()}}}, status=True
    )
    await eventually(
        lambda: (kube_api.get(FTJ, "default", "from-dict")["status"].get("artifacts") or {}).get("manifestUri")
    )
    assert (await asyncio.to_thread(kt.manifest, "from-dict"))["files"] == ["adapter_model.safetensors"]

    # a failure is raised with the reason; cancel deletes; a deleted job is a clear error
    await eventually(lambda: phase(kube_api, "from-yaml") == "Running")
    cluster.finish("from-yaml", 0, exit_code=4, message="training.rewardModel: bad config")
    with pytest.raises(JobFailed, match="bad config") as failed:
        await asyncio.to_thread(kt.wait, "from-yaml", 60, None, 0.05)
    assert failed.value.job is not None and failed.value.job.phase == "Failed"
    for name in ("from-model", "from-dict", "from-yaml"):
        await asyncio.to_thread(kt.cancel, name)
    await eventually(lambda: not kube_api.list(FTJ, "default"))
    with pytest.raises(KubetuneError, match="not found"):
        await asyncio.to_thread(kt.cancel, "from-model")
