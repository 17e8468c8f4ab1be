"""Pure builders of a FineTuneJob's children: ConfigMap, headless Service, Indexed Job.

Every function takes typed inputs and returns plain dicts; nothing here talks to the
API server or imports kopf. Owner references are added by the handler (``kopf.append_owner_reference``; not
``kopf.adopt``, which would also copy the FineTuneJob's labels, Kueue's queue label among them).
"""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.operator.manifests.configmap import build_configmap
from kubetune.operator.manifests.job import build_job
from kubetune.operator.manifests.options import (
    DEFAULT_GPU_RESOURCE,
    DEFAULT_IMAGE,
    MASTER_PORT,
    BuildOptions,
    MissingOutput,
    Resolved,
    output_uri,
    spec_hash,
)
from kubetune.operator.manifests.service import build_service

__all__ = [
    "DEFAULT_GPU_RESOURCE",
    "DEFAULT_IMAGE",
    "MASTER_PORT",
    "BuildOptions",
    "MissingOutput",
    "Resolved",
    "build_all",
    "output_uri",
    "spec_hash",
    "to_yaml",
]


def build_all(
    job: FineTuneJob, options: BuildOptions, resolved: Resolved | None = None, *, queue_name: str | None = None
) -> list[dict[str, Any]]:
    """ConfigMap, Service and Job, in the order they must be created (``queue_name``: the Kueue queue, when it
    comes from the FineTuneJob's label rather than spec.queueName)."""
    if not job.metadata.namespace:
        job = job.model_copy(update={"metadata": job.metadata.model_copy(update={"namespace": "default"})})
    resolved = resolved or Resolved(output_uri=output_uri(job, options))
    return [
        build_configmap(job, options, resolved),
        build_service(job, options),
        build_job(job, options, queue_name=queue_name),
    ]


def to_yaml(objs: list[dict[str, Any]]) -> str:
    """Multi-document YAML; multi-line strings (trainer.json) as literal blocks, keys in build order."""
    import yaml

    class _Dumper(yaml.SafeDumper):
        pass

    def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    _Dumper.add_representer(str, _str)
    return yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, explicit_start=True)
