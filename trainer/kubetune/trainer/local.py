"""`kubetune run`: drive the pod's trainer on this machine, no cluster needed."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kubetune.api.names import dns_label_problem
from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.trainer.errors import ConfigError, TrainerError
from kubetune.trainer.logging import get_logger, setup

log = get_logger(__name__)


def local_config(
    job: FineTuneJob,
    job_file: Path,
    *,
    cache_dir: Path,
    output: str | None = None,
    metrics_port: int | None = None,
    allow_private: list[str] | None = None,
) -> TrainerConfig:
    work_dir = job_file.resolve().parent
    name = job.metadata.name
    namespace = job.metadata.namespace or "default"
    for what, value in (("metadata.namespace", namespace), ("metadata.name", name)):
        problem = dns_label_problem(value)  # validated already; checked again because both become path parts
        if problem:
            raise ConfigError(f"{what}: {problem}")
    output_uri = output or job.spec.output.uri or f"file://{work_dir / 'output' / name}"
    if output_uri.startswith("file://"):
        # resolved here, once: the publisher, the checkpoint uploader (a child process) and the resume all read it,
        # whatever their working directory (a relative file://out once sent checkpoints to the process's cwd)
        from kubetune.trainer.storage.uris import file_path

        output_uri = f"file://{file_path(output_uri, work_dir)}"
    scratch = (cache_dir / "runs" / namespace / name).resolve()
    return TrainerConfig.from_job(
        job,
        output_uri=output_uri,
        work_dir=str(work_dir),
        cache_dir=str(cache_dir.resolve()),
        scratch_dir=str(scratch),
        metrics_port=metrics_port,
        allow_private_urls=list(allow_private or []),
    )


def run_local(job: FineTuneJob, job_file: Path, *, verbose: bool = False, **options: object) -> int:
    """Train ``job`` here; the terminal shows kubetune's lines only, the libraries' output goes to a log file."""
    setup()
    try:
        config = local_config(job, job_file, **options)  # type: ignore[arg-type]
    except TrainerError as exc:
        print(f"{job_file}: {exc}", file=sys.stderr)
        return exc.exit_code
    from kubetune.trainer.console import quiet_console, quiet_libraries

    log_path = Path(config.runtime.scratch_dir) / "run.log"
    failure: TrainerError | None = None
    with quiet_console(log_path, verbose=verbose) as console:
        # the libraries print their notices and deprecation warnings while they are imported: import them here
        quiet_libraries()
        from kubetune.trainer.callbacks.telemetry import Telemetry
        from kubetune.trainer.runner import run

        print(
            f"kubetune: running {job.metadata.name} ({job.spec.stage}, {job.spec.method.type}) locally; "
            f"full log: {log_path}",
            file=console,
            flush=True,
        )
        try:
            with Telemetry(
                config,
                live=True,
                stream=console,
                metrics_addr=os.environ.get("KUBETUNE_METRICS_ADDR", "127.0.0.1"),
                linger_seconds=float(os.environ.get("KUBETUNE_METRICS_LINGER_SECONDS", "0")),
            ) as tel:
                result = run(config, callbacks=tel.callbacks, on_phase=tel.on_phase)
        except TrainerError as exc:
            failure = exc
    if failure is not None:
        print(f"{job_file}: {failure}", file=sys.stderr)
        print(f"kubetune: full log: {log_path}", file=sys.stderr)
        return failure.exit_code
    print(f"kubetune: {job.metadata.name} done; artifact: {result.output_uri}")
    for key in ("train_loss", "eval_loss", "eval_perplexity", "train_runtime"):
        value = result.metrics.get(key)
        if value is not None:
            print(f"  {key}: {value:.4f}" if isinstance(value, float) else f"  {key}: {value}")
    if result.evaluation is not None:
        print(f"  {result.evaluation.summary()}")
    print(f"  full log: {log_path}")
    return 0
