"""CheckpointUploader: a TrainerCallback (and stages checkpoint hook) that uploads checkpoints in the background.

The training loop pays only for hard-linking the new ``checkpoint-N`` into a staging folder. A daemon
thread takes the newest staged checkpoint and runs ``python -m kubetune.trainer.storage.checkpoints``
on it in a child process at a lower CPU priority: the upload (hashing, HTTP, retries) never holds the
training process's GIL, and the kernel schedules the training threads first. ``on_train_end`` waits
for the queue to drain; failed uploads are logged and listed in ``errors`` (training goes on, the
next checkpoint tries again). :func:`checkpoint_callback` makes one for a TrainerConfig.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage.checkpoints import Checkpoint, checkpoint_uri, stage_checkpoint
from kubetune.trainer.storage.uris import Uri

log = get_logger(__name__)


def _child_env() -> dict[str, str]:
    """The parent's env, plus the folders kubetune is imported from (it may run from a source tree)."""
    import kubetune

    roots = [str(Path(p).parent) for p in kubetune.__path__]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([*roots, *filter(None, [env.get("PYTHONPATH")])])
    return env


class CheckpointUploader(TrainerCallback):
    """Upload each saved ``checkpoint-N`` to ``<output>/checkpoints/step-N/`` without stopping training."""

    def __init__(self, output_uri: str, keep: int, *, allow: Iterable[str] = (), on_save: bool = True, nice: int = 10):
        self.output_uri, self.keep, self.allow = output_uri, keep, list(allow)
        self.use_on_save = on_save
        self.nice = nice
        self.uploaded: list[Checkpoint] = []
        self.errors: list[str] = []
        self._queue: queue.Queue[tuple[int, Path]] = queue.Queue()
        self._thread: threading.Thread | None = None

    def on_save(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        if self.use_on_save and state.is_world_process_zero:
            self(Path(args.output_dir) / f"checkpoint-{state.global_step}", state.global_step)

    def __call__(self, folder: Path, step: int) -> None:
        """Queue ``folder`` (a finished checkpoint) for upload as step ``step``: the stages' checkpoint hook."""
        if not folder.is_dir():
            log.warning("checkpoint folder %s not found; not uploading step %d", folder, step)
            return
        staged = stage_checkpoint(folder, folder.parent / ".kubetune-upload" / f"step-{step}")
        self._queue.put((step, staged))
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="kubetune-checkpoints", daemon=True)
            self._thread.start()

    def on_train_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        self.wait()

    def wait(self) -> None:
        """Block until every queued checkpoint is uploaded (or has failed)."""
        self._queue.join()

    def _work(self) -> None:
        while True:
            step, staged = self._queue.get()
            try:
                # Only the newest checkpoint matters: drop older ones still waiting.
                while True:
                    try:
                        newer = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    shutil.rmtree(staged, ignore_errors=True)
                    self._queue.task_done()
                    step, staged = newer
                self._upload(step, staged)
            finally:
                self._queue.task_done()

    def _upload(self, step: int, staged: Path) -> None:
        cmd = [
            sys.executable,
            "-m",
            "kubetune.trainer.storage.checkpoints",
            str(staged),
            self.output_uri,
            str(step),
            "--keep",
            str(self.keep),
            "--nice",
            str(self.nice),
            *[f"--allow={a}" for a in self.allow],
        ]
        try:
            done = subprocess.run(cmd, env=_child_env(), capture_output=True, text=True, check=False)
            if done.returncode != 0:
                problem = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
                self.errors.append(f"step {step}: {problem}")
                log.warning("checkpoint step %d upload failed (training continues): %s", step, problem)
                return
            result = json.loads(done.stdout.strip().splitlines()[-1])
            self.uploaded.append(Checkpoint(step, result["uri"], True))
            log.info(
                "checkpoint step %d uploaded to %s (pruned %s)",
                step,
                checkpoint_uri(self.output_uri, step),
                result["pruned"] or "none",
            )
        except Exception as exc:  # noqa: BLE001 - training goes on; the next checkpoint tries again
            self.errors.append(f"step {step}: {exc}")
            log.warning("checkpoint step %d upload failed (training continues): %s", step, exc)
        finally:
            shutil.rmtree(staged, ignore_errors=True)


def checkpoint_callback(config: Any) -> Any:
    """The uploader for a TrainerConfig when periodic checkpoints are on (s3:// and file:// outputs), else None.

    file:// outputs too: a pod's scratch folder dies with the pod, and the other nodes of a multi-node job
    never see it, so the output (a shared volume) is where every node of the next attempt resumes from."""
    uri = config.runtime.output_uri
    if config.spec.checkpointing.every_steps is None or Uri.parse(uri).scheme not in ("s3", "file"):
        return None
    return CheckpointUploader(
        uri, config.spec.checkpointing.keep, allow=config.runtime.allow_private_urls, on_save=False
    )
