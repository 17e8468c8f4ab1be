"""run(config): the one place that sequences a training run.

convert data (fail fast on bad data, before any weights) → fetch model → tokenizer/template
→ tokenize → stage workflow (train) → save tokenizer → manifest (last) → publish.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.artifacts.curves import write_curves
from kubetune.trainer.artifacts.manifest import build_manifest, write_manifest
from kubetune.trainer.artifacts.tokenizer import use_training_template
from kubetune.trainer.data.loader import check_converted, convert_all, tokenize_all
from kubetune.trainer.data.options import DataOptions
from kubetune.trainer.data.templates import get_template
from kubetune.trainer.errors import ConfigError, GateFailed
from kubetune.trainer.evaluation import EvaluationResult, evaluate, load_prompt_sets
from kubetune.trainer.logging import get_logger, is_main
from kubetune.trainer.models.kernels import resolve_for_training
from kubetune.trainer.models.loader import load_tokenizer, resolve_model
from kubetune.trainer.preflight import check_fit
from kubetune.trainer.stages import RunContext, get_stage
from kubetune.trainer.storage.cache import set_limit as set_cache_limit
from kubetune.trainer.storage.checkpoints import delete_all as delete_checkpoints
from kubetune.trainer.storage.fetch import fetch
from kubetune.trainer.storage.publish import publish
from kubetune.trainer.storage.uploader import checkpoint_callback

log = get_logger(__name__)

PhaseHook = Callable[..., None]  # (phase, **facts): facts are memory_estimate_gib, datasets


@dataclass
class RunResult:
    output_uri: str
    artifact_dir: Path
    metrics: dict[str, Any]
    reports: list[dict[str, Any]] = field(default_factory=list)
    evaluation: EvaluationResult | None = None  # spec.evaluation: base vs trained and the gate's verdict


def fetch_artifact(config: TrainerConfig, ref: Any, field: str) -> Path | None:
    """A model artifact given by ``source:`` (the operator turns ``fromJob:`` into a source before the pod runs)."""
    if ref is None:
        return None
    if ref.source is None:
        raise ConfigError(f"{field}.fromJob is resolved by the operator; `kubetune run` needs {field}.source")
    return fetch(
        ref.source,
        field=f"{field}.source",
        work_dir=config.runtime.work_dir,
        cache_dir=config.runtime.cache_dir,
        kind="model",
        allow=config.runtime.allow_private_urls,
    )


def job_gpus() -> int:
    """GPUs this run trains on: one per process of the job on CUDA (WORLD_SIZE), none on CPU."""
    import torch

    return int(os.environ.get("WORLD_SIZE", "1")) if torch.cuda.is_available() else 0


def run(config: TrainerConfig, callbacks: list[Any] | None = None, on_phase: PhaseHook | None = None) -> RunResult:
    phase = on_phase or (lambda _phase, **_facts: None)
    spec = config.spec
    set_cache_limit(spec.resources.cache_size)  # fetches trim the cache to it, least recently used first
    scratch = Path(config.runtime.scratch_dir)
    artifact_dir = scratch / "artifact"
    work_dir = scratch / "trainer"
    if is_main():
        shutil.rmtree(artifact_dir, ignore_errors=True)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()

    phase("loading_data")
    data_options = DataOptions.from_config(config)
    converted = convert_all(data_options)
    check_converted(converted)
    prompt_sets = load_prompt_sets(config)  # spec.evaluation.prompts: bad prompts fail before any weights

    phase("fetching_model")
    kernels = resolve_for_training(spec.training)  # a missing kernel package fails before the model download
    model_ref = resolve_model(config)
    memory_estimate = check_fit(config, model_ref.path)
    tokenizer = load_tokenizer(model_ref, spec.model.trust_remote_code)
    try:
        template = get_template(spec.model.template, tokenizer)
    except ValueError as exc:
        raise ConfigError(f"spec.model.template: {exc}") from None
    use_training_template(tokenizer, template)  # the saved tokenizer (and merged model) render what was trained on

    phase("loading_data")
    data = tokenize_all(data_options, tokenizer, template, converted)
    adapter_init = fetch_artifact(config, spec.model.adapter, "spec.model.adapter")
    reward_model = fetch_artifact(config, spec.training.reward_model, "spec.training.rewardModel")
    evaluation_rm = fetch_artifact(
        config, spec.evaluation.reward_model if spec.evaluation else None, "spec.evaluation.rewardModel"
    )

    phase("training", memory_estimate_gib=memory_estimate, datasets=[r.to_dict() for r in data.reports])
    uploader = checkpoint_callback(config)  # remote output + everySteps: upload checkpoints in the background
    ctx = RunContext(
        config=config,
        model_ref=model_ref,
        tokenizer=tokenizer,
        template=template,
        data=data,
        artifact_dir=artifact_dir,
        work_dir=work_dir,
        callbacks=[*(callbacks or []), *([uploader] if uploader else [])],
        checkpoint_hooks=[uploader] if uploader else [],
        adapter_init=adapter_init,
        reward_model=reward_model,
    )
    result = get_stage(spec.stage)(ctx)

    if not is_main():
        return RunResult(config.runtime.output_uri, artifact_dir, result.metrics)

    phase("saving")
    tokenizer.save_pretrained(str(artifact_dir))
    (artifact_dir / "trainer_log.jsonl").write_text(
        "".join(json.dumps(entry) + "\n" for entry in result.log_history), encoding="utf-8"
    )
    write_curves(result.log_history, artifact_dir, title=config.runtime.job_name)
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))}
    metrics["wall_seconds"] = round(time.time() - started, 2)
    metrics["gpu_seconds"] = round(metrics["wall_seconds"] * job_gpus(), 2)  # this run's share of status.cost
    manifest = build_manifest(
        artifact_dir,
        job={
            "name": config.runtime.job_name,
            "namespace": config.runtime.namespace,
            "stage": spec.stage,
            "method": spec.method.type,
            "kernels": kernels.to_manifest(),
        },
        model={"source": model_ref.source, "revision": model_ref.revision, "sha256": model_ref.sha256},
        datasets=data.provenance,
        config=config.spec.model_dump(by_alias=True, mode="json", exclude_none=True),
        metrics=metrics,
    )
    if "guard" in result.extra:  # the divergence guard's rollbacks (spec.training.guard)
        manifest["guard"] = result.extra["guard"]
    evaluation: EvaluationResult | None = None
    if spec.evaluation is not None:  # the gate: the artifact is published either way, promoted or not
        phase("evaluating")
        evaluation = evaluate(
            config,
            model_ref=model_ref,
            tokenizer=tokenizer,
            template=template,
            eval_rows=data.eval,
            prompt_sets=prompt_sets,
            artifact_dir=artifact_dir,
            adapter_init=adapter_init,
            reward_model_path=evaluation_rm,
        )
        manifest["evaluation"] = evaluation.to_manifest()
        manifest["promoted"] = evaluation.promoted
    write_manifest(artifact_dir, manifest)

    phase("uploading")
    final_uri = publish(
        artifact_dir,
        config.runtime.output_uri,
        work_dir=config.runtime.work_dir,
        allow=config.runtime.allow_private_urls,
    )
    log.info("artifact written to %s", final_uri)
    if evaluation is not None and not evaluation.promoted:
        # kept for inspection (manifest: promoted false); not pushed to a hub, and the job fails (not retried)
        raise GateFailed(
            f"{evaluation.summary()}; the artifact at {final_uri} is kept, not promoted",
            termination=evaluation.termination_lines(),
        )
    if uploader is not None and not spec.checkpointing.keep_after_success:
        # the manifest is published: the checkpoints (optimizer state included) have done their job
        deleted = delete_checkpoints(config.runtime.output_uri, allow=config.runtime.allow_private_urls)
        log.info("deleted %d uploaded checkpoint(s) (spec.checkpointing.keepAfterSuccess is false)", len(deleted))
    if spec.output.hub is not None:
        from kubetune.trainer.storage.hubs import push_to_hub

        hub_url = push_to_hub(
            artifact_dir,
            repo=spec.output.hub.repo,
            private=spec.output.hub.private,
            allow=config.runtime.allow_private_urls,
        )
        log.info("artifact pushed to %s", hub_url)
    phase("done")
    return RunResult(final_uri, artifact_dir, metrics, [r.to_dict() for r in data.reports], evaluation)
