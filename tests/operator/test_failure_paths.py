"""The operator's pure decisions on the failure paths the emulator used to hide (issue 14, issue 20): a child the
API server refuses, pods that never start, an exception anywhere on the decision path, children of an earlier
object of the same name, Kueue's suspend, a spec hash changed by an upgrade, Events cut by bytes."""

from __future__ import annotations

import asyncio
import copy
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from kubetune.api.conditions import Reason
from kubetune.operator import reconcile
from kubetune.operator import status as st
from kubetune.operator.manifests import BuildOptions
from kubetune.operator.manifests.labels import (
    GENERATION_ANNOTATION,
    QUEUE_LABEL,
    SPEC_HASH_ANNOTATION,
    SUSPENDED_BY_ANNOTATION,
)
from kubetune.operator.manifests.names import volume_name
from tests.operator.test_lifecycle import ftj

OPTIONS = BuildOptions()
AT = "2026-01-01T00:00:00Z"
LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def body(
    name: str = "demo",
    generation: int = 1,
    uid: str = "uid-1",
    labels: dict[str, str] | None = None,
    status: dict[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    doc = ftj(name, **spec)
    doc["metadata"].update({"generation": generation, "uid": uid, "labels": labels or {}})
    doc["status"] = status or {}
    return doc


def cond(status: dict[str, Any], ctype: str) -> dict[str, Any]:
    return st.condition(status, ctype) or {}


def created_job(b: dict[str, Any], options: BuildOptions = OPTIONS) -> dict[str, Any]:
    """The Job a first pass builds for ``b``, as the API server returns it (owner reference, a uid)."""
    decision = reconcile.decide(b, reconcile.parse(b, options), options, job=None, at=AT)
    job = copy.deepcopy(decision.children[-1])
    job["metadata"]["uid"] = "job-uid"
    job["metadata"]["ownerReferences"] = [{"uid": b["metadata"]["uid"], "kind": "FineTuneJob", "name": "demo"}]
    job["status"] = {}
    return job


def pending_pod(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "demo-0-abc",
            "uid": "pod-uid",
            "annotations": {"batch.kubernetes.io/job-completion-index": "0"},
        },
        "spec": {
            "nodeName": status.pop("node", None),
            "containers": [
                {"name": "trainer", "image": "example.com/trainer:9", "resources": {"limits": {"memory": "8Gi"}}}
            ],
        },
        "status": {"phase": "Pending", **status},
    }


def again(b: dict[str, Any], decision: reconcile.Decision) -> dict[str, Any]:
    """``b`` once the status of ``decision`` is written."""
    return {**b, "status": decision.status}


# ------------------------------------------------------------------------------------------ refused children


def test_refused_child_fails_once_with_the_servers_words_and_is_not_retried() -> None:
    b = body()
    parsed = reconcile.parse(b, OPTIONS)
    decision = reconcile.rejected(
        b,
        parsed,
        "Job",
        "demo",
        422,
        "Invalid",
        'Job.batch "demo" is invalid: spec.template.spec.containers[0].resources.requests[cpu]: '
        'Invalid value: "1.2.3": quantities must match the regular expression',
        at=AT,
    )
    stalled = cond(decision.status, "Stalled")
    assert decision.status["phase"] == "Failed" and stalled["status"] == "True"
    assert stalled["reason"] == Reason.CHILD_REJECTED and "requests[cpu]" in stalled["message"]
    assert "Job default/demo" in stalled["message"] and "422 Invalid" in stalled["message"]
    assert [(k, r) for k, r, _ in decision.events] == [("Warning", Reason.CHILD_REJECTED)]
    # the next passes of this generation build nothing and announce nothing: no retry loop
    after = again(b, decision)
    for _ in range(3):
        nxt = reconcile.decide(after, reconcile.parse(after, OPTIONS), OPTIONS, job=None, at=AT)
        assert nxt.children == [] and nxt.events == [] and st.status_patch(after["status"], nxt.status) == {}
    # a new generation (the user fixed the spec) is tried again
    fixed = {**after, "metadata": {**after["metadata"], "generation": 2}}
    assert reconcile.decide(fixed, reconcile.parse(fixed, OPTIONS), OPTIONS, job=None, at=AT).children


def test_children_of_an_earlier_object_are_waited_for_never_read() -> None:
    b = body()
    old_job = created_job(b)
    old_job["metadata"]["ownerReferences"] = [{"uid": "uid-of-the-deleted-one"}]
    old_job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    assert not reconcile.owned_by(old_job, "uid-1") and reconcile.owned_by(created_job(b), "uid-1")
    decision = reconcile.previous_children(b, reconcile.parse(b, OPTIONS), "ConfigMap", "demo-trainer", at=AT)
    assert decision.status["phase"] == "Pending"
    waiting = cond(decision.status, "Waiting")
    assert waiting["reason"] == Reason.PREVIOUS_CHILDREN and "ConfigMap default/demo-trainer" in waiting["message"]
    assert [(k, r) for k, r, _ in decision.events] == [("Warning", Reason.PREVIOUS_CHILDREN)]


# ------------------------------------------------------------------------------------------ pods that never start


PROBLEMS = {
    "unschedulable": (
        pending_pod(
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
                }
            ]
        ),
        None,
        Reason.UNSCHEDULABLE,
        "Insufficient nvidia.com/gpu",
        False,
    ),
    "image-pull": (
        pending_pod(
            node="n1",
            containerStatuses=[
                {
                    "name": "trainer",
                    "image": "example.com/trainer:9",
                    "state": {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": 'Back-off pulling image "example.com/trainer:9"',
                        }
                    },
                }
            ],
        ),
        None,
        Reason.IMAGE_PULL_FAILED,
        "example.com/trainer:9",
        True,
    ),
    "err-image-pull": (
        pending_pod(
            node="n1",
            containerStatuses=[
                {"name": "trainer", "state": {"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}}}
            ],
        ),
        None,
        Reason.IMAGE_PULL_FAILED,
        "manifest unknown",
        True,
    ),
    "config-error": (
        pending_pod(
            node="n1",
            containerStatuses=[
                {
                    "name": "trainer",
                    "state": {"waiting": {"reason": "CreateContainerConfigError", "message": 'secret "hf" not found'}},
                }
            ],
        ),
        None,
        Reason.CONTAINER_CONFIG_ERROR,
        'secret "hf" not found',
        True,
    ),
    "failed-mount": (
        pending_pod(
            node="n1", containerStatuses=[{"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}]
        ),
        [
            {
                "type": "Warning",
                "reason": "FailedMount",
                "involvedObject": {"uid": "pod-uid", "name": "demo-0-abc"},
                "message": 'MountVolume.SetUp failed for volume "cm-data" : configmap "data" not found',
            }
        ],
        Reason.MOUNT_FAILED,
        'configmap "data" not found',
        True,
    ),
    "oom-killed": (
        pending_pod(
            node="n1",
            containerStatuses=[
                {
                    "name": "trainer",
                    "restartCount": 1,
                    "state": {"waiting": {"reason": "ContainerCreating"}},
                    "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                }
            ],
        ),
        None,
        Reason.OOM_KILLED,
        "OOMKilled",
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(PROBLEMS))
def test_pods_that_do_not_start_are_explained_once(case: str) -> None:
    pod, pod_events, reason, words, stalled = PROBLEMS[case]
    b = body()
    job = created_job(b)
    job["spec"]["suspend"] = False
    job["status"] = {"active": 1}
    first = {**b, "status": {"phase": "Pending", "jobName": "demo"}}
    decision = reconcile.decide(
        first, reconcile.parse(first, OPTIONS), OPTIONS, job=job, pods=[pod], pod_events=pod_events, at=AT
    )
    waiting = cond(decision.status, "Waiting")
    assert decision.status["phase"] == "Pending"
    assert waiting["status"] == "True" and waiting["reason"] == reason and words in waiting["message"], waiting
    assert "demo-0-abc" in waiting["message"] and waiting["message"] != st.POD_PENDING_MESSAGE
    assert cond(decision.status, "Stalled")["status"] == ("True" if stalled else "False")
    assert [(k, r) for k, r, _ in decision.events] == [("Warning", reason)], decision.events
    # the same observation again: nothing new to say
    nxt = reconcile.decide(
        again(first, decision),
        reconcile.parse(first, OPTIONS),
        OPTIONS,
        job=job,
        pods=[pod],
        pod_events=pod_events,
        at=AT,
    )
    assert nxt.events == [] and st.status_patch(decision.status, nxt.status) == {}


def test_oom_killed_failure_names_the_memory_limit() -> None:
    job = {
        "spec": {},
        "status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]},
    }
    pod = pending_pod(
        containerStatuses=[
            {
                "name": "trainer",
                "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137, "message": "step 3 loss 2.1"}},
            }
        ]
    )
    verdict = st.job_verdict(job, [pod], user_suspended=False, queued=False)
    assert verdict.phase == "Failed" and "OOMKilled" in verdict.message and "8Gi" in verdict.message


def test_stuck_creating_selects_scheduled_pods_without_a_reason() -> None:
    creating = pending_pod(
        node="n1", containerStatuses=[{"name": "trainer", "state": {"waiting": {"reason": "ContainerCreating"}}}]
    )
    assert st.stuck_creating([creating, pending_pod(node="n1"), pending_pod()]) == [creating, pending_pod(node="n1")]


# ------------------------------------------------------------------------------------------ exceptions on the path


DEEP: Any = {}
for _ in range(2000):
    DEEP = [DEEP]
POISON = {
    "overflow": {
        "model": {"source": "hf://a/b", "parameters": "1e999B"},
        "resources": {"nodes": 1, "gpuType": "H100-80GB"},
    },
    "overflow-no-gpu-type": {"model": {"source": "hf://a/b", "parameters": "9" * 400}},
    "spec-not-a-mapping": "just a string",
    "model-a-number": {"model": 5},
    "datasets-null-items": {"datasets": [None, 3, "x"]},
    "deep": {"training": {"a": DEEP}},
    "huge-int": {"resources": {"nodes": 10**40}},
}


@pytest.mark.parametrize("case", sorted(POISON))
def test_poison_specs_end_as_validated_false_never_an_exception(case: str) -> None:
    b = body()
    b["spec"] = POISON[case] if not isinstance(POISON[case], dict) else {**b["spec"], **POISON[case]}
    parsed = reconcile.parse(b, OPTIONS)  # never raises
    decision = asyncio.run(_once(b))
    valid = cond(decision.status, "Validated")
    assert valid["status"] == "False" and valid["message"], decision.status
    assert cond(decision.status, "Stalled")["status"] == "True"
    assert len(decision.events) == 1 and decision.events[0][0] == "Warning"
    assert decision.children == [] and parsed.job is None
    assert "Traceback" not in valid["message"] and len(valid["message"]) < 2000


async def _once(b: dict[str, Any]) -> reconcile.Decision:
    import logging

    from kubetune.operator.handlers.finetunejob import reconcile_once

    return await reconcile_once(b, OPTIONS, logging.getLogger("test"), job=None, pods=[], finetunejobs={})


def test_an_exception_while_building_is_a_condition_not_a_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: Any, **__: Any) -> Any:
        return int(float("inf"))

    monkeypatch.setattr(reconcile, "build_all", broken)
    decision = asyncio.run(_once(body()))
    valid = cond(decision.status, "Validated")
    assert valid["status"] == "False" and valid["reason"] == Reason.UNPROCESSABLE
    assert "OverflowError" in valid["message"] and decision.status["phase"] == "Failed"
    assert [(k, r) for k, r, _ in decision.events] == [("Warning", Reason.UNPROCESSABLE)]


JSON = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats(allow_nan=False) | hs.text(max_size=20),
    lambda children: hs.lists(children, max_size=4) | hs.dictionaries(hs.text(max_size=12), children, max_size=4),
    max_leaves=25,
)
KEYS = hs.sampled_from(
    [
        "stage",
        "model",
        "datasets",
        "method",
        "training",
        "resources",
        "output",
        "runPolicy",
        "suspend",
        "queueName",
        "distributed",
        "checkpointing",
    ]
)


@settings(max_examples=150, deadline=None)
@given(hs.dictionaries(KEYS, JSON, max_size=6))
def test_fuzzed_specs_never_raise_out_of_a_pass(spec: dict[str, Any]) -> None:
    from unittest import mock

    from kubetune.operator import kube

    async def nothing(*_: Any, **__: Any) -> Any:
        return []

    b = body()
    b["spec"] = {**b["spec"], **spec}

    async def itself(*_: Any, **__: Any) -> Any:
        return b

    with (
        mock.patch.object(kube, "ensure", nothing),
        mock.patch.object(kube, "secret_exists", nothing),
        mock.patch.object(kube, "get_finetunejob", itself),
    ):
        decision = asyncio.run(_once(b))
    assert decision.status.get("phase") in ("Pending", "Failed", "Suspended")
    if decision.status["phase"] == "Failed":
        assert cond(decision.status, "Validated")["status"] == "False" and len(decision.events) == 1


# ------------------------------------------------------------------------------------------ Kueue


def test_kueue_label_on_the_finetunejob_is_the_queue_and_only_kubetune_sets_it_on_the_job() -> None:
    b = body(labels={QUEUE_LABEL: "team-a", "team": "nlp"})
    decision = reconcile.decide(b, reconcile.parse(b, OPTIONS), OPTIONS, job=None, at=AT)
    job = decision.children[-1]
    assert job["metadata"]["labels"][QUEUE_LABEL] == "team-a" and job["spec"]["suspend"] is True
    assert decision.status["phase"] == "Pending" and cond(decision.status, "Reconciling")["reason"] == Reason.QUEUED
    for child in decision.children[:2]:
        assert QUEUE_LABEL not in child["metadata"]["labels"]
    plain = body()
    job = reconcile.decide(plain, reconcile.parse(plain, OPTIONS), OPTIONS, job=None, at=AT).children[-1]
    assert QUEUE_LABEL not in job["metadata"]["labels"] and job["spec"]["suspend"] is False


@pytest.mark.parametrize(
    "options", [OPTIONS, BuildOptions(kueue_manages_all_jobs=True)], ids=["detected", "configured"]
)
def test_a_job_suspended_by_kueue_is_never_resumed_by_kubetune(options: BuildOptions) -> None:
    """Kueue with manageJobsWithoutQueueName suspends a Job kubetune created running (no queue name)."""
    b = body()
    job = created_job(b, options)
    job["spec"]["suspend"] = True  # Kueue's webhook / reconciler
    first = {**b, "status": {"phase": "Pending", "jobName": "demo"}}
    decision = reconcile.decide(first, reconcile.parse(first, options), options, job=job, at=AT)
    assert decision.suspend_job is None and decision.status["phase"] == "Pending"
    assert cond(decision.status, "Reconciling")["reason"] == Reason.QUEUED
    # Kueue admits it; the user then asks for a suspension. Configured: said, never patched. Detected: tried
    # once; when Kueue resumes the Job, said and never tried again (no suspend fight)
    job["spec"]["suspend"] = False
    b2 = body(suspend=True, generation=2, status=decision.status)
    d2 = reconcile.decide(b2, reconcile.parse(b2, options), options, job=job, at=AT)
    if options.kueue_manages_all_jobs:
        assert d2.suspend_job is None and cond(d2.status, "Waiting")["reason"] == Reason.SUSPENDED_BY_QUEUE
        return
    assert d2.suspend_job is True
    job["metadata"]["annotations"].update(d2.job_annotations)  # kubetune's patch landed; Kueue resumed the Job
    d3 = reconcile.decide(again(b2, d2), reconcile.parse(b2, options), options, job=job, at=AT)
    assert d3.suspend_job is None and cond(d3.status, "Waiting")["reason"] == Reason.SUSPENDED_BY_QUEUE


def test_kubetune_resumes_only_what_it_suspended() -> None:
    b = body()
    job = created_job(b)
    job["spec"]["suspend"] = False
    user = body(suspend=True, generation=2, status={"phase": "Running", "jobName": "demo"})
    d = reconcile.decide(user, reconcile.parse(user, OPTIONS), OPTIONS, job=job, at=AT)
    assert d.suspend_job is True and d.job_annotations[SUSPENDED_BY_ANNOTATION] == "kubetune"
    job["spec"]["suspend"] = True
    job["metadata"]["annotations"][SUSPENDED_BY_ANNOTATION] = "kubetune"
    resumed = body(suspend=False, generation=3, status=d.status)
    d2 = reconcile.decide(resumed, reconcile.parse(resumed, OPTIONS), OPTIONS, job=job, at=AT)
    assert d2.suspend_job is False and d2.job_annotations == {SUSPENDED_BY_ANNOTATION: None}


# ------------------------------------------------------------------------------------------ spec hash


def test_an_upgrade_that_changes_the_hash_is_not_a_spec_change(monkeypatch: pytest.MonkeyPatch) -> None:
    b = body()
    job = created_job(b)
    job["status"] = {"active": 1}
    assert job["metadata"]["annotations"][GENERATION_ANNOTATION] == "1"
    running = {**b, "status": {"phase": "Running", "jobName": "demo"}}
    # the next release hashes differently (a default changed, stored objects carry the old one)
    monkeypatch.setattr(reconcile, "spec_hash", lambda spec: "from-a-later-release")
    decision = reconcile.decide(running, reconcile.parse(running, OPTIONS), OPTIONS, job=job, at=AT)
    assert cond(decision.status, "Stalled")["status"] == "False"
    assert decision.job_annotations == {SPEC_HASH_ANNOTATION: "from-a-later-release"}
    assert decision.status["specHash"] == "from-a-later-release"
    # a real edit (a new generation) with a different hash is still a spec change
    edited = {**running, "metadata": {**running["metadata"], "generation": 2}}
    d2 = reconcile.decide(edited, reconcile.parse(edited, OPTIONS), OPTIONS, job=job, at=AT)
    assert cond(d2.status, "Stalled")["reason"] == Reason.SPEC_CHANGED


# ------------------------------------------------------------------------------------------ names and Events


@settings(max_examples=300, deadline=None)
@given(
    hs.from_regex(r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,60}[a-z0-9])?){0,4}", fullmatch=True),
    hs.sampled_from(["pvc", "cm"]),
)
def test_volume_names_are_dns_labels_for_any_object_name(name: str, prefix: str) -> None:
    vol = volume_name(prefix, name)
    assert len(vol) <= 63 and LABEL.fullmatch(vol), vol
    if "." in name or len(name) > 60:
        assert vol != volume_name(prefix, name + "x")


def test_dotted_configmap_and_claim_names_give_valid_volumes() -> None:
    b = body(
        datasets=[{"name": "d", "source": "configmap://data.v1/train.json"}],
        output={"uri": "pvc://results.team-a/out"},
        model={"source": "pvc://models.shared/smol", "credentialsSecret": None},
    )
    b["spec"]["model"].pop("credentialsSecret")
    decision = reconcile.decide(b, reconcile.parse(b, OPTIONS), OPTIONS, job=None, at=AT)
    assert decision.children, decision.status
    pod = decision.children[-1]["spec"]["template"]["spec"]
    names = [v["name"] for v in pod["volumes"]]
    assert all(LABEL.fullmatch(n) and len(n) <= 63 for n in names), names
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert {"results.team-a", "models.shared"} <= claims
    mounts = {m["name"] for m in pod["containers"][0]["volumeMounts"]}
    assert set(names) == mounts


@settings(max_examples=300, deadline=None)
@given(hs.text(min_size=0, max_size=1500), hs.integers(min_value=8, max_value=1100))
def test_event_messages_are_cut_by_utf8_bytes(text: str, limit: int) -> None:
    out = st.truncate_utf8(text, limit)
    data = out.encode("utf-8")
    assert len(data) <= limit
    if len(text.encode("utf-8")) <= limit:
        assert out == text
    else:
        assert out.endswith("\u2026") and text.startswith(out[:-1])


def test_a_long_non_ascii_event_fits_1024_bytes() -> None:
    message = "Обучение прервано: " + "ошибка данных " * 100
    assert len(message) < 2000 and len(message.encode()) > 1024
    out = st.truncate_utf8(message, 1024)
    assert len(out.encode()) <= 1024 and out.encode().decode() == out


def test_a_job_of_an_earlier_release_suspended_for_the_user_is_resumed() -> None:
    """Jobs created before the suspended-by annotation existed were only ever suspended by kubetune (or Kueue with a
    queue): after an upgrade they still resume when the user clears spec.suspend."""
    b = body(suspend=True)
    job = created_job(b)
    for key in (SUSPENDED_BY_ANNOTATION, GENERATION_ANNOTATION):
        job["metadata"]["annotations"].pop(key, None)
    assert job["spec"]["suspend"] is True
    resumed = body(suspend=False, generation=2, status={"phase": "Suspended", "jobName": "demo"})
    d = reconcile.decide(resumed, reconcile.parse(resumed, OPTIONS), OPTIONS, job=job, at=AT)
    assert d.suspend_job is False
    queued = body(suspend=False, generation=2, queueName="team-a", status={"phase": "Pending", "jobName": "demo"})
    assert reconcile.decide(queued, reconcile.parse(queued, OPTIONS), OPTIONS, job=job, at=AT).suspend_job is None


# ------------------------------------------------------------------------------------------ a lagging watch


@pytest.mark.parametrize(
    "on_server",
    [
        None,  # deleted; the watch has not said so yet
        {"metadata": {"uid": "uid-2"}},  # deleted and re-created under the same name
        {"metadata": {"uid": "uid-1", "deletionTimestamp": "2026-12-02T10:00:00Z"}},  # being deleted
    ],
    ids=["gone", "recreated", "deleting"],
)
def test_no_children_for_a_finetunejob_the_server_no_longer_has(on_server: dict[str, Any] | None) -> None:
    """The index may still hold a FineTuneJob that was deleted: one read of the server before creating its children
    keeps them from becoming orphans (under load, a lagging watch made the operator create them)."""
    from unittest import mock

    from kubetune.operator import kube

    created: list[Any] = []

    async def ensure(objs: list[dict[str, Any]]) -> list[str]:
        created.extend(objs)
        return [o["kind"] for o in objs]

    async def server(*_: Any) -> Any:
        return on_server

    async def no(*_: Any) -> bool:
        return True

    b = body()
    with (
        mock.patch.object(kube, "ensure", ensure),
        mock.patch.object(kube, "secret_exists", no),
        mock.patch.object(kube, "get_finetunejob", server),
    ):
        decision = asyncio.run(_once(b))
        assert not created and decision.status == b["status"] and not decision.events
        on_server_now = {"metadata": {"uid": "uid-1"}}
        with mock.patch.object(kube, "get_finetunejob", lambda *_: _async(on_server_now)):
            asyncio.run(_once(b))
    assert [o["kind"] for o in created] == ["ConfigMap", "Service", "Job"]  # the live object gets its children


async def _async(value: Any) -> Any:
    return value
