"""Checkpoints in the output storage: COMPLETE marker last, newest complete wins, prune to keep,
background upload from the Trainer's folder, download for resume."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage import checkpoints as ck
from kubetune.trainer.storage import s3
from kubetune.trainer.storage import uploader as up
from tests.trainer.storage.conftest import LOCAL, object_keys, write_tree


def make_checkpoint(root: Path, step: int, size: int = 1000) -> Path:
    return write_tree(
        root / f"checkpoint-{step}",
        {
            "adapter_model.safetensors": os.urandom(size),
            "optimizer.pt": os.urandom(size // 2),
            "trainer_state.json": f'{{"global_step": {step}}}'.encode(),
        },
    )


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_upload_list_latest_download(scheme: str, s3_bucket: str, tmp_path: Path) -> None:
    out = f"s3://{s3_bucket}/job" if scheme == "s3" else f"file://{tmp_path / 'out'}"
    for step in (2, 4):
        ck.upload_checkpoint(make_checkpoint(tmp_path / "w", step), out, step, allow=LOCAL)
    # an interrupted upload of step 6: files but no COMPLETE marker
    partial = make_checkpoint(tmp_path / "w", 6)
    if scheme == "s3":
        s3.upload_dir(s3.client(), partial, s3_bucket, "job/checkpoints/step-6/")
    else:
        shutil.copytree(partial, tmp_path / "out" / "checkpoints" / "step-6")
    found = ck.list_checkpoints(out, allow=LOCAL)
    assert [(c.step, c.complete) for c in found] == [(2, True), (4, True), (6, False)]
    latest = ck.latest_complete_checkpoint(out, allow=LOCAL)
    assert latest is not None and latest.step == 4 and latest.uri.endswith("/checkpoints/step-4")
    dest = ck.download_checkpoint(latest, tmp_path / "resume" / "checkpoint-4", allow=LOCAL)
    src = tmp_path / "w" / "checkpoint-4"
    assert sorted(p.name for p in dest.iterdir()) == sorted(p.name for p in src.iterdir())
    assert all((dest / p.name).read_bytes() == p.read_bytes() for p in src.iterdir())
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        ck.download_checkpoint(found[2], tmp_path / "nope", allow=LOCAL)
    assert ck.prune(out, 1, allow=LOCAL) == [2]  # step 6 is newer than the newest complete: may still be uploading
    assert [c.step for c in ck.list_checkpoints(out, allow=LOCAL)] == [4, 6]


def test_no_checkpoints_yet(s3_bucket: str) -> None:
    assert ck.latest_complete_checkpoint(f"s3://{s3_bucket}/fresh", allow=LOCAL) is None


def test_uploader_runs_in_the_background_and_keeps_the_newest(s3_bucket: str, s3c, tmp_path: Path, proxy) -> None:
    out = f"s3://{s3_bucket}/bg"
    uploader = up.CheckpointUploader(out, keep=2, allow=LOCAL)
    args = SimpleNamespace(output_dir=str(tmp_path))
    control = SimpleNamespace()
    proxy.inject("503", "drop", method="PUT")  # retried in the background
    for step in (1, 2, 3):
        folder = make_checkpoint(tmp_path, step, size=200_000)
        proxy.gate.clear()  # S3 answers nothing until the gate opens
        uploader.on_save(args, SimpleNamespace(global_step=step, is_world_process_zero=True), control)
        # on_save returned while S3 is held: the training loop does not wait for the network
        shutil.rmtree(folder)  # the Trainer rotates checkpoints away: the staged snapshot must survive it
        proxy.gate.set()
        uploader.wait()
    uploader.on_train_end(args, SimpleNamespace(), control)
    assert uploader.errors == []
    assert [c.step for c in ck.list_checkpoints(out, allow=LOCAL)] == [2, 3]
    keys = object_keys(s3c, s3_bucket, "bg/checkpoints/step-3/")
    assert keys == sorted(
        f"bg/checkpoints/step-3/{n}"
        for n in ["COMPLETE", "adapter_model.safetensors", "optimizer.pt", "trainer_state.json"]
    )
    assert not (tmp_path / ".kubetune-upload" / "step-3").exists()  # staging cleaned up


def test_uploader_as_a_stage_hook_and_failures_do_not_stop_training(s3_bucket: str, tmp_path: Path, proxy) -> None:
    uploader = up.CheckpointUploader(f"s3://{s3_bucket}/hook", keep=3, allow=LOCAL, on_save=False)
    uploader.on_save(
        SimpleNamespace(output_dir=str(tmp_path)),
        SimpleNamespace(global_step=1, is_world_process_zero=True),
        SimpleNamespace(),
    )  # ignored in hook mode
    proxy.fail_always("step-5/")
    uploader(make_checkpoint(tmp_path, 5), 5)
    uploader.wait()
    assert len(uploader.errors) == 1 and uploader.errors[0].startswith("step 5:")
    proxy.always.clear()
    uploader(make_checkpoint(tmp_path, 7), 7)
    uploader.wait()
    assert [(c.step, c.complete) for c in ck.list_checkpoints(f"s3://{s3_bucket}/hook", allow=LOCAL)] == [(7, True)]


def test_checkpoint_callback_for_outputs_with_every_steps() -> None:
    def cfg(uri: str, every: int | None) -> SimpleNamespace:
        return SimpleNamespace(
            runtime=SimpleNamespace(output_uri=uri, allow_private_urls=["127.0.0.1"]),
            spec=SimpleNamespace(checkpointing=SimpleNamespace(every_steps=every, keep=2)),
        )

    # file:// too: a pod's scratch dies with it, and the other nodes of a multi-node job resume from the output
    assert isinstance(up.checkpoint_callback(cfg("file:///tmp/x", 5)), up.CheckpointUploader)
    assert up.checkpoint_callback(cfg("file:///tmp/x", None)) is None
    assert up.checkpoint_callback(cfg("s3://b/x", None)) is None
    cb = up.checkpoint_callback(cfg("s3://b/x", 5))
    assert isinstance(cb, up.CheckpointUploader) and cb.keep == 2 and cb.allow == ["127.0.0.1"]
