"""The operator bugs of issue 14 (and the "never loop the operator" class of issue 20) on a real API server: what
the emulator hid. Each test failed on the operator before the fix (see the commit that added it)."""

from __future__ import annotations

import asyncio
import copy
import json
import re
from typing import Any

import pytest
import yaml

from tests.harness.fixtures import OperatorPasses
from tests.harness.realcluster import FTJ, OPERATOR_USER, ROOT, ApiError, K8s

JOBS = "batch/v1/jobs"
# the operator's own access review of the rule the RBAC test removes (kubectl auth can-i: "yes" or "no")
CAN_UPDATE_FINALIZERS = ("auth", "can-i", "update", "finetunejobs.kubetune.io", "--subresource=finalizers")
LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
CRD_FILE = ROOT / "crds" / "kubetune.io_finetunejobs.yaml"


def warnings(k8s: K8s, name: str) -> list[str]:
    return [r for t, r in k8s.events(name) if t == "Warning"]


def operator_requests(k8s: K8s, mark: int, resource: str, verb: str) -> list[dict[str, Any]]:
    return [
        e
        for e in k8s.cp.audit(mark, user=OPERATOR_USER)
        if (e.get("objectRef") or {}).get("resource") == resource
        and e.get("verb") == verb
        and e.get("stage", "ResponseComplete") == "ResponseComplete"
    ]


def can_i(k8s: K8s, *args: str) -> str:
    """``kubectl auth can-i`` as the operator's ServiceAccount in the test's namespace: "yes" or "no"."""
    out = k8s.cp.kubectl_sync("-n", k8s.ns, *args, kubeconfig=k8s.cp.operator_kubeconfig, check=False)
    return out.split()[0] if out.split() else out


def status_writes(k8s: K8s, mark: int, name: str) -> int:
    """The operator's writes of this FineTuneJob's status after audit-log position ``mark``."""
    return sum(
        1
        for verb in ("patch", "update")
        for e in operator_requests(k8s, mark, "finetunejobs", verb)
        if e["objectRef"].get("subresource") == "status" and e["objectRef"].get("name") == name
    )


async def settled(k8s: K8s, passes: OperatorPasses, name: str, saw: Any = None) -> int:
    """Wait for a whole pass of the operator over the FineTuneJob as it is now (its own last write come back), or
    as ``saw`` says: a retry loop writes or posts in that pass. Returns the audit-log position from before it."""
    mark, rv = k8s.cp.audit_mark(), int(k8s.get(FTJ, name)["metadata"]["resourceVersion"])
    await passes.settled(k8s.api, name, saw or (lambda p: p.rv >= rv), ns=k8s.ns, timeout=90)
    return mark


async def assert_stalled_once(k8s: K8s, passes: OperatorPasses, name: str, reason: str, *words: str) -> dict[str, Any]:
    await k8s.wait(lambda: k8s.cond(name, "Stalled").get("reason") == reason)
    stalled = k8s.cond(name, "Stalled")
    for word in words:
        assert word in stalled["message"], stalled
    await k8s.wait(lambda: reason in warnings(k8s, name))
    before = k8s.status(name)
    mark = await settled(k8s, passes, name)
    assert status_writes(k8s, mark, name) == 0 and k8s.status(name) == before, "status churn: a retry loop"
    assert warnings(k8s, name).count(reason) == 1, k8s.events(name)
    return stalled


# ------------------------------------------------------------------------------------------ refused children


async def test_a_job_refused_by_quota_fails_with_the_cause_and_is_not_retried(
    k8s: K8s, operator_passes: OperatorPasses
) -> None:
    k8s.create(
        {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "no-jobs"},
            "spec": {"hard": {"count/jobs.batch": "0"}},
        },
        "v1/resourcequotas",
    )
    await k8s.wait(lambda: (k8s.get("v1/resourcequotas", "no-jobs").get("status") or {}).get("hard"))
    mark = k8s.cp.audit_mark()
    await k8s.start_operator()
    k8s.create(k8s.ftj("quota"))
    await assert_stalled_once(k8s, operator_passes, "quota", "ChildRejected", "exceeded quota", "403", "Job")
    assert k8s.status("quota")["phase"] == "Failed" and k8s.get(JOBS, "quota") is None
    creates = operator_requests(k8s, mark, "jobs", "create")
    assert len(creates) == 1, f"the refused Job was created {len(creates)} times"


