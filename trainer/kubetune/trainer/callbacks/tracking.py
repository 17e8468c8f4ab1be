"""``spec.training.reportTo``: TensorBoard, Weights & Biases and MLflow, all offline by default.

transformers' own integration callbacks do the logging; this module only points them at
local files (unless the pod's environment already names a server) and, before the
manifest is written, closes them and copies their files into ``<artifact>/logs/<tracker>``
so they are published with the adapter and covered by the manifest's hashes.
"""

from __future__ import annotations

import gc
import os
import shutil
import sys
from pathlib import Path

from kubetune.api.trainer_config import TrainerConfig
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger

log = get_logger(__name__)

# reportTo value → the module transformers looks for (the pip package that provides it)
TRACKER_MODULES = {"tensorboard": ("tensorboardX", "tensorboard"), "wandb": ("wandb",), "mlflow": ("mlflow",)}
INSTALL_HINT = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow-skinny"}


def tracking_env(config: TrainerConfig, root: Path) -> dict[str, str]:
    """Environment that makes each requested tracker write under ``root`` (never over the network)."""
    job = config.runtime.job_name
    env: dict[str, str] = {}
    for tracker in config.spec.training.report_to:
        if tracker == "tensorboard":
            env["TENSORBOARD_LOGGING_DIR"] = str(root / "tensorboard")
        elif tracker == "mlflow":
            env["MLFLOW_TRACKING_URI"] = (root / "mlruns").resolve().as_uri()
            env["MLFLOW_EXPERIMENT_NAME"] = f"{config.runtime.namespace}/{job}"
            env["MLFLOW_ALLOW_FILE_STORE"] = "true"  # mlflow 3 keeps the file store behind this opt-in
        elif tracker == "wandb":
            env["WANDB_MODE"] = "offline"
            env["WANDB_DIR"] = str(root)
            env["WANDB_PROJECT"] = "kubetune"
            env["WANDB_NAME"] = job
            env["WANDB_SILENT"] = "true"
    return env


def check_installed(config: TrainerConfig) -> None:
    import importlib.util

    for tracker in config.spec.training.report_to:
        if not any(importlib.util.find_spec(module) for module in TRACKER_MODULES[tracker]):
            raise ConfigError(
                f"spec.training.reportTo: {tracker} is requested but not installed in the trainer image; "
                f"pip install {INSTALL_HINT[tracker]} (or remove it from reportTo)"
            )


def _symlinks(folder: str, names: list[str]) -> list[str]:
    return [name for name in names if os.path.islink(os.path.join(folder, name))]


class Trackers:
    """Sets the tracker environment before training and publishes their files after it."""

    def __init__(self, config: TrainerConfig, scratch: Path | None = None) -> None:
        self.config = config
        self.requested = list(config.spec.training.report_to)
        self.root = (scratch or Path(config.runtime.scratch_dir)) / "tracking"
        self.applied: dict[str, str] = {}

    def setup(self) -> None:
        if not self.requested:
            return
        check_installed(self.config)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        for key, value in tracking_env(self.config, self.root).items():
            if key not in os.environ:  # a server named in the pod's env wins
                os.environ[key] = value
                self.applied[key] = value
        log.info("experiment trackers %s write under %s", ", ".join(self.requested), self.root)

    def finish(self) -> None:
        """End open tracker runs so their files stop changing."""
        if "mlflow" in self.requested and "mlflow" in sys.modules:
            import mlflow

            while mlflow.active_run() is not None:
                mlflow.end_run()
        if "wandb" in self.requested and "wandb" in sys.modules:
            import wandb

            if wandb.run is not None:
                wandb.finish()  # quiet through WANDB_SILENT (finish() lost its quiet= argument)
        gc.collect()  # drops TensorBoard writers left behind by the Trainer, which flushes and closes them

    def publish(self, artifact_dir: Path) -> list[str]:
        """Copy every local tracker folder into ``artifact_dir/logs``; returns the trackers copied."""
        if not self.requested:
            return []
        self.finish()
        copied = []
        for child in sorted(self.root.iterdir()) if self.root.exists() else []:
            if child.is_dir() and any(child.rglob("*")):
                # without symlinks: W&B's latest-run points at the run folder, which is copied anyway
                shutil.copytree(child, artifact_dir / "logs" / child.name, dirs_exist_ok=True, ignore=_symlinks)
                copied.append(child.name)
        return copied

    def restore_env(self) -> None:
        for key in self.applied:
            os.environ.pop(key, None)
        self.applied.clear()
