"""Pure parts of distribution and checkpointing: launch plans, DeepSpeed/FSDP args, complete checkpoints."""

from __future__ import annotations

import json

import pytest

from kubetune.api.v1alpha1 import DistributedSpec, FineTuneJobSpec
from kubetune.trainer.distributed import (
    deepspeed_config,
    fsdp_args,
    is_worker,
    launch_command,
    launch_plan,
    strategy,
    training_args,
)
from kubetune.trainer.stages.resume import (
    MARKER,
    clear_checkpoints,
    complete_checkpoints,
    latest_checkpoint,
    resume_point,
    spec_fingerprint,
)


def _spec(**extra):
    base = {"model": {"source": "file:///m"}, "datasets": [{"name": "d", "source": "file:///d.json"}]}
    return FineTuneJobSpec.model_validate({**base, **extra})


def test_launch_plan_from_operator_env():
    plan = launch_plan(
        {
            "NNODES": "2",
            "NPROC_PER_NODE": "4",
            "JOB_COMPLETION_INDEX": "1",
            "MASTER_ADDR": "job-0.svc",
            "MASTER_PORT": "29400",
        }
    )
    assert (plan.world_size, plan.node_rank, plan.needs_launcher) == (8, 1, True)
    cmd = launch_command(plan, ["--config", "c.json"])
    assert "--nnodes=2" in cmd and "--nproc-per-node=4" in cmd and "--node-rank=1" in cmd
    assert "--master-addr=job-0.svc" in cmd and cmd[-3:] == ["kubetune.trainer", "--config", "c.json"]


def test_single_process_needs_no_launcher_and_bad_env_is_named():
    assert not launch_plan({}).needs_launcher
    with pytest.raises(ValueError, match="NPROC_PER_NODE"):
        launch_plan({"NPROC_PER_NODE": "two"})
    assert is_worker({"LOCAL_RANK": "0"}) and not is_worker({})


@pytest.mark.parametrize(
    "spec, world, expected",
    [
        ({"strategy": "auto"}, 1, "single"),
        ({"strategy": "auto"}, 2, "ddp"),
        ({"strategy": "ddp"}, 1, "single"),
        ({"strategy": "fsdp"}, 2, "fsdp"),
        ({"strategy": "deepspeed", "zeroStage": 3}, 2, "deepspeed"),
    ],
    ids=["auto-1", "auto-2", "ddp-1", "fsdp", "zero3"],
)
def test_strategy(spec, world, expected):
    assert strategy(DistributedSpec.model_validate(spec), world) == expected


def test_deepspeed_config_zero3_offload():
    cfg = deepspeed_config(DistributedSpec.model_validate({"strategy": "deepspeed", "zeroStage": 3, "offload": True}))
    zero = cfg["zero_optimization"]
    assert (
        zero["stage"] == 3
        and zero["offload_optimizer"]["device"] == "cpu"
        and zero["offload_param"]["device"] == "cpu"
    )
    assert cfg["train_micro_batch_size_per_gpu"] == "auto"
    zero2 = deepspeed_config(DistributedSpec.model_validate({"strategy": "deepspeed"}))["zero_optimization"]
    assert zero2["stage"] == 2 and "offload_optimizer" not in zero2 and "offload_param" not in zero2


def test_training_args_for_ddp_and_fsdp():
    ddp = training_args(_spec(distributed={"strategy": "ddp"}), world_size=2)
    assert ddp["ddp_backend"] in ("gloo", "nccl") and "deepspeed" not in ddp
    fsdp = training_args(_spec(distributed={"strategy": "fsdp"}), world_size=2)
    assert fsdp["fsdp"].startswith("full_shard") and fsdp["fsdp_config"]["use_orig_params"]
    assert (
        "offload"
        in fsdp_args(DistributedSpec.model_validate({"strategy": "fsdp"}).model_copy(update={"offload": True}))["fsdp"]
    )
    assert training_args(_spec(), world_size=1) == {}
    if not torch_cuda():
        # one CPU process: DeepSpeed would only get in the way (and needs a process group)
        assert training_args(_spec(distributed={"strategy": "deepspeed"}), world_size=1) == {}


def torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _checkpoint(root, step, spec=None, complete=True):
    path = root / f"checkpoint-{step}"
    path.mkdir()
    (path / "model.safetensors").write_bytes(b"x")
    if complete:
        (path / MARKER).write_text(json.dumps({"step": step, "spec": spec}))
    return path


def test_resume_picks_newest_complete_matching_checkpoint(tmp_path):
    spec = _spec(checkpointing={"everySteps": 2})
    fp = spec_fingerprint(spec)
    _checkpoint(tmp_path, 2, fp)
    _checkpoint(tmp_path, 4, fp)
    _checkpoint(tmp_path, 6, fp, complete=False)  # killed while saving
    _checkpoint(tmp_path, 8, "another-spec")  # a different FineTuneJob spec
    (tmp_path / "checkpoint-x").mkdir()
    assert [p.name for p in complete_checkpoints(tmp_path, fp)] == ["checkpoint-2", "checkpoint-4"]
    assert latest_checkpoint(tmp_path, fp).name == "checkpoint-4"
    assert resume_point(tmp_path, spec).endswith("checkpoint-4")
    assert resume_point(tmp_path, _spec(checkpointing={"everySteps": 2, "resume": False})) is None
    clear_checkpoints(tmp_path)
    assert latest_checkpoint(tmp_path) is None and (tmp_path / "checkpoint-x").exists()


def test_fingerprint_ignores_where_but_not_what():
    a = _spec()
    assert spec_fingerprint(a) == spec_fingerprint(
        _spec(output={"uri": "file:///elsewhere"}, checkpointing={"keep": 5})
    )
    assert spec_fingerprint(a) != spec_fingerprint(_spec(training={"learningRate": 0.5}))


def test_a_new_pod_resumes_from_the_uploaded_checkpoint(tmp_path):
    """Scratch is empty on a new pod: the newest completely uploaded checkpoint is downloaded and used."""
    from kubetune.trainer.storage.checkpoints import upload_checkpoint

    spec = _spec(checkpointing={"everySteps": 2})
    old_pod = tmp_path / "old-pod"
    old_pod.mkdir()
    output = f"file://{tmp_path / 'output'}"
    upload_checkpoint(_checkpoint(old_pod, 2, spec_fingerprint(spec)), output, 2)
    upload_checkpoint(_checkpoint(old_pod, 4, spec_fingerprint(spec)), output, 4)
    (tmp_path / "output" / "checkpoints" / "step-6").mkdir()  # an upload cut short: no COMPLETE object

    new_pod = tmp_path / "new-pod"
    resumed = resume_point(new_pod, spec, output_uri=output)
    assert resumed == str(new_pod / "checkpoint-4")
    assert (new_pod / "checkpoint-4" / "model.safetensors").read_bytes() == b"x"
    assert (
        resume_point(
            tmp_path / "other", _spec(checkpointing={"everySteps": 2}, training={"seed": 1}), output_uri=output
        )
        is None
    )  # a changed spec does not resume someone else's run
