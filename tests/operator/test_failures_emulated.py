"""The real operator (kopf) on the emulator, on the failure paths of issue 14 and 20 that a fault injection can show
without a real API server: a refused child, an exception on the decision path, an earlier object's children, a
Job suspended by someone else, a hung API call, watches, long non-ASCII Events. The real-server versions are in
tests/k8s/test_operator_bugs.py."""

from __future__ import annotations

import asyncio
from typing import Any

from kubetune.api.conditions import Reason
from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator
from tests.harness.fixtures import OperatorPasses, eventually, status_writes
from tests.operator.test_lifecycle import NS, cond, events, ftj, status


def requests(api: KubeEmulator, method: str, resource: str) -> int:
    return sum(
        1
        for r in api
        if r.resource is not None
        and r.resource.plural == resource
        and str(getattr(r.method, "value", r.method)).upper() == method
    )


async def test_watches_of_pods_and_jobs_select_kubetune_children_on_the_server(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("sel"))
    await eventually(lambda: status(kube_api, "sel").get("phase") == "Running")
    selectors = {
        r.resource.plural: r.params.get("labelSelector")
        for r in kube_api
        if r.resource is not None
        and r.resource.plural in ("pods", "jobs")
        and r.params.get("watch", "").lower() in ("true", "1")
    }
    assert selectors.get("jobs") == "kubetune.io/finetunejob", selectors
    assert set((selectors.get("pods") or "").split(",")) == {
        "kubetune.io/finetunejob",
        "app.kubernetes.io/component=trainer",
    }


async def test_a_refused_job_fails_the_finetunejob_once_without_retries(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    kube_api.inject("POST", "batch/v1/jobs", code=403, reason="Forbidden", count=100)
    await start_operator()
    kube_api.create(FTJ, ftj("quota"))
    await eventually(lambda: cond(kube_api, "Stalled", "quota").get("reason") == Reason.CHILD_REJECTED)
    stalled = cond(kube_api, "Stalled", "quota")
    assert "Job default/quota" in stalled["message"] and "403" in stalled["message"]
    assert status(kube_api, "quota")["phase"] == "Failed"
    await eventually(lambda: ("Warning", Reason.CHILD_REJECTED) in events(kube_api, "quota"))
    rv, before, writes = (
        int(kube_api.get(FTJ, NS, "quota")["metadata"]["resourceVersion"]),
        status(kube_api, "quota"),
        status_writes(kube_api, "quota"),
    )
    # a whole pass over the failed object (its own status write come back): it must not try again
    await operator_passes.settled(kube_api, "quota", lambda p: p.rv >= rv)
    assert requests(kube_api, "POST", "jobs") == 1, "a refused Job must not be retried"
    assert status_writes(kube_api, "quota") == writes and status(kube_api, "quota") == before
    assert events(kube_api, "quota").count(("Warning", Reason.CHILD_REJECTED)) == 1


async def test_poison_specs_end_as_a_condition_and_one_event(
    kube_api: KubeEmulator,
    cluster: ClusterSimulator,
    start_operator: Any,
    operator_passes: OperatorPasses,
    caplog: Any,
) -> None:
    await start_operator()
    kube_api.validate_schemas = False  # as if the CRD had no schema (or preserve-unknown-fields)
    poison = {
        "inf": {"model": {"source": "hf://a/b", "parameters": "1e999B"}},
        "inf-gpu": {"model": {"source": "hf://a/b", "parameters": "1e999B"}, "resources": {"gpuType": "H100-80GB"}},
        "big": {"resources": {"nodes": 10**30}},
        "string": "not a mapping",
        "nulls": {"datasets": [None]},
    }
    for name, spec in poison.items():
        body = ftj(name)
        body["spec"] = spec if not isinstance(spec, dict) else {**body["spec"], **spec}
        kube_api.create(FTJ, body)
    kube_api.create(FTJ, ftj("fine"))
    for name in poison:
        await eventually(lambda n=name: cond(kube_api, "Validated", n).get("status") == "False")
        assert cond(kube_api, "Stalled", name)["status"] == "True"
    await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "fine"))
    await eventually(lambda: all(any(t == "Warning" for t, _ in events(kube_api, n)) for n in poison))
    rvs = {n: int(kube_api.get(FTJ, NS, n)["metadata"]["resourceVersion"]) for n in poison}
    writes = {n: status_writes(kube_api, n) for n in poison}
    for name in poison:  # a whole pass over each rejected object, its own status write come back
        await operator_passes.settled(kube_api, name, lambda p, n=name: p.rv >= rvs[n])
    for name in poison:
        assert status_writes(kube_api, name) == writes[name], f"{name}: status churn"
        assert len([e for e in events(kube_api, name) if e[0] == "Warning"]) == 1, (name, events(kube_api, name))
        assert kube_api.get("batch/v1/jobs", NS, name) is None
    crashes = [r.getMessage() for r in caplog.records if r.levelname == "ERROR" or r.exc_info]
    assert not crashes, crashes  # no handler, indexer or resync raised on the way


