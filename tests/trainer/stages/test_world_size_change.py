"""Resuming on another number of processes keeps the checkpoint's global batch and total steps (pure parts), and a
collective that lost its peers becomes one clear line. The runs across two "nodes" are in tests/multinode/."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.stages.resume import MARKER, Layout, keep_global_batch, relayout

layouts = st.builds(
    Layout,
    world_size=st.integers(1, 64),
    per_device_batch=st.integers(1, 16),
    gradient_accumulation=st.integers(1, 16),
    max_steps=st.integers(1, 10_000),
)


@given(saved=layouts, world=st.integers(1, 64), batch=st.integers(1, 16))
def test_relayout_keeps_the_global_batch_or_refuses(saved, world, batch):
    total = saved.global_batch
    if total % world:
        with pytest.raises(ConfigError, match=rf"global batch of {total} rows.*not a multiple of {world}"):
            relayout(saved, world, batch)
        return
    now = relayout(saved, world, batch)
    if world == saved.world_size:
        assert now == saved  # nothing changes on the same world size, whatever the spec's batch says
        return
    assert (now.world_size, now.global_batch, now.max_steps) == (world, total, saved.max_steps)
    assert 1 <= now.per_device_batch <= batch
    # the largest batch per process the spec allows: accumulation only makes up what memory cannot
    assert not any((total // world) % b == 0 for b in range(now.per_device_batch + 1, batch + 1))


def test_four_processes_to_two_doubles_accumulation():
    assert relayout(Layout(4, 1, 1, 6), 2, 1) == Layout(2, 1, 2, 6)
    assert relayout(Layout(2, 1, 2, 6), 4, 1) == Layout(4, 1, 1, 6)  # and back
    assert relayout(Layout(2, 4, 1, 9), 8, 4) == Layout(8, 1, 1, 9)  # more processes: a smaller batch each


def _spec(**distributed) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "stage": "sft",
            "model": {"source": "file:///m"},
            "datasets": [{"name": "d", "source": "file:///d.json"}],
            "training": {"batchSize": 1},
            "distributed": distributed or {"strategy": "ddp"},
        }
    )


def _checkpoint(tmp_path, layout: Layout | None):
    path = tmp_path / "checkpoint-2"
    path.mkdir()
    marker = {"step": 2, "spec": "x", **(layout.to_dict() if layout else {})}
    (path / MARKER).write_text(json.dumps(marker))
    return str(path)


def test_resume_on_fewer_processes_gives_arguments_and_manifest_facts(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args, metrics = keep_global_batch(_checkpoint(tmp_path, Layout(4, 1, 1, 6)), _spec())
    assert args == {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 2, "max_steps": 6}
    assert metrics == {
        "resumed_from_world_size": 4,
        "resumed_from_per_device_batch": 1,
        "resumed_from_gradient_accumulation": 1,
        "per_device_batch": 1,
        "gradient_accumulation": 2,
        "global_batch": 4,
    }


@pytest.mark.parametrize("world", ["4", None])
def test_nothing_changes_without_a_new_world_size_or_a_layout(tmp_path, monkeypatch, world):
    monkeypatch.setenv("WORLD_SIZE", "4")
    checkpoint = _checkpoint(tmp_path, Layout(4, 1, 1, 6) if world else None)  # None: a marker from before layouts
    assert keep_global_batch(checkpoint, _spec()) == ({}, {})
    assert keep_global_batch(None, _spec()) == ({}, {})


def test_deepspeed_zero_checkpoint_on_another_world_size_is_refused_up_front(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="written by 4 DeepSpeed ZeRO processes.*resume on 4 processes"):
        keep_global_batch(_checkpoint(tmp_path, Layout(4, 1, 1, 6)), _spec(strategy="deepspeed", zeroStage=3))


def test_a_lost_peer_is_one_clear_line(tmp_path):
    import torch.distributed as dist

    from kubetune.trainer.distributed import PeersLost, lost_peers_as_error

    spec = _spec(strategy="ddp", collectiveTimeoutSeconds=45)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        gloo = RuntimeError(
            "[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting "
            "45000ms for recv operation to complete\nmore lines"
        )
        with pytest.raises(PeersLost) as caught, lost_peers_as_error(spec):
            raise gloo
        message = str(caught.value)
        assert "\n" not in message and caught.value.exit_code == 1  # retryable: the Job's next pod resumes
        assert "collectiveTimeoutSeconds=45 s" in message and "Timed out waiting 45000ms" in message
        with pytest.raises(ValueError, match="unrelated"), lost_peers_as_error(spec):  # other failures pass through
            raise ValueError("unrelated")
        with pytest.raises(ConfigError), lost_peers_as_error(spec):
            raise ConfigError("timed out waiting for nothing")  # a trainer error keeps its own exit code
    finally:
        dist.destroy_process_group()
    with pytest.raises(RuntimeError, match="Timed out"), lost_peers_as_error(spec):
        raise gloo  # no process group: not a lost peer


def _spec_ckpt() -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate(
        {
            "stage": "sft",
            "model": {"source": "file:///m"},
            "datasets": [{"name": "d", "source": "file:///d.json"}],
            "checkpointing": {"everySteps": 2},
        }
    )


def _saved(root, step, spec, files=("model.safetensors",)):
    from kubetune.trainer.stages.resume import spec_fingerprint

    path = root / f"checkpoint-{step}"
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_bytes(b"x")
    (path / MARKER).write_text(json.dumps({"step": step, "spec": spec_fingerprint(spec)}))
    return path


def test_every_node_resumes_the_step_the_output_holds(tmp_path, monkeypatch):
    """Node 0's scratch has checkpoint-4 complete (its upload was cut short by the crash), the output has step 2, and
    node 1's scratch only the RNG states its ranks wrote: both nodes must resume step 2, or they would diverge."""
    from kubetune.trainer.stages.resume import resume_point
    from kubetune.trainer.storage.checkpoints import upload_checkpoint

    spec = _spec_ckpt()
    output = f"file://{tmp_path / 'output'}"
    node0, node1 = tmp_path / "node0", tmp_path / "node1"
    upload_checkpoint(_saved(node0, 2, spec), output, 2)
    _saved(node0, 4, spec)
    (tmp_path / "output" / "checkpoints" / "step-4").mkdir()  # the upload the crash cut short: no COMPLETE
    (node1 / "checkpoint-2").mkdir(parents=True)
    (node1 / "checkpoint-2" / "rng_state_2.pth").write_bytes(b"rank 2")

    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_point(node0, spec, output_uri=output) == str(node0 / "checkpoint-2")
    assert resume_point(node1, spec, output_uri=output) == str(node1 / "checkpoint-2")
    assert (node1 / "checkpoint-2" / "model.safetensors").read_bytes() == b"x"  # brought in from the output
    assert (node1 / "checkpoint-2" / "rng_state_2.pth").read_bytes() == b"rank 2"  # and its own files kept
    assert not list(node1.glob(".download-*"))

    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # one node: its own newest complete checkpoint, as before
    assert resume_point(node0, spec, output_uri=output) == str(node0 / "checkpoint-4")


