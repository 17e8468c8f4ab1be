"""`kubetune artifacts verify URI`: re-hash an output against its manifest."""

from __future__ import annotations

from pathlib import Path

from kubetune.trainer.artifacts.manifest import verify_dir
from kubetune.trainer.storage.uris import file_path


def verify_uri(uri: str) -> list[str]:
    if "://" not in uri:
        return verify_dir(Path(uri))
    scheme = uri.split("://", 1)[0]
    if scheme == "file":
        return verify_dir(file_path(uri))
    from kubetune.trainer.storage import remote  # registers s3 and friends

    return remote.verify_remote(uri)
