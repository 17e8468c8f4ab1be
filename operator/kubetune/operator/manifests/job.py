"""The training Job: ``batch/v1``, ``completionMode: Indexed``, one pod per node.

Built by composition: :func:`base_job` and then small named steps, each adding one
concern (GPUs, config volume, shared memory, caches, credentials, rendezvous, scheduling,
security). Every step takes the Job dict and the FineTuneJob, and returns the Job.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from kubetune.api.conditions import NON_RETRYABLE_EXIT_CODES
from kubetune.api.trainer_config import configmap_mount
from kubetune.api.v1alpha1 import FineTuneJob, uri_scheme
from kubetune.operator.manifests.configmap import CACHE_DIR, STATE_DIR
from kubetune.operator.manifests.labels import QUEUE_LABEL, SPEC_HASH_ANNOTATION, TRAINER, labels, selector
from kubetune.operator.manifests.names import (
    CONFIG_DIR,
    CONFIG_PATH,
    configmap_name,
    job_name,
    master_addr,
    service_name,
    volume_name,
)
from kubetune.operator.manifests.options import MASTER_PORT, BuildOptions, spec_hash

CONTAINER = "trainer"
TERMINATION_LOG = "/dev/termination-log"
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
PVC_ROOT = "/mnt/pvc"
RUN_AS_USER = 1000

Step = Callable[[dict[str, Any], FineTuneJob, BuildOptions], dict[str, Any]]


def _pod(job: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = job["spec"]["template"]["spec"]
    return pod


def _container(job: dict[str, Any]) -> dict[str, Any]:
    container: dict[str, Any] = _pod(job)["containers"][0]
    return container


def base_job(ftj: FineTuneJob, options: BuildOptions, queue_name: str | None = None) -> dict[str, Any]:
    spec = ftj.spec
    name = ftj.metadata.name
    nodes = spec.resources.nodes
    meta_labels = labels(name, TRAINER)
    queue = spec.queue_name or queue_name
    if queue:  # the only way Kueue's label reaches the Job: kubetune means Kueue to manage it
        meta_labels[QUEUE_LABEL] = queue
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        "completions": nodes,
        "parallelism": nodes,
        "backoffLimit": spec.run_policy.backoff_limit,
        # Kueue admits a Job by unsuspending it, so a queued Job starts suspended.
        "suspend": bool(spec.suspend or queue),
        "podFailurePolicy": {
            "rules": [
                {
                    "action": "FailJob",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": list(NON_RETRYABLE_EXIT_CODES),
                    },
                },
                # Preemption and node drains are not the trainer's fault: retry without counting.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
            ]
        },
        "template": {
            "metadata": {"labels": {**labels(name, TRAINER), **selector(name)}},
            "spec": {
                "restartPolicy": "Never",
                "subdomain": service_name(name),
                "automountServiceAccountToken": False,
                "containers": [
                    {
                        "name": CONTAINER,
                        "image": spec.resources.image or options.trainer_image,
                        "imagePullPolicy": options.image_pull_policy,
                        "command": ["kubetune-train", "--config", CONFIG_PATH],
                        "env": [],
                        "ports": [],
                        "volumeMounts": [],
                        "terminationMessagePath": TERMINATION_LOG,
                        "terminationMessagePolicy": "FallbackToLogsOnError",
                    }
                ],
                "volumes": [],
            },
        },
    }
    if spec.run_policy.active_deadline_seconds is not None:
        job_spec["activeDeadlineSeconds"] = spec.run_policy.active_deadline_seconds
    if spec.run_policy.ttl_seconds_after_finished is not None:
        job_spec["ttlSecondsAfterFinished"] = spec.run_policy.ttl_seconds_after_finished
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name),
            "namespace": ftj.metadata.namespace,
            "labels": meta_labels,
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(spec)},
        },
        "spec": job_spec,
    }


def gpu_resource(ftj: FineTuneJob, options: BuildOptions) -> str:
    """spec.resources.gpuResource when the user set it, else the operator's default."""
    res = ftj.spec.resources
    return res.gpu_resource if "gpu_resource" in res.model_fields_set else options.gpu_resource


