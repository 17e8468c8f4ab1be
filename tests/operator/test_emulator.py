"""The API emulator behaves like a real API server where the operator, kopf and kubectl rely on it.

Driven with the official ``kubernetes`` client over HTTP (the same client the operator uses)."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tests.harness.emulator import FTJ, KubeEmulator
from tests.operator.test_lifecycle import ftj


def core() -> client.CoreV1Api:
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    return client.CoreV1Api()


def custom() -> client.CustomObjectsApi:
    config.load_kube_config(config_file=os.environ["KUBECONFIG"])
    return client.CustomObjectsApi()


def cm(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}}


def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return asyncio.to_thread(fn, *args, **kwargs)


async def test_create_sets_server_metadata_and_answers_201(kube_api: KubeEmulator) -> None:
    created = await run(core().create_namespaced_config_map, "ns1", cm("a"))
    assert created is not None, "the client returns the object only on 201"
    meta = created.metadata
    assert meta.namespace == "ns1" and meta.uid and meta.resource_version and meta.creation_timestamp
    with pytest.raises(ApiException) as exc:
        await run(core().create_namespaced_config_map, "ns1", cm("a"))
    assert exc.value.status == 409 and json.loads(exc.value.body)["reason"] == "AlreadyExists"
    gen = await run(core().create_namespaced_config_map, "ns1", {"metadata": {"generateName": "ev-"}, "data": {}})
    assert gen.metadata.name.startswith("ev-") and len(gen.metadata.name) > 3


async def test_optimistic_concurrency(kube_api: KubeEmulator) -> None:
    created = await run(core().create_namespaced_config_map, "default", cm("b"))
    rv = created.metadata.resource_version
    await run(core().patch_namespaced_config_map, "b", "default", {"data": {"k": "2"}})
    with pytest.raises(ApiException) as exc:
        await run(
            core().patch_namespaced_config_map,
            "b",
            "default",
            {"metadata": {"resourceVersion": rv}, "data": {"k": "3"}},
        )
    assert exc.value.status == 409
    with pytest.raises(ApiException) as exc:
        await run(
            core().patch_namespaced_config_map,
            "b",
            "default",
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
                {"op": "replace", "path": "/data/k", "value": "4"},
            ],
        )
    assert exc.value.status == 422
    assert kube_api.get("v1/configmaps", "default", "b")["data"] == {"k": "2"}


async def test_status_subresource_and_generation(kube_api: KubeEmulator) -> None:
    api = custom()
    obj = await run(
        api.create_namespaced_custom_object,
        "kubetune.io",
        "v1alpha1",
        "default",
        "finetunejobs",
        {**ftj("s"), "status": {"phase": "Succeeded"}},
    )
    assert "status" not in obj and obj["metadata"]["generation"] == 1
    await run(
        api.patch_namespaced_custom_object,
        "kubetune.io",
        "v1alpha1",
        "default",
        "finetunejobs",
        "s",
        {"status": {"phase": "Running"}, "metadata": {"labels": {"x": "y"}}},
    )
    got = kube_api.get(FTJ, "default", "s")
    assert "status" not in got and got["metadata"]["generation"] == 1, "main endpoint: no status, metadata only"
    await run(
        api.patch_namespaced_custom_object_status,
        "kubetune.io",
        "v1alpha1",
        "default",
        "finetunejobs",
        "s",
        {"status": {"phase": "Running"}, "spec": {"stage": "pt"}},
    )
    got = kube_api.get(FTJ, "default", "s")
    assert (
        got["status"] == {"phase": "Running"} and got["spec"]["stage"] == "sft" and got["metadata"]["generation"] == 1
    )
    await run(
        api.patch_namespaced_custom_object,
        "kubetune.io",
        "v1alpha1",
        "default",
        "finetunejobs",
        "s",
        {"spec": {"suspend": True}},
    )
    assert kube_api.get(FTJ, "default", "s")["metadata"]["generation"] == 2


async def test_crd_schema_validation(kube_api: KubeEmulator) -> None:
    bad = ftj("bad")
    bad["spec"]["training"] = {"epochs": "many", "learningRte": 0.1}
    with pytest.raises(ApiException) as exc:
        await run(custom().create_namespaced_custom_object, "kubetune.io", "v1alpha1", "default", "finetunejobs", bad)
    body = json.loads(exc.value.body)
    assert exc.value.status == 422 and body["reason"] == "Invalid"
    fields = {c["field"] for c in body["details"]["causes"]}
    assert "spec.training.epochs" in fields and "spec.training" in fields  # wrong type; unknown field learningRte


async def test_label_and_field_selectors(kube_api: KubeEmulator) -> None:
    for name, team in (("c1", "a"), ("c2", "b"), ("c3", "a")):
        await run(core().create_namespaced_config_map, "default", cm(name, team=team, tier=name))
    names = lambda r: sorted(i.metadata.name for i in r.items)
    assert names(await run(core().list_namespaced_config_map, "default", label_selector="team=a")) == ["c1", "c3"]
    assert names(await run(core().list_namespaced_config_map, "default", label_selector="team!=a")) == ["c2"]
    assert names(await run(core().list_namespaced_config_map, "default", label_selector="tier in (c2,c3),team")) == [
        "c2",
        "c3",
    ]
    assert names(await run(core().list_namespaced_config_map, "default", label_selector="!team")) == []
    assert names(await run(core().list_namespaced_config_map, "default", field_selector="metadata.name=c2")) == ["c2"]
    listed = await run(core().list_namespaced_config_map, "default", _preload_content=False)
    assert (
        json.loads(listed.data)["kind"] == "ConfigMapList"
        and json.loads(listed.data)["metadata"]["resourceVersion"].isdigit()
    )


async def test_watch_honours_resource_version_and_timeout(kube_api: KubeEmulator) -> None:
    first = await run(core().create_namespaced_config_map, "default", cm("w1"))
    await run(core().create_namespaced_config_map, "default", cm("w2"))

    def stream(**kw: Any) -> list[tuple[str, str]]:
        return [
            (e["type"], e["object"].metadata.name)
            for e in watch.Watch().stream(core().list_namespaced_config_map, "default", **kw)
        ]

    # the stream returns at all only if timeoutSeconds ends it: nothing else closes it (the deadline is for a hang)
    events = await asyncio.wait_for(
        run(stream, resource_version=first.metadata.resource_version, timeout_seconds=1), 60
    )
    assert events == [("ADDED", "w2")], "only events after the given resourceVersion"


async def test_owner_reference_garbage_collection(kube_api: KubeEmulator) -> None:
    owner = kube_api.create(FTJ, ftj("owner"))
    child = cm("child")
    child["metadata"]["ownerReferences"] = [
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "name": "owner",
            "uid": owner["metadata"]["uid"],
            "controller": True,
        }
    ]
    kube_api.create("v1/configmaps", child, "default")
    kube_api.create("v1/configmaps", cm("unrelated"), "default")
    await run(custom().delete_namespaced_custom_object, "kubetune.io", "v1alpha1", "default", "finetunejobs", "owner")
    assert kube_api.get("v1/configmaps", "default", "child") is None
    assert kube_api.get("v1/configmaps", "default", "unrelated") is not None


async def test_finalizers_hold_deletion(kube_api: KubeEmulator) -> None:
    obj = ftj("held")
    obj["metadata"]["finalizers"] = ["example.com/hold"]
    kube_api.create(FTJ, obj)
    kube_api.delete(FTJ, "default", "held")
    assert kube_api.get(FTJ, "default", "held")["metadata"]["deletionTimestamp"]
    kube_api.update(FTJ, "default", "held", {"metadata": {"finalizers": None}})
    assert kube_api.get(FTJ, "default", "held") is None
