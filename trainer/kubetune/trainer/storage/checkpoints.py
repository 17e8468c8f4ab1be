"""Periodic checkpoints in the output storage, uploaded without stopping training.

Layout: ``<output uri>/checkpoints/step-<N>/`` holds the files of the Trainer's ``checkpoint-<N>``
folder, and a ``COMPLETE`` object written last (JSON: step, file sizes). A checkpoint without
``COMPLETE`` is an interrupted upload and is never resumed from.

API (the resume logic in the stages calls these):

- :class:`CheckpointUploader` — a ``transformers.TrainerCallback`` (in :mod:`.uploader`, re-exported
  here). ``on_save`` hard-links the new ``checkpoint-N`` into a staging folder (so the Trainer may
  rotate it away) and queues it; a background thread uploads the newest queued checkpoint in a child
  process at a lower CPU priority (this module's ``main``), then prunes to ``keep``. Training does not
  wait. ``on_train_end`` waits for the queue to drain; ``errors`` lists failed uploads.
  Called as ``uploader(folder, step)`` it is a stages checkpoint hook instead (``on_save=False``): the
  stages call it once the checkpoint is marked complete on every rank, which is what the runner uses.
- :func:`checkpoint_callback(config)` — the uploader for a TrainerConfig, or None when the output is
  local or ``spec.checkpointing.everySteps`` is unset (the runner adds it to the callbacks, for the
  wait at the end of training, and to the checkpoint hooks).
- :func:`upload_checkpoint(local, output_uri, step)` — the synchronous upload (marker last).
- :func:`list_checkpoints(output_uri)` — every ``step-N`` with its completeness, oldest first.
- :func:`latest_complete_checkpoint(output_uri)` — the newest complete one, or None.
- :func:`download_checkpoint(checkpoint, dest)` — bring one back into ``dest`` (sizes checked) for
  ``trainer.train(resume_from_checkpoint=dest)``.
- :func:`delete_all(output_uri)` — remove every checkpoint once the artifact is published (the runner
  calls it unless ``spec.checkpointing.keepAfterSuccess``).

``s3://`` and ``file://`` output URIs are supported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.manifest_format import CHECKPOINTS
from kubetune.trainer.storage.paths import UnsafePath, contained
from kubetune.trainer.storage.uris import Uri, file_path, join

log = get_logger(__name__)

FOLDER = CHECKPOINTS
COMPLETE = "COMPLETE"
FIELD = "spec.output.uri"
_STEP = re.compile(r"^step-(\d+)$")
# Checkpoint uploads share the CPU with training: fewer threads than artifact uploads.
UPLOAD = s3.TransferConfig(concurrency=4)


@dataclass(frozen=True)
class Checkpoint:
    step: int
    uri: str
    complete: bool


def checkpoint_uri(output_uri: str, step: int) -> str:
    return join(output_uri, FOLDER, f"step-{step}")


def _scheme(uri: str) -> str:
    scheme = Uri.parse(uri).scheme
    if scheme not in ("s3", "file"):
        raise ConfigError(f"{FIELD}: checkpoints go to s3:// or file:// outputs, not {scheme}://")
    return scheme


def _marker(local: Path, step: int) -> bytes:
    files = [
        {"path": p.relative_to(local).as_posix(), "size": p.stat().st_size}
        for p in sorted(local.rglob("*"))
        if p.is_file()
    ]
    return json.dumps({"step": step, "files": files}, indent=1).encode()


def upload_checkpoint(
    local: Path, output_uri: str, step: int, *, allow: Iterable[str] = (), config: s3.TransferConfig | None = None
) -> Checkpoint:
    """Upload ``local`` as ``step-<step>``, the COMPLETE marker last; return it."""
    uri = checkpoint_uri(output_uri, step)
    marker = _marker(local, step)
    if _scheme(uri) == "file":
        target = file_path(uri)
        (target / COMPLETE).unlink(missing_ok=True)
        shutil.copytree(local, target, dirs_exist_ok=True)
        tmp = target / f".{COMPLETE}.partial"
        tmp.write_bytes(marker)
        tmp.replace(target / COMPLETE)
        return Checkpoint(step, uri, True)
    from kubetune.trainer.storage.s3_access import s3_client

    client = s3_client(field=FIELD, allow=allow)
    bucket, key = s3.split(uri)
    prefix = s3.prefix_of(key)
    s3.delete_keys(client, bucket, [prefix + COMPLETE])
    s3.upload_dir(client, local, bucket, prefix, config=config or UPLOAD)
    s3.put_bytes(client, bucket, prefix + COMPLETE, marker, ContentType="application/json")
    return Checkpoint(step, uri, True)


def list_checkpoints(output_uri: str, *, allow: Iterable[str] = ()) -> list[Checkpoint]:
    """Every ``step-N`` under the output's checkpoints folder, oldest first."""
    root = join(output_uri, FOLDER)
    found: dict[int, bool] = {}
    if _scheme(root) == "file":
        folder = file_path(root)
        for child in folder.iterdir() if folder.is_dir() else []:
            if (m := _STEP.match(child.name)) and child.is_dir():
                found[int(m.group(1))] = (child / COMPLETE).is_file()
    else:
        from kubetune.trainer.storage.s3_access import s3_client

        client = s3_client(field=FIELD, allow=allow)
        bucket, key = s3.split(root)
        prefix = s3.prefix_of(key)
        for obj in s3.list_objects(client, bucket, prefix):
            head, _, rest = obj["Key"][len(prefix) :].partition("/")
            if m := _STEP.match(head):
                step = int(m.group(1))
                found[step] = found.get(step, False) or rest == COMPLETE
    return [Checkpoint(step, checkpoint_uri(output_uri, step), done) for step, done in sorted(found.items())]


