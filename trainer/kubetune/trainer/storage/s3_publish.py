"""Publish a finished artifact folder to ``s3://``.

Delete the old manifest, upload every file, delete the files only the old manifest listed (nothing
else under the prefix is touched), and upload ``manifest.json`` last, so its presence means the whole
artifact is there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.manifest_format import CHECKPOINTS, MANIFEST
from kubetune.trainer.storage.s3_access import s3_client, s3_error

log = get_logger(__name__)


def publish_s3(local: Path, uri: str, *, allow: Iterable[str] = (), **_: object) -> str:
    field = "spec.output.uri"
    client = s3_client(field=field, allow=allow)
    bucket, key = s3.split(uri)
    prefix = s3.prefix_of(key)
    manifest_key = prefix + MANIFEST
    from botocore.exceptions import ClientError, NoCredentialsError

    try:
        previous = _previous_files(client, bucket, manifest_key)
        s3.delete_keys(client, bucket, [manifest_key])  # an old manifest must not vouch for new files
        written = set(s3.upload_dir(client, local, bucket, prefix, exclude=[MANIFEST]))
        stale = sorted(prefix + rel for rel in previous if prefix + rel not in written)
        if stale:
            log.info("removing %d objects of an earlier artifact under %s", len(stale), uri)
            s3.delete_keys(client, bucket, stale)
        if (local / MANIFEST).exists():
            s3.put_bytes(client, bucket, manifest_key, (local / MANIFEST).read_bytes(), ContentType="application/json")
    except (ClientError, NoCredentialsError) as exc:
        raise s3_error(field, uri, exc) from None
    return f"s3://{bucket}/{prefix}".rstrip("/")


def _previous_files(client: Any, bucket: str, manifest_key: str) -> list[str]:
    """Files an earlier kubetune artifact at this prefix listed (safe to replace); none when there is none."""
    if s3.head(client, bucket, manifest_key) is None:
        return []
    try:
        entries = json.loads(s3.get_bytes(client, bucket, manifest_key)).get("files", [])
        return [
            e["path"]
            for e in entries
            if isinstance(e, dict)
            and isinstance(e.get("path"), str)
            and ".." not in e["path"].split("/")
            and not e["path"].startswith(CHECKPOINTS + "/")
        ]
    except ValueError:
        return []
