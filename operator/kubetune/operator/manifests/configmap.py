"""The ConfigMap holding ``trainer.json``: the typed spec plus the pod's runtime paths."""

from __future__ import annotations

from typing import Any

from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.v1alpha1 import ArtifactRef, FineTuneJob
from kubetune.operator.manifests.labels import CONFIG, SPEC_HASH_ANNOTATION, labels
from kubetune.operator.manifests.names import CONFIG_FILE, configmap_name
from kubetune.operator.manifests.options import BuildOptions, Resolved, spec_hash

CACHE_DIR = "/var/cache/kubetune"
STATE_DIR = "/var/lib/kubetune"
SCRATCH_DIR = f"{STATE_DIR}/scratch"
WORK_DIR = f"{STATE_DIR}/work"


def resolved_spec(job: FineTuneJob, resolved: Resolved) -> FineTuneJob:
    """The job with ``fromJob`` references replaced by the upstream artifact URIs."""
    spec = job.spec.model_copy(deep=True)
    if spec.model.adapter is not None and spec.model.adapter.from_job and resolved.adapter_source:
        spec.model = spec.model.model_copy(update={"adapter": ArtifactRef(source=resolved.adapter_source)})
    rm = spec.training.reward_model
    if rm is not None and rm.from_job and resolved.reward_model_source:
        spec.training = spec.training.model_copy(
            update={"reward_model": ArtifactRef(source=resolved.reward_model_source)}
        )
    ev = spec.evaluation
    if (
        ev is not None
        and ev.reward_model is not None
        and ev.reward_model.from_job
        and resolved.evaluation_reward_source
    ):
        spec.evaluation = ev.model_copy(update={"reward_model": ArtifactRef(source=resolved.evaluation_reward_source)})
    return job.model_copy(update={"spec": spec})


def trainer_config(job: FineTuneJob, options: BuildOptions, resolved: Resolved) -> TrainerConfig:
    return TrainerConfig.from_job(
        resolved_spec(job, resolved),
        output_uri=resolved.output_uri,
        work_dir=WORK_DIR,
        cache_dir=CACHE_DIR,
        scratch_dir=SCRATCH_DIR,
        metrics_port=options.metrics_port,
    )


def build_configmap(job: FineTuneJob, options: BuildOptions, resolved: Resolved) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": configmap_name(job.metadata.name),
            "namespace": job.metadata.namespace,
            "labels": labels(job.metadata.name, CONFIG),
            "annotations": {SPEC_HASH_ANNOTATION: spec_hash(job.spec)},
        },
        "data": {CONFIG_FILE: trainer_config(job, options, resolved).to_json() + "\n"},
    }
