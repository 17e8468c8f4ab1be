"""Operator-wide options and resolved facts the child builders share (kept apart from the package's
``build_all`` so the builders and the package do not import each other)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from kubetune.api.metrics import DEFAULT_METRICS_PORT
from kubetune.api.v1alpha1 import FineTuneJob

MASTER_PORT = 29500
DEFAULT_IMAGE = "ghcr.io/kubetune/kubetune-trainer:0.1.0"
DEFAULT_GPU_RESOURCE = "nvidia.com/gpu"


@dataclass(frozen=True)
class BuildOptions:
    """Operator-wide defaults that shape the children (from ``kubetune operator`` flags)."""

    trainer_image: str = DEFAULT_IMAGE
    gpu_resource: str = DEFAULT_GPU_RESOURCE
    default_output_uri: str | None = None
    default_credentials_secret: str | None = None
    """Secret with storage credentials (AWS_* keys) for jobs that name none in spec.output.credentialsSecret."""
    metrics_port: int = DEFAULT_METRICS_PORT
    image_pull_policy: str = "IfNotPresent"
    extra_env: dict[str, str] = field(default_factory=dict)
    kueue_manages_all_jobs: bool = False
    """Kueue runs with ``manageJobsWithoutQueueName: true``: it suspends and admits every Job, so kubetune never
    resumes one (it does not anyway unless it suspended the Job itself)."""


@dataclass(frozen=True)
class Resolved:
    """Facts the operator resolved before building: where output goes, upstream artifacts."""

    output_uri: str
    adapter_source: str | None = None
    reward_model_source: str | None = None
    evaluation_reward_source: str | None = None  # spec.evaluation.rewardModel.fromJob


class MissingOutput(ValueError):
    """spec.output.uri is unset and the operator has no default output base."""

    path = "spec.output.uri"


def output_uri(job: FineTuneJob, options: BuildOptions) -> str:
    """spec.output.uri, else ``<default base>/<namespace>/<name>``."""
    if job.spec.output.uri:
        return job.spec.output.uri
    if not options.default_output_uri:
        raise MissingOutput(
            "spec.output.uri is not set and the operator has no default (--default-output-uri / "
            "KUBETUNE_DEFAULT_OUTPUT_URI); set spec.output.uri to s3://bucket/prefix or pvc://claim/path"
        )
    base = options.default_output_uri.rstrip("/")
    return f"{base}/{job.metadata.namespace or 'default'}/{job.metadata.name}"


def spec_hash(spec: Any) -> str:
    """Hash of what the children are built from; ``suspend`` may change after start, so it is left out.

    A parsed spec is hashed without its defaults, so an operator upgrade that adds a defaulted field
    does not make every running FineTuneJob look changed."""
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(by_alias=True, exclude_defaults=True, mode="json")
    body = {k: v for k, v in spec.items() if k != "suspend"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]