def with_resources(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    res = ftj.spec.resources
    amounts: dict[str, str] = {}
    if res.cpu:
        amounts["cpu"] = res.cpu
    if res.memory:
        amounts["memory"] = res.memory
    limits = dict(amounts)
    if res.gpus_per_node > 0:
        limits[gpu_resource(ftj, options)] = str(res.gpus_per_node)
    resources: dict[str, Any] = {}
    if amounts:
        resources["requests"] = amounts
    if limits:
        resources["limits"] = limits
    _container(job)["resources"] = resources
    return job


def with_rendezvous(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    res = ftj.spec.resources
    env = _container(job)["env"]
    env += [
        {"name": "NNODES", "value": str(res.nodes)},
        {
            "name": "NODE_RANK",
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX_ANNOTATION}']"}},
        },
        {"name": "NPROC_PER_NODE", "value": str(max(1, res.gpus_per_node))},
        {"name": "MASTER_ADDR", "value": master_addr(ftj.metadata.name)},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
    ]
    _container(job)["ports"] += [
        {"name": "rendezvous", "containerPort": MASTER_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": options.metrics_port, "protocol": "TCP"},
    ]
    return job


def with_runtime_env(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    _container(job)["env"] += [
        {"name": "KUBETUNE_TERMINATION_LOG", "value": TERMINATION_LOG},
        {"name": "HOME", "value": STATE_DIR},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        *({"name": k, "value": v} for k, v in sorted(options.extra_env.items())),
    ]
    return job


def _volume(job: dict[str, Any], volume: dict[str, Any], mount_path: str, read_only: bool = False) -> None:
    if any(v["name"] == volume["name"] for v in _pod(job)["volumes"]):
        return
    _pod(job)["volumes"].append(volume)
    mount = {"name": volume["name"], "mountPath": mount_path}
    if read_only:
        mount["readOnly"] = True
    _container(job)["volumeMounts"].append(mount)


def with_config_volume(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    _volume(
        job, {"name": "config", "configMap": {"name": configmap_name(ftj.metadata.name)}}, CONFIG_DIR, read_only=True
    )
    return job


def with_shm(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    shm = {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": ftj.spec.resources.shared_memory}}
    _volume(job, shm, "/dev/shm")
    return job


def with_cache(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    res = ftj.spec.resources
    if res.cache_claim:
        cache = {"name": "cache", "persistentVolumeClaim": {"claimName": res.cache_claim}}
    else:
        cache = {"name": "cache", "emptyDir": {"sizeLimit": res.cache_size}}
    _volume(job, cache, CACHE_DIR)
    _volume(job, {"name": "state", "emptyDir": {}}, STATE_DIR)
    _volume(job, {"name": "tmp", "emptyDir": {}}, "/tmp")  # the root filesystem is read-only (with_security)
    return job


def _uris(ftj: FineTuneJob) -> list[tuple[str, bool]]:
    """(URI, writable) of everything the pod reads or writes."""
    spec = ftj.spec
    uris = [(spec.model.source, False)]
    uris += [(d.source, False) for d in (*spec.datasets, *spec.eval_datasets)]
    if spec.dataset_registry:
        uris.append((spec.dataset_registry.source, False))
    for ref in (spec.model.adapter, spec.training.reward_model):
        if ref is not None and ref.source:
            uris.append((ref.source, False))
    if spec.output.uri:
        uris.append((spec.output.uri, True))
    return uris


def with_data_volumes(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    """pvc://claim/... is mounted at /mnt/pvc/<claim>; configmap://name/key at /mnt/configmap/<name>."""
    writable = {u.split("://", 1)[1].split("/", 1)[0] for u, w in _uris(ftj) if w and uri_scheme(u) == "pvc"}
    if options.default_output_uri and not ftj.spec.output.uri and uri_scheme(options.default_output_uri) == "pvc":
        writable.add(options.default_output_uri.split("://", 1)[1].split("/", 1)[0])
    claims = sorted(
        {u.split("://", 1)[1].split("/", 1)[0] for u, _ in _uris(ftj) if uri_scheme(u) == "pvc"} | writable
    )
    for claim in claims:
        vol: dict[str, Any] = {"name": volume_name("pvc", claim), "persistentVolumeClaim": {"claimName": claim}}
        if claim not in writable:
            vol["persistentVolumeClaim"]["readOnly"] = True
        _volume(job, vol, f"{PVC_ROOT}/{claim}", read_only=claim not in writable)
    maps = sorted({u.split("://", 1)[1].split("/", 1)[0] for u, _ in _uris(ftj) if uri_scheme(u) == "configmap"})
    for cm in maps:
        _volume(job, {"name": volume_name("cm", cm), "configMap": {"name": cm}}, configmap_mount(cm), read_only=True)
    return job


def credential_secrets(ftj: FineTuneJob, options: BuildOptions | None = None) -> list[str]:
    """Secrets the pods read, in envFrom order (later ones win on duplicate keys). A job that names no output
    Secret gets the operator's default storage Secret (``--default-credentials-secret``), if one is configured."""
    spec = ftj.spec
    output_secret = spec.output.credentials_secret or (options.default_credentials_secret if options else None)
    names = [
        spec.model.credentials_secret,
        output_secret,
        spec.output.hub.credentials_secret if spec.output.hub else None,
    ]
    out: list[str] = []
    for n in names:
        if n and n not in out:
            out.append(n)
    return out


def with_credentials(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    """Credentials reach the pod only as references to the named Secrets, never as values."""
    secrets = credential_secrets(ftj, options)
    if secrets:
        _container(job)["envFrom"] = [{"secretRef": {"name": s}} for s in secrets]
    return job


def with_scheduling(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    res = ftj.spec.resources
    pod = _pod(job)
    if res.node_selector:
        pod["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        pod["tolerations"] = copy.deepcopy(res.tolerations)
    if res.affinity:
        pod["affinity"] = copy.deepcopy(res.affinity)
    if res.priority_class_name:
        pod["priorityClassName"] = res.priority_class_name
    if res.service_account_name:
        pod["serviceAccountName"] = res.service_account_name
    return job


def with_security(job: dict[str, Any], ftj: FineTuneJob, options: BuildOptions) -> dict[str, Any]:
    _pod(job)["securityContext"] = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "fsGroup": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    _container(job)["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    return job


STEPS: tuple[Step, ...] = (
    with_resources,
    with_rendezvous,
    with_runtime_env,
    with_config_volume,
    with_shm,
    with_cache,
    with_data_volumes,
    with_credentials,
    with_scheduling,
    with_security,
)


def build_job(ftj: FineTuneJob, options: BuildOptions, queue_name: str | None = None) -> dict[str, Any]:
    job = base_job(ftj, options, queue_name)
    for step in STEPS:
        job = step(job, ftj, options)
    container = _container(job)
    for key in ("ports", "volumeMounts"):
        if not container[key]:
            del container[key]
    return job
