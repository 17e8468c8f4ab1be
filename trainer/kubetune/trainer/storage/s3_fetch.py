"""Fetch ``s3://bucket/prefix/`` (a folder) or ``s3://bucket/key`` (one object) into the cache.

The revision is the object listing's ETags: the same listing is downloaded once per node.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.cache import cache_key, cached, safe_name
from kubetune.trainer.storage.paths import contained
from kubetune.trainer.storage.s3_access import s3_client, s3_error

log = get_logger(__name__)


def fetch_s3(
    uri: str, *, cache_dir: Path, field: str, kind: str = "dataset", allow: Iterable[str] = (), **_: object
) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(field=field, allow=allow)
    bucket, key = s3.split(uri)
    try:
        obj = s3.head(client, bucket, key) if key and not key.endswith("/") else None
        if obj is not None:  # one object
            name = Path(key).name
            target = cache_dir / f"{kind}s" / f"s3-{safe_name(name)}-{cache_key(uri, obj.get('ETag', ''))}"
            cached(
                target,
                lambda tmp: s3.download_object(
                    client,
                    bucket,
                    key,
                    contained(tmp, name, what=uri),
                    size=obj.get("ContentLength"),
                    etag=obj.get("ETag"),
                ),
                marker=uri,
            )
            return target / name
        prefix = s3.prefix_of(key)
        objects = [o for o in s3.list_objects(client, bucket, prefix) if not o["Key"].endswith("/")]
    except (ClientError, BotoCoreError) as exc:
        raise s3_error(field, uri, exc) from None
    if not objects:
        raise ConfigError(f"{field}: nothing at {uri} (no object with that key, no objects under {prefix!r})")
    listing = sorted(f"{o['Key']} {o.get('ETag', '')} {o.get('Size', 0)}" for o in objects)
    label = safe_name(f"{bucket}-{prefix.rstrip('/').rsplit('/', 1)[-1]}")
    target = cache_dir / f"{kind}s" / f"s3-{label}-{cache_key(f's3://{bucket}/{prefix}', *listing)}"
    log.info("fetching %s (%d objects) into %s", uri, len(objects), target)
    return cached(target, lambda tmp: s3.download_prefix(client, bucket, prefix, tmp, objects), marker=uri)