async def test_an_invalid_node_selector_is_refused_once_with_the_field(
    k8s: K8s, operator_passes: OperatorPasses
) -> None:
    await k8s.start_operator()
    body = k8s.ftj("selector", resources={"nodes": 1, "gpusPerNode": 1, "nodeSelector": {"bad key!": "x"}})
    try:
        k8s.create(body)
    except ApiError as exc:  # a validation of node selectors in the CRD / CEL refuses it at once: also fine
        assert "nodeSelector" in str(exc)
        return
    await k8s.wait(lambda: k8s.cond("selector", "Stalled").get("status") == "True")
    stalled = k8s.cond("selector", "Stalled")
    assert "nodeSelector" in stalled["message"] or "nodeSelector" in k8s.cond("selector", "Validated")["message"]
    mark = await settled(k8s, operator_passes, "selector")
    assert status_writes(k8s, mark, "selector") == 0, "status churn: a retry loop"
    assert len(warnings(k8s, "selector")) == 1, k8s.events("selector")


@pytest.mark.parametrize(
    "resources",
    [{"cpu": "1.2.3"}, {"memory": "-1Gi"}, {"sharedMemory": "1.5.0Gi"}],
    ids=["cpu-two-dots", "negative-memory", "shm-two-dots"],
)
async def test_a_quantity_the_job_api_refuses_never_loops(
    k8s: K8s, resources: dict[str, str], operator_passes: OperatorPasses
) -> None:
    """Refused at once by the CRD (its pattern agrees with the Job API), or else a Stalled status; never a loop."""
    await k8s.start_operator()
    body = k8s.ftj("qty", resources={"nodes": 1, "gpusPerNode": 1, **resources})
    try:
        k8s.create(body)
    except ApiError as exc:
        assert "spec.resources" in str(exc), exc
        return
    await k8s.wait(lambda: k8s.cond("qty", "Stalled").get("status") == "True")
    assert k8s.get(JOBS, "qty") is None
    mark = await settled(k8s, operator_passes, "qty")
    assert status_writes(k8s, mark, "qty") == 0 and len(warnings(k8s, "qty")) == 1


async def test_dotted_configmap_and_claim_names_make_a_valid_job(k8s: K8s) -> None:
    await k8s.start_operator()
    k8s.create(
        k8s.ftj(
            "dots",
            datasets=[{"name": "d", "source": "configmap://data.v1/train.json"}],
            resources={"nodes": 1, "gpusPerNode": 1, "cacheClaim": "cache.team-a"},
        )
    )
    job = await k8s.wait(lambda: k8s.get(JOBS, "dots") or k8s.cond("dots", "Stalled").get("status") == "True")
    assert isinstance(job, dict), k8s.cond("dots", "Stalled")
    volumes = job["spec"]["template"]["spec"]["volumes"]
    assert all(LABEL.fullmatch(v["name"]) and len(v["name"]) <= 63 for v in volumes), volumes
    assert {"data.v1"} <= {v["configMap"]["name"] for v in volumes if "configMap" in v}


# ------------------------------------------------------------------------------------------ pods that never start


async def test_unschedulable_pods_are_explained(k8s: K8s, operator_passes: OperatorPasses) -> None:
    await k8s.start_operator()
    k8s.create(k8s.ftj("huge", resources={"nodes": 1, "gpusPerNode": 64}))
    await k8s.wait(lambda: k8s.cond("huge", "Waiting").get("reason") == "Unschedulable")
    waiting = k8s.cond("huge", "Waiting")
    assert "nvidia.com/gpu" in waiting["message"] and "huge-0-" in waiting["message"]
    assert k8s.status("huge")["phase"] == "Pending"
    await k8s.wait(lambda: "Unschedulable" in warnings(k8s, "huge"))
    rv = int(k8s.get(FTJ, "huge")["metadata"]["resourceVersion"])
    await settled(k8s, operator_passes, "huge", lambda p: p.poll and p.rv >= rv)  # a resync pass too
    assert warnings(k8s, "huge").count("Unschedulable") == 1


async def test_an_image_that_cannot_be_pulled_is_explained(k8s: K8s, operator_passes: OperatorPasses) -> None:
    await k8s.start_operator()
    k8s.create(
        k8s.ftj(
            "pull",
            resources={
                "nodes": 1,
                "gpusPerNode": 0,
                "nodeSelector": {"kubetune.test/behaviour": "image-pull-backoff"},
                "tolerations": [
                    {
                        "key": "kubetune.test/behaviour",
                        "operator": "Equal",
                        "value": "image-pull-backoff",
                        "effect": "NoSchedule",
                    }
                ],
            },
        )
    )
    stalled = await assert_stalled_once(
        k8s, operator_passes, "pull", "ImagePullFailed", "registry.test/kubetune-trainer:test"
    )
    assert k8s.status("pull")["phase"] == "Pending" and "ImagePullBackOff" in stalled["message"]