async def test_a_new_object_never_reads_the_verdict_of_the_old_ones_job(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    """Delete and re-create with the same name before the garbage collector ran: the finished Job, ConfigMap and
    Service of the first object still exist, owned by its uid."""
    await start_operator()
    old_owner = [
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "again",
            "uid": "deleted-uid",
            "controller": True,
        }
    ]
    labels = {"kubetune.io/finetunejob": "again", "app.kubernetes.io/component": "trainer"}
    kube_api.create(
        "v1/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "data": {},
            "metadata": {"name": "again-trainer", "namespace": NS, "ownerReferences": old_owner},
        },
    )
    kube_api.create(
        "batch/v1/jobs",
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "again", "namespace": NS, "labels": labels, "ownerReferences": old_owner},
            "spec": {"suspend": True, "parallelism": 2, "completions": 2, "template": {"spec": {"containers": []}}},
        },
    )
    kube_api.update(
        "batch/v1/jobs",
        NS,
        "again",
        {"status": {"conditions": [{"type": "Complete", "status": "True"}], "completionTime": "2026-01-01T00:00:00Z"}},
        status=True,
    )
    kube_api.create(FTJ, ftj("again"))
    await eventually(lambda: cond(kube_api, "Waiting", "again").get("reason") == Reason.PREVIOUS_CHILDREN)
    assert status(kube_api, "again")["phase"] == "Pending"
    waiting = int(kube_api.get(FTJ, NS, "again")["metadata"]["resourceVersion"])
    await operator_passes.settled(kube_api, "again", lambda p: p.poll and p.rv >= waiting)  # a resync pass, too
    assert status(kube_api, "again")["phase"] == "Pending", "the old Job's verdict must not be read"
    kube_api.delete("batch/v1/jobs", NS, "again")  # the garbage collector catches up
    kube_api.delete("v1/configmaps", NS, "again-trainer")
    await eventually(lambda: status(kube_api, "again").get("phase") == "Running")
    uid = kube_api.get(FTJ, NS, "again")["metadata"]["uid"]
    assert kube_api.get("batch/v1/jobs", NS, "again")["metadata"]["ownerReferences"][0]["uid"] == uid


async def test_a_job_suspended_by_another_controller_is_left_suspended(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    """Kueue with manageJobsWithoutQueueName suspends every new Job (no queue label) until it admits it."""
    cluster.start_after = 3600
    await start_operator()
    kube_api.create(FTJ, ftj("kq"))
    job = await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "kq"))
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    suspended = int(
        kube_api.update("batch/v1/jobs", NS, "kq", {"spec": {"suspend": True}})["metadata"]["resourceVersion"]
    )
    await eventually(lambda: cond(kube_api, "Reconciling", "kq").get("reason") == "Queued")
    await operator_passes.settled(  # a resync pass (after the event-triggered one) saw the suspended Job
        kube_api, "kq", lambda p: p.poll and p.job and int(p.job["metadata"]["resourceVersion"]) >= suspended
    )
    assert kube_api.get("batch/v1/jobs", NS, "kq")["spec"]["suspend"] is True, "kubetune must not un-suspend it"
    cluster.start_after = 0
    kube_api.update("batch/v1/jobs", NS, "kq", {"spec": {"suspend": False}})  # Kueue admits it
    await eventually(lambda: status(kube_api, "kq").get("phase") == "Running")


