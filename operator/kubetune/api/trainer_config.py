"""TrainerConfig: the contract between the operator (or `kubetune run`) and the trainer.

It is the typed FineTuneJob spec plus the runtime facts of one run (paths, ports,
identity). The operator writes it into a ConfigMap as ``trainer.json``; the trainer
reads it back with the same model, so the contract is written down once.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ConfigDict, Field

from kubetune.api.checks import Int
from kubetune.api.v1alpha1 import FineTuneJob, FineTuneJobSpec, _Model

# Where a pod finds the keys of a ConfigMap named by a ``configmap://<name>/<key>`` source: the Job builder mounts
# ConfigMap <name> at CONFIGMAP_ROOT/<name>, and the trainer reads CONFIGMAP_ROOT/<name>/<key>. One constant for both.
CONFIGMAP_ROOT = "/mnt/configmap"
# The API server refuses a ConfigMap whose data is over 1 MiB (corev1 validation, MaxSecretSize).
MAX_CONFIGMAP_BYTES = 1024 * 1024


def configmap_mount(name: str) -> str:
    """The folder holding the keys of ConfigMap ``name`` in a training pod."""
    return f"{CONFIGMAP_ROOT}/{name}"


def configmap_size_problem(data: dict[str, str]) -> str | None:
    """Why a ConfigMap with this ``data`` would be refused by the API server for its size; None when it fits."""
    size = sum(len(k.encode()) + len(v.encode("utf-8", "surrogatepass")) for k, v in data.items())
    if size > MAX_CONFIGMAP_BYTES:
        return (
            f"the rendered trainer config is {size:,} bytes, over the API server's limit of {MAX_CONFIGMAP_BYTES:,} "
            "bytes for a ConfigMap; move long lists (datasets) into a datasetRegistry file"
        )
    return None


class RuntimeSpec(_Model):
    """Facts of one run that are not part of the user's spec."""

    model_config = ConfigDict(**{**_Model.model_config, "validate_by_name": True})

    job_name: str = Field(..., description="FineTuneJob name (metric label, artifact naming).")
    namespace: str = Field("default", description="FineTuneJob namespace (metric label).")
    output_uri: str = Field(..., description="Resolved output URI (spec.output.uri or the local default).")
    work_dir: str = Field(".", description="Folder that relative file:// URIs resolve against.")
    cache_dir: str = Field(..., description="Model/data/tokenized-data cache folder.")
    scratch_dir: str = Field(..., description="Local folder where artifacts are staged before upload.")
    metrics_port: Int | None = Field(
        None, ge=0, le=65535, description="Port of the Prometheus endpoint on rank 0 (None: off)."
    )
    allow_private_urls: list[str] = Field(
        default_factory=list, description="Hosts/addresses the URL guard lets through (e.g. 127.0.0.1 in tests)."
    )
    progress_file: str | None = Field(None, description="Where rank 0 writes a progress JSON (local view).")


class TrainerConfig(_Model):
    """Everything the trainer needs: the spec and the runtime."""

    spec: FineTuneJobSpec
    runtime: RuntimeSpec

    @classmethod
    def from_job(cls, job: FineTuneJob, **runtime: object) -> TrainerConfig:
        rt = {"job_name": job.metadata.name, "namespace": job.metadata.namespace or "default", **runtime}
        return cls(spec=job.spec, runtime=RuntimeSpec.model_validate(rt))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json", exclude_none=True), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainerConfig:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))


def rendered_size_problem(job: FineTuneJob) -> str | None:
    """Whether the trainer.json the operator will render for ``job`` can fit in a ConfigMap, checked at validation
    time with runtime values as long as the operator's (the builder checks the real object again)."""
    compact = len(job.spec.model_dump_json(by_alias=True, exclude_none=True))
    if compact * 3 + 16 * 1024 < MAX_CONFIGMAP_BYTES:  # far below the limit, even indented with the runtime added
        return None
    config = TrainerConfig.from_job(
        job,
        output_uri="s3://" + "x" * 1024,
        cache_dir="/var/cache/kubetune",
        scratch_dir="/var/lib/kubetune/scratch",
        work_dir="/var/lib/kubetune/work",
        metrics_port=65535,
    )
    return configmap_size_problem({"trainer.json": config.to_json() + "\n"})