async def test_an_oom_killed_trainer_is_named_in_the_failure(k8s: K8s) -> None:
    await k8s.start_operator()
    k8s.create(
        k8s.ftj("oom", resources={"nodes": 1, "gpusPerNode": 1, "memory": "8Gi"}, runPolicy={"backoffLimit": 0})
    )
    await k8s.wait(lambda: len(k8s.running("oom")) == 1)
    k8s.finish("oom", 0, exit_code=137, reason="OOMKilled")
    await k8s.wait(lambda: k8s.status("oom").get("phase") == "Failed")
    failed = k8s.cond("oom", "Failed")
    assert "OOMKilled" in failed["message"] and "8Gi" in failed["message"], failed


# ------------------------------------------------------------------------------------------ same name, new object


async def test_a_recreated_object_never_reads_the_old_jobs_verdict(k8s: K8s) -> None:
    await k8s.start_operator()
    k8s.create(k8s.ftj("again", resources={"nodes": 1, "gpusPerNode": 1}))
    await k8s.wait(lambda: len(k8s.running("again")) == 1)
    k8s.finish("again", 0)
    await k8s.wait(lambda: k8s.status("again").get("phase") == "Succeeded")
    # hold the old Job (as a slow garbage collector would), then delete and re-create the FineTuneJob
    k8s.api.update(JOBS, k8s.ns, "again", {"metadata": {"finalizers": ["kubetune.test/hold"]}})
    old_uid = k8s.get(FTJ, "again")["metadata"]["uid"]
    k8s.api.delete(FTJ, k8s.ns, "again")
    await k8s.wait(lambda: k8s.get(FTJ, "again") is None)
    k8s.create(k8s.ftj("again", resources={"nodes": 1, "gpusPerNode": 1}))
    new_uid = k8s.get(FTJ, "again")["metadata"]["uid"]
    assert new_uid != old_uid
    await k8s.wait(lambda: k8s.cond("again", "Waiting").get("reason") == "WaitingForPreviousChildren")
    assert k8s.status("again")["phase"] == "Pending", "the new object read the old Job's verdict"
    k8s.api.update(JOBS, k8s.ns, "again", {"metadata": {"finalizers": None}})
    job = await k8s.wait(
        lambda: (j := k8s.get(JOBS, "again")) and j["metadata"]["ownerReferences"][0]["uid"] == new_uid and j
    )
    assert job["metadata"]["ownerReferences"][0]["uid"] == new_uid
    await k8s.wait(lambda: len(k8s.running("again")) == 1)
    await k8s.wait(lambda: k8s.status("again").get("phase") == "Running")


# ------------------------------------------------------------------------------------------ Kueue's suspend


async def test_queue_label_and_a_foreign_suspend_are_left_to_kueue(k8s: K8s, operator_passes: OperatorPasses) -> None:
    await k8s.start_operator()
    body = k8s.ftj("labelled", resources={"nodes": 1, "gpusPerNode": 1})
    body["metadata"]["labels"] = {"kueue.x-k8s.io/queue-name": "team-a", "team": "nlp"}
    k8s.create(body)
    job = await k8s.wait(lambda: k8s.get(JOBS, "labelled"))
    assert job["spec"]["suspend"] is True and job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "team" not in job["metadata"]["labels"]
    cm = k8s.get("v1/configmaps", "labelled-trainer")
    assert "kueue.x-k8s.io/queue-name" not in cm["metadata"]["labels"]
    await k8s.wait(lambda: k8s.cond("labelled", "Reconciling").get("reason") == "Queued")
    # no queue at all, but Kueue (manageJobsWithoutQueueName) suspends the new Job: kubetune leaves it suspended
    k8s.create(k8s.ftj("plain", resources={"nodes": 1, "gpusPerNode": 1}))
    await k8s.wait(lambda: k8s.get(JOBS, "plain"))
    suspended = int(k8s.api.update(JOBS, k8s.ns, "plain", {"spec": {"suspend": True}})["metadata"]["resourceVersion"])
    await k8s.wait(lambda: k8s.cond("plain", "Reconciling").get("reason") == "Queued")
    # a resync pass (after the event-triggered one) saw the suspended Job and ended
    await settled(
        k8s,
        operator_passes,
        "plain",
        lambda p: p.poll and p.job and int(p.job["metadata"]["resourceVersion"]) >= suspended,
    )
    assert k8s.get(JOBS, "plain")["spec"]["suspend"] is True and k8s.get(JOBS, "labelled")["spec"]["suspend"] is True
    k8s.api.update(JOBS, k8s.ns, "plain", {"spec": {"suspend": False}})  # admitted
    await k8s.wait(lambda: k8s.status("plain").get("phase") == "Running")


