"""S3 transfers on boto3's managed transfer layer (s3transfer); ``AWS_ENDPOINT_URL`` works for MinIO.

Credentials and endpoint come from the standard AWS chain (env, profile, instance role); the
operator maps the Secret named in ``credentialsSecret`` to ``AWS_*`` env vars.

- **Retries** are botocore's ``standard`` mode (5xx, throttling, timeouts, dropped connections;
  exponential backoff with jitter and a retry quota), ``$KUBETUNE_S3_ATTEMPTS`` attempts in all
  (default 6); s3transfer re-reads a download whose body was cut off.
- **Integrity** uses S3's flexible checksums: every upload (each part of a multipart one) carries a
  CRC32 — or ``$KUBETUNE_S3_CHECKSUM`` (``CRC64NVME`` needs ``awscrt``) — that the store checks before
  it accepts the bytes, and a download of a whole object is checked against the checksum stored
  with it. ETags are opaque: with SSE-KMS or SSE-C they are not an MD5 and nothing here reads them
  as one (they only key the cache and pin a multipart download to one version of the object).
- The sha256 of every artifact file lives in ``manifest.json``; ``kubetune artifacts verify``
  re-hashes the stored bytes against it.

Transfer errors that persist become one-line :class:`StorageError` messages naming the object;
a refusal (4xx: no bucket, access denied) stays a botocore ``ClientError`` for the caller to
map to the spec field.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.trainer.errors import TrainerError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage.paths import contained
from kubetune.trainer.storage.uris import Uri

log = get_logger(__name__)

MiB = 1 << 20


class StorageError(TrainerError):
    """A transfer failed after every retry (the pod may be retried; nothing partial is published)."""


def attempts() -> int:
    """Attempts per request, the first one included (``$KUBETUNE_S3_ATTEMPTS``, default 6)."""
    text = os.environ.get("KUBETUNE_S3_ATTEMPTS", "6")
    try:
        return max(1, int(text))
    except ValueError:
        log.warning("KUBETUNE_S3_ATTEMPTS=%r is not a whole number; using 6", text)
        return 6


CHECKSUMS = ("CRC32", "CRC32C", "CRC64NVME", "SHA1", "SHA256")
_NEEDS_CRT = ("CRC32C", "CRC64NVME")  # botocore computes these with awscrt


def checksum_algorithm() -> str:
    """The flexible checksum every upload carries (``$KUBETUNE_S3_CHECKSUM``, default CRC32)."""
    name = os.environ.get("KUBETUNE_S3_CHECKSUM", "CRC32").strip().upper() or "CRC32"
    if name not in CHECKSUMS:
        raise StorageError(f"KUBETUNE_S3_CHECKSUM={name!r} is not one of {', '.join(CHECKSUMS)}")
    if name in _NEEDS_CRT:
        try:
            import awscrt  # noqa: F401
        except ImportError:
            raise StorageError(
                f"KUBETUNE_S3_CHECKSUM={name} needs the awscrt package (pip install 'boto3[crt]'); CRC32 needs nothing"
            ) from None
    return name


@dataclass(frozen=True)
class TransferConfig:
    """How s3transfer splits and parallelises transfers (all files of one call share the threads)."""

    part_size: int = 8 * MiB  # multipart chunk size; s3transfer raises it for objects over 10,000 parts
    threshold: int = 8 * MiB  # objects from this size on go in parts (uploads) or ranges (downloads)
    concurrency: int = 10

    def boto(self) -> Any:
        from boto3.s3.transfer import TransferConfig as BotoTransferConfig

        return BotoTransferConfig(
            multipart_threshold=self.threshold,
            multipart_chunksize=self.part_size,
            max_concurrency=self.concurrency,
            use_threads=True,
            num_download_attempts=attempts(),
            preferred_transfer_client="classic",
        )


TRANSFER = TransferConfig()


def client(max_pool: int | None = None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "standard", "total_max_attempts": attempts()},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=max(max_pool or 0, TRANSFER.concurrency + 2),
        request_checksum_calculation="when_supported",
        response_checksum_validation="when_supported",
        # Every body carries a CRC the store verifies, so a SHA-256 of the payload in the signature adds CPU
        # and no safety (botocore already skips it over https; this also skips it over plain-http MinIO).
        s3={"payload_signing_enabled": False},
    )
    return boto3.session.Session().client("s3", config=config)


def endpoint_of(client: Any) -> str:
    return str(client.meta.endpoint_url)


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    parsed = Uri.parse(uri)
    if parsed.scheme != "s3" or not parsed.bucket:
        raise ValueError(f"{uri!r} is not an s3://bucket/... URI")
    return parsed.bucket, parsed.key


def prefix_of(key: str) -> str:
    """A folder prefix: ``"a/b"`` → ``"a/b/"``, ``""`` → ``""``."""
    return key.rstrip("/") + "/" if key.strip("/") else ""


# 400s that mean the bytes changed on the way (the store refused them), not that the request is wrong
_CORRUPTED = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"}


def is_refusal(exc: BaseException) -> bool:
    """A 4xx answer other than throttling or a checksum mismatch: the request or the setup is wrong."""
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    code = exc.response.get("Error", {}).get("Code")
    return 400 <= status < 500 and status != 429 and code not in _CORRUPTED


def failure(what: str, exc: BaseException) -> BaseException:
    """The exception to raise for a transfer that failed: refusals as they are, the rest as a StorageError."""
    from botocore.exceptions import ClientError, FlexibleChecksumError, HTTPClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    from kubetune.api.redact import redact

    if is_refusal(exc) or isinstance(exc, NoCredentialsError | StorageError):
        return exc
    if isinstance(exc, ClientError):
        error, meta = exc.response.get("Error", {}), exc.response.get("ResponseMetadata", {})
        tries = int(meta.get("RetryAttempts", 0)) + 1
        return StorageError(
            f"{what}: {error.get('Code', '?')} ({redact(str(error.get('Message', '')))}), HTTP "
            f"{meta.get('HTTPStatusCode', '?')} after {tries} attempts"
        )
    if isinstance(exc, FlexibleChecksumError):
        return StorageError(
            f"{what}: the bytes read do not match the checksum stored with the object ({exc}); "
            "the object was corrupted on its way into the store, upload it again"
        )
    retried = f" after {attempts()} attempts" if isinstance(exc, HTTPClientError | BotoConnectionError) else ""
    return StorageError(f"{what}: failed{retried}: {exc.__class__.__name__}: {redact(str(exc))}")


def _known(size: int | None, etag: str | None) -> Any:
    """An s3transfer subscriber that hands over the size and ETag from a listing (no HEAD per object)."""
    from s3transfer.subscribers import BaseSubscriber

    class Known(BaseSubscriber):  # type: ignore[misc]
        def on_queued(self, future: Any, **kwargs: Any) -> None:
            if size is not None:
                future.meta.provide_transfer_size(size)
            if etag:
                future.meta.provide_object_etag(etag)

    return Known()


def _wait(future: Any, what: str) -> Any:
    """The result of an s3transfer future (or of a call), its failure mapped by :func:`failure`."""
    try:
        return future() if callable(future) else future.result()
    except Exception as exc:  # noqa: BLE001 - every failure is mapped to one line naming the object
        raise failure(what, exc) from None


def _manager(client: Any, config: TransferConfig | None) -> Any:
    from s3transfer.manager import TransferManager

    return TransferManager(client, (config or TRANSFER).boto())


# ----------------------------------------------------------------------------------------------------- upload


def _upload_args(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"ChecksumAlgorithm": checksum_algorithm(), **(extra or {})}


def put_bytes(client: Any, bucket: str, key: str, data: bytes, **extra: Any) -> None:
    """One small object (a manifest, a marker) in one PUT, checksummed and retried by botocore."""
    _wait(
        lambda: client.put_object(Bucket=bucket, Key=key, Body=data, **_upload_args(extra)), f"PUT s3://{bucket}/{key}"
    )


def upload_files(
    client: Any, bucket: str, files: Iterable[tuple[Path, str]], config: TransferConfig | None = None
) -> int:
    """Upload (local path, key) pairs, all files sharing one transfer manager's threads; return bytes sent.

    Raises StorageError (or the 4xx ClientError) when a file fails after its retries; s3transfer aborts the
    multipart uploads it started.
    """
    files = list(files)
    total = 0
    with _manager(client, config) as manager:  # leaving it on an error cancels the rest (and aborts their parts)
        futures = []
        for path, key in files:
            total += path.stat().st_size
            futures.append((key, manager.upload(str(path), bucket, key, extra_args=_upload_args())))
        for key, fut in futures:
            _wait(fut, f"upload of s3://{bucket}/{key}")
    return total


def upload_dir(
    client: Any,
    local: Path,
    bucket: str,
    prefix: str,
    *,
    exclude: Iterable[str] = (),
    config: TransferConfig | None = None,
) -> list[str]:
    """Upload every file under ``local`` to ``prefix``; return the keys written."""
    skip = set(exclude)
    pairs = [
        (p, prefix + p.relative_to(local).as_posix())
        for p in sorted(local.rglob("*"))
        if p.is_file() and p.relative_to(local).as_posix() not in skip
    ]
    upload_files(client, bucket, pairs, config)
    return [k for _, k in pairs]


# ---------------------------------------------------------------------------------------------------- listing


def list_objects(client: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def delete_keys(client: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        resp = client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        if resp.get("Errors"):
            first = resp["Errors"][0]
            raise StorageError(
                f"delete s3://{bucket}/{first.get('Key')}: {first.get('Code')} ({first.get('Message')}); "
                f"{len(resp['Errors'])} of {len(batch)} objects not deleted"
            )


def head(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return dict(client.head_object(Bucket=bucket, Key=key))
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise


# --------------------------------------------------------------------------------------------------- download


def get_bytes(client: Any, bucket: str, key: str) -> bytes:
    """A small object's bytes (a manifest, a marker), through s3transfer (a cut-off body is read again)."""
    buf = io.BytesIO()
    with _manager(client, None) as manager:
        _wait(manager.download(bucket, key, buf), f"GET s3://{bucket}/{key}")
    return buf.getvalue()