def test_a_multi_node_run_without_a_shared_checkpoint_starts_over(tmp_path, monkeypatch):
    from kubetune.trainer.stages.resume import resume_point

    spec = _spec_ckpt()
    _saved(tmp_path / "node0", 4, spec)  # only in one node's scratch
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert resume_point(tmp_path / "node0", spec, output_uri=f"file://{tmp_path / 'output'}") is None


def test_timeouts_come_from_the_spec(tmp_path):
    from kubetune.api.trainer_config import TrainerConfig
    from kubetune.api.v1alpha1 import FineTuneJob
    from kubetune.trainer.distributed import launch_command, launch_plan, training_args, with_spec_timeouts

    job = FineTuneJob.model_validate(
        {
            "apiVersion": "kubetune.io/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "t"},
            "spec": {
                **_spec().model_dump(by_alias=True, exclude_none=True),
                "distributed": {"strategy": "ddp", "rendezvousTimeoutSeconds": 77, "collectiveTimeoutSeconds": 45},
            },
        }
    )
    config = tmp_path / "trainer.json"
    config.write_text(TrainerConfig.from_job(job, output_uri="file:///o", cache_dir="/c", scratch_dir="/s").to_json())
    plan = launch_plan({"NNODES": "2", "NPROC_PER_NODE": "2", "NODE_RANK": "1", "MASTER_ADDR": "j-0.j"})
    assert "--rdzv-conf=timeout=77" in launch_command(with_spec_timeouts(plan, ["--config", str(config)]), [])
    assert "--rdzv-conf=timeout=900" in launch_command(plan, [])  # torchrun's default when the spec says nothing
    # an unreadable config keeps the default: the workers report it with exit code 3
    assert with_spec_timeouts(plan, ["--config", str(tmp_path / "missing.json")]) == plan
    assert training_args(job.spec, world_size=4)["ddp_timeout"] == 45
    assert "ddp_timeout" not in training_args(job.spec, world_size=1)
    defaults = _spec().distributed
    assert (defaults.rendezvous_timeout_seconds, defaults.collective_timeout_seconds) == (900, 1800)