# ------------------------------------------------------------------------------------------ Events, RBAC, watches


async def test_a_long_non_ascii_failure_is_posted_as_an_event(k8s: K8s) -> None:
    await k8s.start_operator()
    k8s.create(k8s.ftj("utf8", resources={"nodes": 1, "gpusPerNode": 1}))
    await k8s.wait(lambda: len(k8s.running("utf8")) == 1)
    message = "набор данных identity: " + "строка без ответа; " * 50
    assert len(message) < 1024 < len(message.encode())
    k8s.finish("utf8", 0, exit_code=4, message=message)
    await k8s.wait(lambda: ("Warning", "JobFailed") in k8s.events("utf8"))
    posted = next(e["message"] for e in k8s.event_objects("utf8") if e["reason"] == "JobFailed")
    assert "набор данных identity" in posted and len(posted.encode()) <= 1024


async def test_children_with_block_owner_deletion_pass_owner_references_enforcement(
    k8s: K8s, operator_passes: OperatorPasses
) -> None:
    """The fixture's API server runs OwnerReferencesPermissionEnforcement; the chart's RBAC must allow it."""
    mark = k8s.cp.audit_mark()
    await k8s.start_operator()
    k8s.create(k8s.ftj("owners", resources={"nodes": 1, "gpusPerNode": 1}))
    job = await k8s.wait(lambda: k8s.get(JOBS, "owners"))
    assert job["metadata"]["ownerReferences"][0]["blockOwnerDeletion"] is True
    denied = [
        (e["verb"], e.get("objectRef"))
        for e in k8s.cp.audit(mark, user=OPERATOR_USER)
        if (e.get("responseStatus") or {}).get("code") == 403
    ]
    assert not denied, denied
    # without the rule (the chart before the fix), the plugin refuses the children: said once, not retried
    role = next(
        r
        for r in k8s.api.list("rbac.authorization.k8s.io/v1/clusterroles")
        if any("finetunejobs/finalizers" in rule.get("resources", []) for rule in r.get("rules") or [])
    )
    rules = [rule for rule in role["rules"] if "finetunejobs/finalizers" not in rule.get("resources", [])]
    path = "rbac.authorization.k8s.io/v1/clusterroles"
    k8s.api.patch(path, None, role["metadata"]["name"], {"rules": rules})
    try:
        # the RBAC authorizer's informer has the change once the operator's own access review says so
        await k8s.wait(lambda: can_i(k8s, *CAN_UPDATE_FINALIZERS) == "no")
        k8s.create(k8s.ftj("no-rule", resources={"nodes": 1, "gpusPerNode": 1}))
        stalled = await assert_stalled_once(
            k8s, operator_passes, "no-rule", "ChildRejected", "403", "blockOwnerDeletion"
        )
        assert "finalizers" in stalled["message"]
    finally:
        k8s.api.patch(path, None, role["metadata"]["name"], {"rules": role["rules"]})


async def test_the_operator_watches_only_kubetune_pods_and_jobs(k8s: K8s) -> None:
    mark = k8s.cp.audit_mark()
    await k8s.start_operator()
    k8s.create(k8s.ftj("watched", resources={"nodes": 1, "gpusPerNode": 1}))
    await k8s.wait(lambda: k8s.status("watched").get("phase") == "Running")
    from urllib.parse import parse_qs, urlsplit

    selectors: dict[str, set[str]] = {}
    for e in k8s.cp.audit(mark, user=OPERATOR_USER):
        resource = (e.get("objectRef") or {}).get("resource")
        if e.get("verb") in ("watch", "list") and resource in ("pods", "jobs"):
            selectors.setdefault(resource, set()).update(
                parse_qs(urlsplit(e["requestURI"]).query).get("labelSelector", [""])
            )
    assert selectors["jobs"] == {"kubetune.io/finetunejob"}, selectors
    assert {frozenset(s.split(",")) for s in selectors["pods"]} == {
        frozenset({"kubetune.io/finetunejob", "app.kubernetes.io/component=trainer"})
    }, selectors


