"""TrainerConfig: the contract between the operator (or `kubetune run`) and the trainer.

It is the typed FineTuneJob spec plus the runtime facts of one run (paths, ports,
identity). The operator writes it into a ConfigMap as ``trainer.json``; the trainer
reads it back with the same model, so the contract is written down once.
"""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import ConfigDict, Field

from kubetune.api.v1alpha1 import FineTuneJob, FineTuneJobSpec, _Model


class RuntimeSpec(_Model):
    """Facts of one run that are not part of the user's spec."""

    model_config = ConfigDict(**{**_Model.model_config, "validate_by_name": True})

    job_name: str = Field(..., description="FineTuneJob name (metric label, artifact naming).")
    namespace: str = Field("default", description="FineTuneJob namespace (metric label).")
    output_uri: str = Field(..., description="Resolved output URI (spec.output.uri or the local default).")
    work_dir: str = Field(".", description="Folder that relative file:// URIs resolve against.")
    cache_dir: str = Field(..., description="Model/data/tokenized-data cache folder.")
    scratch_dir: str = Field(..., description="Local folder where artifacts are staged before upload.")
    metrics_port: int | None = Field(None, description="Port of the Prometheus endpoint on rank 0 (None: off).")
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
        return cls(spec=job.spec, runtime=RuntimeSpec(**rt))

    def to_json(self) -> str:
        return json.dumps(self.model_dump(by_alias=True, mode="json", exclude_none=True), indent=2, sort_keys=True)

    @classmethod
    def from_file(cls, path: str | Path) -> TrainerConfig:
        return cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