class _Sha256Sink:
    """A write-only target: s3transfer hands it the object's bytes in order (it is not seekable)."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        self.digest.update(data)
        return len(data)

    def seekable(self) -> bool:
        return False


def sha256_of(client: Any, bucket: str, key: str, config: TransferConfig | None = None) -> str:
    """The sha256 of an object's stored bytes, streamed (ranges in parallel, written in order)."""
    sink = _Sha256Sink()
    with _manager(client, config) as manager:
        _wait(manager.download(bucket, key, sink), f"GET s3://{bucket}/{key}")
    return sink.digest.hexdigest()


def download_object(
    client: Any,
    bucket: str,
    key: str,
    dest: Path,
    *,
    size: int | None = None,
    etag: str | None = None,
    config: TransferConfig | None = None,
) -> Path:
    """Download one object to ``dest`` (written under a temporary name, renamed when complete)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _manager(client, config) as manager:
        _wait(manager.download(bucket, key, str(dest), subscribers=[_known(size, etag)]), f"GET s3://{bucket}/{key}")
    return dest


def download_prefix(
    client: Any,
    bucket: str,
    prefix: str,
    dest: Path,
    objects: list[dict[str, Any]] | None = None,
    config: TransferConfig | None = None,
) -> list[str]:
    """Download every object under ``prefix`` into ``dest`` (relative paths kept); return the relative paths.

    A key whose remainder would land outside ``dest`` (``..``, an absolute remainder, a symlink out) is refused
    before anything is downloaded.
    """
    objects = objects if objects is not None else list(list_objects(client, bucket, prefix))
    todo: list[tuple[dict[str, Any], str, Path]] = []
    for obj in objects:
        rel = obj["Key"][len(prefix) :]
        if not rel or rel.endswith("/"):
            continue  # folder placeholder objects
        todo.append((obj, rel, contained(dest, rel, what=f"s3://{bucket}/{obj['Key']}")))
    dest.mkdir(parents=True, exist_ok=True)
    with _manager(client, config) as manager:  # leaving it on an error cancels the rest
        futures = []
        for obj, _, path in todo:
            path.parent.mkdir(parents=True, exist_ok=True)
            futures.append(
                (
                    obj["Key"],
                    manager.download(
                        bucket, obj["Key"], str(path), subscribers=[_known(obj.get("Size"), obj.get("ETag"))]
                    ),
                )
            )
        for key, fut in futures:
            _wait(fut, f"GET s3://{bucket}/{key}")
    return [rel for _, rel, _ in todo]