async def test_unknown_fields_are_refused_by_kubectl_and_pruned_without_strict(k8s: K8s, tmp_path: Any) -> None:
    body = k8s.ftj("typo")
    body["spec"]["modle"] = {"source": "hf://x/y"}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    out = await k8s.kubectl("apply", "-f", str(path), check=False)
    assert 'unknown field "spec.modle"' in out, out
    assert k8s.get(FTJ, "typo") is None
    await k8s.kubectl("apply", "--validate=false", "-f", str(path))
    assert "modle" not in k8s.get(FTJ, "typo")["spec"]


# ------------------------------------------------------------------------------------------ decision path


async def test_poison_specs_the_crd_accepts_end_as_a_condition(k8s: K8s, operator_passes: OperatorPasses) -> None:
    await k8s.start_operator()
    k8s.create(
        k8s.ftj(
            "inf",
            model={"source": "hf://a/b", "parameters": "1e999B"},
            resources={"nodes": 1, "gpusPerNode": 1, "gpuType": "H100-80GB"},
        )
    )
    k8s.create(k8s.ftj("fine", resources={"nodes": 1, "gpusPerNode": 1}))
    await k8s.wait(lambda: k8s.cond("inf", "Validated").get("status") == "False")
    assert k8s.cond("inf", "Stalled")["status"] == "True" and k8s.get(JOBS, "inf") is None
    await k8s.wait(lambda: len(warnings(k8s, "inf")) == 1)
    mark = await settled(k8s, operator_passes, "inf")
    assert status_writes(k8s, mark, "inf") == 0 and len(warnings(k8s, "inf")) == 1
    await k8s.wait(lambda: k8s.get(JOBS, "fine"))


async def test_the_spec_hash_survives_defaults_applied_on_read(k8s: K8s, operator_passes: OperatorPasses) -> None:
    """An upgrade whose CRD adds a default: the stored object reads differently, its generation does not change."""
    await k8s.start_operator()
    k8s.create(k8s.ftj("stable", resources={"nodes": 1, "gpusPerNode": 1}, training={"epochs": 1}))
    await k8s.wait(lambda: k8s.status("stable").get("phase") == "Running")
    await k8s.wait(lambda: len(k8s.running("stable")) == 1)
    await k8s.stop_operators()  # its thread has ended: no pass of the old operator runs any more
    original = yaml.safe_load(CRD_FILE.read_text(encoding="utf-8"))
    upgraded = copy.deepcopy(original)
    training = upgraded["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "training"
    ]
    training["properties"]["maxSteps"]["default"] = 50  # a later release's default for an unset field
    try:
        await k8s.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=json.dumps(upgraded))
        await k8s.wait(lambda: k8s.get(FTJ, "stable")["spec"]["training"].get("maxSteps") == 50)
        await k8s.start_operator()
        await k8s.wait(lambda: k8s.status("stable").get("phase") == "Running")
        # a resync pass of the new operator over the object as the new CRD reads it (the default applied)
        await settled(
            k8s, operator_passes, "stable", lambda p: p.poll and p.body["spec"]["training"].get("maxSteps") == 50
        )
        assert k8s.cond("stable", "Stalled")["status"] == "False", k8s.cond("stable", "Stalled")
        assert k8s.get(FTJ, "stable")["metadata"]["generation"] == 1
    finally:
        await k8s.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD_FILE))


async def test_a_call_to_a_hung_api_server_times_out(k8s: K8s, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGSTOP: connections stay open and nothing answers. Every call of the operator's client ends with
    kube.Unavailable after its timeout instead of holding the FineTuneJob's lock until the server returns."""
    from kubetune.operator import kube

    monkeypatch.setenv("KUBECONFIG", str(k8s.cp.admin_kubeconfig))
    monkeypatch.setattr(kube, "TIMEOUT", 2.0)
    kube.configure()
    assert await kube.get_job(k8s.ns, "nothing") is None  # connected, and the pool holds a live connection
    with k8s.cp.apiserver_paused():
        for call in (kube.get_job(k8s.ns, "nothing"), kube.secret_exists(k8s.ns, "nothing")):
            with pytest.raises(kube.Unavailable):
                await asyncio.wait_for(call, timeout=60)
