"""A FineTuneJob on the tiny model, run by two "nodes" (tests.multinode.netns) exactly as its Indexed Job's pods."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.trainer_config import TrainerConfig
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune.api.validation import load_jobs
from kubetune.trainer.local import local_config
from tests.multinode.netns import TwoNodes, pod_env
from tests.trainer.stages.helpers import tiny_job

# The smallest run that still shows a curve: 4 processes x 1 row of <= 32 tokens per step.
TRAINING = {"batchSize": 1, "cutoffLen": 32, "learningRate": 0.01, "scheduler": "linear", "warmupRatio": 0.0}
ROWS = 28
METHOD = {"type": "lora", "lora": {"rank": 4, "dropout": 0.0}}  # no dropout: ranks and baseline see the same model


@dataclass
class PairJob:
    job: FineTuneJob
    job_file: Path
    config: Path  # trainer.json: what the operator's ConfigMap carries, the same file for both nodes
    scratch: Path  # the config's scratch folder; each node backs it with its own disk
    out: Path  # spec.output.uri (file://): storage both nodes see, like a bucket

    @property
    def name(self) -> str:
        return self.job.metadata.name

    def hostnames(self) -> dict[str, int]:
        from kubetune.operator.manifests.names import job_name, master_addr

        return {f"{job_name(self.name)}-0": 0, f"{job_name(self.name)}-1": 1, master_addr(self.name): 0}

    def node_names(self) -> list[str]:
        from kubetune.operator.manifests.names import job_name

        return [f"{job_name(self.name)}-{i}" for i in range(2)]


def pair_job(
    tmp_path: Path, model_dir: Path, cache_dir: Path, prefix: str, *, nodes: int = 2, **overrides: Any
) -> PairJob:
    """A job for ``nodes`` nodes x 2 processes (gpusPerNode: 2 makes the operator render NPROC_PER_NODE=2;
    on a CPU-only node each process is a CPU worker over gloo)."""
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    spec = {
        "training": {**TRAINING, **overrides.pop("training", {})},
        "method": METHOD,
        "resources": {"nodes": nodes, "gpusPerNode": 2},
        **overrides,
    }
    job_file = tiny_job(tmp_path, model_dir, "sft", "sft", name=name, **spec)
    # 28 rows: a multiple of every global batch here (4), so no layout pads or shortens the last batch of an epoch
    # (4 x 1, 2 x 1 x 2 accumulation and 1 x 4 then see the same rows in every step of every epoch)
    rows = json.loads((tmp_path / "identity.json").read_text(encoding="utf-8"))
    (tmp_path / "identity.json").write_text(json.dumps(rows[:ROWS]), encoding="utf-8")
    (job,) = load_jobs(job_file)
    config = local_config(job, job_file, cache_dir=cache_dir)
    path = tmp_path / "trainer.json"
    path.write_text(config.to_json(), encoding="utf-8")
    return PairJob(job, job_file, path, Path(config.runtime.scratch_dir), tmp_path / "out")


def resized(pj: PairJob, nodes: int) -> PairJob:
    """The same job after ``spec.resources.nodes`` changed: the operator renders a new trainer.json and env."""
    job = pj.job.model_copy(deep=True)
    job.spec.resources.nodes = nodes
    config = local_config(job, pj.job_file, cache_dir=Path(TrainerConfig.from_file(pj.config).runtime.cache_dir))
    path = pj.config.with_name(f"trainer-{nodes}-nodes.json")
    path.write_text(config.to_json(), encoding="utf-8")
    return PairJob(job, pj.job_file, path, pj.scratch, pj.out)


def node_env(pj: PairJob, nodes: TwoNodes, index: int) -> dict[str, str]:
    """The pod's environment; only paths that point into the pod's own filesystem are moved into the node's folder."""
    node = nodes.nodes[index]
    return pod_env(
        pj.job,
        index,
        HOME=str(node.root / "home"),
        HF_HOME=str(node.root / "home" / "hf"),
        KUBETUNE_TERMINATION_LOG=str(node.termination_log),
        KUBETUNE_METRICS_LINGER_SECONDS="0",
    )


def start_pair(pj: PairJob, nodes: TwoNodes) -> None:
    for i, node in enumerate(nodes.nodes):
        nodes.start(node, node_env(pj, nodes, i), pj.config, pj.scratch)


def wait_all(nodes: TwoNodes, timeout: float) -> list[int]:
    """Exit codes of the nodes' latest pods; a node still running after ``timeout`` s fails the test."""
    deadline = time.monotonic() + timeout
    codes = []
    for node in nodes.nodes:
        proc = node.procs[-1]
        left = max(1.0, deadline - time.monotonic())
        try:
            codes.append(proc.wait(timeout=left))
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"node {node.index} still running after {timeout:.0f} s:\n{node.log()[-3000:]}"
            ) from None
    return codes
