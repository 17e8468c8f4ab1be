"""Re-hash an ``s3://`` artifact against its ``manifest.json`` (``kubetune artifacts verify``)."""

from __future__ import annotations

from collections.abc import Iterable

from kubetune.trainer.errors import TrainerError
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.manifest_format import (
    CHECKPOINTS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    ManifestProblem,
    parse_manifest,
)
from kubetune.trainer.storage.s3_access import s3_client, s3_error
from kubetune.trainer.storage.uris import Uri


def verify_remote(uri: str, *, allow: Iterable[str] | None = None) -> list[str]:
    """Re-hash an s3:// artifact against its manifest; return the problems (empty when it matches).

    ``kubetune artifacts verify`` runs on the user's machine against the user's own endpoint, so the
    URL guard is off unless ``allow`` is given. Every failure is one line: a manifest that is not a
    kubetune manifest, an entry that is not a plain relative path, an unreachable endpoint, missing
    credentials.
    """
    parsed = Uri.parse(uri, field="URI")
    if parsed.scheme != "s3":
        return [f"cannot verify {parsed.scheme}:// artifacts (file:// and s3:// only)"]
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = s3.split(uri)
    prefix = s3.prefix_of(key)
    where = f"s3://{bucket}/{prefix}{MANIFEST}"
    try:
        client = s3.client() if allow is None else s3_client(field="URI", allow=allow)
        head = s3.head(client, bucket, prefix + MANIFEST)
        if head is None:
            return [f"{where}: no manifest (the artifact is incomplete or not a kubetune output)"]
        if int(head.get("ContentLength") or 0) > MAX_MANIFEST_BYTES:
            return [f"{where}: {head['ContentLength']:,} bytes, over the {MAX_MANIFEST_BYTES:,} a manifest may have"]
        listed, problems = parse_manifest(s3.get_bytes(client, bucket, prefix + MANIFEST), where=where)
        present = {o["Key"][len(prefix) :]: o for o in s3.list_objects(client, bucket, prefix)}
        for rel, entry in listed.items():
            obj = present.get(rel)
            if obj is None:
                problems.append(f"{rel}: missing")
            elif obj["Size"] != entry["size"]:
                problems.append(f"{rel}: size {obj['Size']} != {entry['size']}")
            elif s3.sha256_of(client, bucket, prefix + rel) != entry["sha256"]:
                problems.append(f"{rel}: sha256 mismatch")
    except ManifestProblem as exc:
        return [str(exc)]
    except (ClientError, BotoCoreError) as exc:
        return [str(s3_error("URI", uri, exc))]
    except TrainerError as exc:  # retries exhausted (StorageError), the URL guard
        return [str(exc)]
    for rel in sorted(present):
        if rel not in listed and rel != MANIFEST and not rel.startswith(CHECKPOINTS + "/") and not rel.endswith("/"):
            problems.append(f"{rel}: not in the manifest")
    return problems