async def test_queue_label_on_the_finetunejob_queues_the_job(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    await start_operator()
    body = ftj("labelled")
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a", "team": "nlp"}
    kube_api.create(FTJ, body)
    job = await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "labelled"))
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    cm = kube_api.get("v1/configmaps", NS, "labelled-trainer")
    assert "kueue.x-k8s.io/queue-name" not in cm["metadata"]["labels"]
    await eventually(lambda: cond(kube_api, "Reconciling", "labelled").get("reason") == "Queued")
    queued = int(kube_api.get(FTJ, NS, "labelled")["metadata"]["resourceVersion"])
    await operator_passes.settled(kube_api, "labelled", lambda p: p.poll and p.rv >= queued)
    assert kube_api.get("batch/v1/jobs", NS, "labelled")["spec"]["suspend"] is True


async def test_a_long_non_ascii_message_posts_an_event_within_1024_bytes(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any
) -> None:
    await start_operator()
    kube_api.create(FTJ, ftj("utf8"))
    await eventually(lambda: status(kube_api, "utf8").get("phase") == "Running")
    message = "набор данных identity: " + "строка без ответа; " * 60
    assert len(message) < 1300 and len(message.encode()) > 1024
    cluster.finish("utf8", 0, exit_code=4, message=message)
    await eventually(lambda: ("Warning", "JobFailed") in events(kube_api, "utf8"))
    posted = next(
        e["message"]
        for e in kube_api.list("v1/events", NS)
        if e["involvedObject"]["name"] == "utf8" and e["reason"] == "JobFailed"
    )
    assert len(posted.encode("utf-8")) <= 1024 and "Failed: набор данных identity" in posted


async def test_a_hung_api_call_does_not_stall_the_resync_of_the_others(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, monkeypatch: Any
) -> None:
    hung = asyncio.Event()
    handle = KubeEmulator._handle

    async def slow(self: KubeEmulator, request: Any) -> Any:
        if request.resource is not None and request.resource.plural == "secrets" and request.name == "hangs":
            hung.set()
            await asyncio.sleep(3600)
        return await handle(self, request)

    monkeypatch.setattr(KubeEmulator, "_handle", slow)
    await start_operator(api_timeout=1.0)
    kube_api.create(FTJ, ftj("stuck", output={"uri": "s3://out/a", "credentialsSecret": "hangs"}))
    await asyncio.wait_for(hung.wait(), 10)
    kube_api.create(FTJ, ftj("other", output={"uri": "s3://out/b", "credentialsSecret": "later"}))
    await eventually(lambda: cond(kube_api, "Waiting", "other").get("reason") == "SecretMissing")
    # Secrets are not watched: only the resync sees this one, and it must not wait for the hung call
    kube_api.create(
        "v1/secrets", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "later", "namespace": NS}}
    )
    await eventually(lambda: kube_api.get("batch/v1/jobs", NS, "other"), timeout=20)


async def test_a_refused_status_write_is_said_once_and_not_retried(
    kube_api: KubeEmulator, cluster: ClusterSimulator, start_operator: Any, operator_passes: OperatorPasses
) -> None:
    kube_api.inject("PATCH", FTJ, subresource="status", code=422, reason="Invalid", count=1000)
    cluster.start_after = 3600  # nothing changes after the first look: the same status every pass
    await start_operator()
    kube_api.create(FTJ, ftj("nostatus"))
    await eventually(lambda: ("Warning", "StatusRejected") in events(kube_api, "nostatus"))
    await eventually(lambda: len(cluster.pods("nostatus")) == 2)
    # the inputs settle (both pods seen by a whole resync pass); from then on every pass has the same status to write
    first = await operator_passes.settled(kube_api, "nostatus", lambda p: p.poll and len(p.pods) == 2)
    hits = kube_api.fault_hits
    # resync passes two clock seconds later (condition timestamps change) have ended: none wrote the status again
    await operator_passes.settled(kube_api, "nostatus", lambda p: p.poll and p.second >= first.second + 2)
    assert kube_api.fault_hits == hits, "a refused status write must not be retried"
    assert events(kube_api, "nostatus").count(("Warning", "StatusRejected")) == 1