def latest_complete_checkpoint(output_uri: str, *, allow: Iterable[str] = ()) -> Checkpoint | None:
    """The newest checkpoint whose upload finished, or None."""
    complete = [c for c in list_checkpoints(output_uri, allow=allow) if c.complete]
    return complete[-1] if complete else None


def download_checkpoint(checkpoint: Checkpoint | str, dest: Path, *, allow: Iterable[str] = ()) -> Path:
    """Copy a complete checkpoint into ``dest`` (created; sizes checked against COMPLETE); return ``dest``."""
    uri = checkpoint.uri if isinstance(checkpoint, Checkpoint) else checkpoint
    dest.mkdir(parents=True, exist_ok=True)
    if _scheme(uri) == "file":
        src = file_path(uri)
        if not (src / COMPLETE).is_file():
            raise ConfigError(f"{uri}: not a complete checkpoint (no {COMPLETE} marker)")
        marker = json.loads((src / COMPLETE).read_text(encoding="utf-8"))
        for link in (p for p in src.rglob("*") if p.is_symlink()):  # copying would read what it points at
            raise UnsafePath(f"{uri}: {link.relative_to(src)} is a symlink; a checkpoint holds regular files only")
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns(COMPLETE))
    else:
        from kubetune.trainer.storage.s3_access import s3_client

        client = s3_client(field=FIELD, allow=allow)
        bucket, key = s3.split(uri)
        prefix = s3.prefix_of(key)
        if s3.head(client, bucket, prefix + COMPLETE) is None:
            raise ConfigError(f"{uri}: not a complete checkpoint (no {COMPLETE} marker)")
        marker = json.loads(s3.get_bytes(client, bucket, prefix + COMPLETE))
        objects = [o for o in s3.list_objects(client, bucket, prefix) if o["Key"] != prefix + COMPLETE]
        s3.download_prefix(client, bucket, prefix, dest, objects)
    for entry in marker["files"]:
        path = contained(dest, entry["path"], what=f"{uri}: checkpoint file")
        if not path.is_file() or path.stat().st_size != entry["size"]:
            raise s3.StorageError(f"{uri}: {entry['path']} is missing or has the wrong size after download")
    return dest


def prune(output_uri: str, keep: int, *, allow: Iterable[str] = ()) -> list[int]:
    """Delete all but the newest ``keep`` complete checkpoints (and older unfinished ones); return deleted steps."""
    found = list_checkpoints(output_uri, allow=allow)
    complete = [c for c in found if c.complete]
    if not complete:
        return []
    kept = {c.step for c in complete[-keep:]}
    newest = complete[-1].step
    doomed = [c for c in found if c.step not in kept and (c.complete or c.step < newest)]
    for c in doomed:
        _delete(c.uri, allow)
    return [c.step for c in doomed]


def delete_all(output_uri: str, *, allow: Iterable[str] = ()) -> list[int]:
    """Delete every checkpoint under ``output_uri`` (after a successful publish); return the deleted steps."""
    found = list_checkpoints(output_uri, allow=allow)
    for c in found:
        _delete(c.uri, allow)
    return [c.step for c in found]


def _delete(uri: str, allow: Iterable[str]) -> None:
    """Delete the marker first, so a half-deleted checkpoint never looks complete."""
    if _scheme(uri) == "file":
        path = file_path(uri)
        (path / COMPLETE).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
        return
    from kubetune.trainer.storage.s3_access import s3_client

    client = s3_client(field=FIELD, allow=allow)
    bucket, key = s3.split(uri)
    prefix = s3.prefix_of(key)
    s3.delete_keys(client, bucket, [prefix + COMPLETE])
    s3.delete_keys(client, bucket, [o["Key"] for o in s3.list_objects(client, bucket, prefix)])


def stage_checkpoint(src: Path, dest: Path) -> Path:
    """Hard-link (or copy, across filesystems) ``src`` into ``dest``: a snapshot the Trainer cannot rotate away."""
    shutil.rmtree(dest, ignore_errors=True)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dest, copy_function=link)
    return dest


def main(argv: list[str] | None = None) -> int:
    """``python -m kubetune.trainer.storage.checkpoints LOCAL OUTPUT_URI STEP --keep N [--allow HOST]``:
    upload one staged checkpoint and prune (what the uploader's subprocess runs, at a lower CPU priority)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m kubetune.trainer.storage.checkpoints")
    parser.add_argument("local", type=Path)
    parser.add_argument("output_uri")
    parser.add_argument("step", type=int)
    parser.add_argument("--keep", type=int, required=True)
    parser.add_argument("--allow", action="append", default=[])
    parser.add_argument("--nice", type=int, default=10)
    args = parser.parse_args(argv)
    try:
        os.nice(args.nice)  # training threads first; the upload takes what is left
    except OSError:
        pass
    try:
        done = upload_checkpoint(args.local, args.output_uri, args.step, allow=args.allow)
        pruned = prune(args.output_uri, args.keep, allow=args.allow)
    except Exception as exc:  # noqa: BLE001 - reported to the parent through the exit code and stderr
        print(f"{exc.__class__.__name__}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"step": done.step, "uri": done.uri, "pruned": pruned}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
