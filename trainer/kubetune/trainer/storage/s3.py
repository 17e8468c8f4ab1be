"""S3 transfers with retries, backoff and checksums (boto3; AWS_ENDPOINT_URL works for MinIO).

Credentials and endpoint come from the standard AWS chain (env, profile, instance role); the
operator maps the Secret named in ``credentialsSecret`` to ``AWS_*`` env vars.

Every call goes through :func:`call`, which retries 5xx, throttling, timeouts and dropped
connections with exponential backoff and jitter (botocore's own retries are off, so the
policy is in one place). Uploads send ``Content-MD5`` and compare the returned ETag per
object or per part, then the multipart ETag (``md5(part md5s)-N``) after completion.
Downloads check size, and the MD5 when the ETag is a plain one.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kubetune.trainer.errors import TrainerError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage.uris import Uri

log = get_logger(__name__)
T = TypeVar("T")

MiB = 1 << 20
_RETRY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
                "InternalError", "ServiceUnavailable", "RequestLimitExceeded", "BadDigest"}


class StorageError(TrainerError):
    """A transfer failed after every retry (the pod may be retried; nothing partial is published)."""


class ChecksumMismatch(Exception):
    """The store returned a different checksum than the bytes sent (retried)."""


@dataclass
class RetryPolicy:
    attempts: int = 6
    base_s: float = 0.25
    cap_s: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * 2**attempt) * (0.5 + random.random() / 2)


@dataclass
class TransferConfig:
    part_size: int = 8 * MiB  # the smallest part; big files get bigger ones (see part_size_for)
    threshold: int = 8 * MiB
    concurrency: int = 10
    max_part_size: int = 32 * MiB  # bounds memory: at most concurrency × this in flight

    def part_size_for(self, size: int) -> int:
        """Enough parts to keep every thread busy, parts no smaller than ``part_size``, at most 10,000 parts."""
        wanted = -(-size // self.concurrency)
        part = max(self.part_size, min(self.max_part_size, -(-wanted // MiB) * MiB))
        return max(part, -(-size // 10_000))


RETRY = RetryPolicy(attempts=int(os.environ.get("KUBETUNE_S3_ATTEMPTS", "6")),
                    base_s=float(os.environ.get("KUBETUNE_S3_BACKOFF_S", "0.25")))
TRANSFER = TransferConfig()


def is_retryable(exc: BaseException) -> bool:
    from botocore.exceptions import (
        ClientError,
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        IncompleteReadError,
        ReadTimeoutError,
        ResponseStreamingError,
    )
    from urllib3.exceptions import ProtocolError

    if isinstance(exc, ChecksumMismatch | ConnectionClosedError | ConnectTimeoutError | EndpointConnectionError
                  | ReadTimeoutError | IncompleteReadError | ResponseStreamingError | ProtocolError
                  | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429 or exc.response.get("Error", {}).get("Code") in _RETRY_CODES
    return False


def call(fn: Callable[..., T], *args: Any, what: str, policy: RetryPolicy | None = None, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, retried with backoff on transient failures; StorageError when they persist."""
    policy = policy or RETRY
    for attempt in range(policy.attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not is_retryable(exc):
                raise
            if attempt + 1 == policy.attempts:
                raise StorageError(f"{what}: failed after {policy.attempts} attempts: {exc}") from exc
            pause = policy.delay(attempt)
            log.warning("%s: %s; retrying in %.2fs (%d/%d)", what, exc, pause, attempt + 1, policy.attempts)
            time.sleep(pause)
    raise AssertionError("unreachable")


def client(max_pool: int | None = None) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"total_max_attempts": 1},  # :func:`call` retries, so backoff has one policy
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=max(max_pool or 0, TRANSFER.concurrency + 2),
        request_checksum_calculation="when_required",  # we send Content-MD5 ourselves
        response_checksum_validation="when_required",
        # Every body carries Content-MD5, so a SHA-256 of the payload in the signature adds CPU and no safety
        # (botocore already skips it over https; this also skips it over plain-http MinIO endpoints).
        s3={"payload_signing_enabled": False},
    )
    return boto3.session.Session().client("s3", config=config)


def endpoint_of(cli: Any) -> str:
    return str(cli.meta.endpoint_url)


def split(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``."""
    parsed = Uri.parse(uri)
    if parsed.scheme != "s3" or not parsed.bucket:
        raise ValueError(f"{uri!r} is not an s3://bucket/... URI")
    return parsed.bucket, parsed.key


def prefix_of(key: str) -> str:
    """A folder prefix: ``"a/b"`` → ``"a/b/"``, ``""`` → ``""``."""
    return key.rstrip("/") + "/" if key.strip("/") else ""


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _etag(response: dict[str, Any]) -> str:
    return str(response.get("ETag", "")).strip('"')


# ----------------------------------------------------------------------------------------------------- upload


def put_bytes(cli: Any, bucket: str, key: str, data: bytes, **extra: Any) -> None:
    digest = _md5(data)

    def once() -> None:
        resp = cli.put_object(Bucket=bucket, Key=key, Body=data, ContentMD5=base64.b64encode(digest).decode(), **extra)
        if _etag(resp) != digest.hex():
            raise ChecksumMismatch(f"s3://{bucket}/{key}: ETag {_etag(resp)} != MD5 {digest.hex()}")

    call(once, what=f"PUT s3://{bucket}/{key}")


def _read_range(path: Path, offset: int, length: int) -> bytes:
    with path.open("rb") as fh:
        fh.seek(offset)
        return fh.read(length)


def _put_part(cli: Any, path: Path, bucket: str, key: str, upload_id: str, number: int, offset: int,
              length: int) -> bytes:
    data = _read_range(path, offset, length)
    digest = _md5(data)

    def once() -> None:
        resp = cli.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=data,
                               ContentMD5=base64.b64encode(digest).decode())
        if _etag(resp) != digest.hex():
            raise ChecksumMismatch(f"s3://{bucket}/{key} part {number}: ETag {_etag(resp)} != MD5 {digest.hex()}")

    call(once, what=f"upload part {number} of s3://{bucket}/{key}")
    return digest


@dataclass
class _Multipart:
    path: Path
    key: str
    upload_id: str
    parts: list[Future[bytes]]


def upload_files(cli: Any, bucket: str, files: Iterable[tuple[Path, str]], config: TransferConfig | None = None) -> int:
    """Upload (local path, key) pairs concurrently (small files whole, big ones in parts); return bytes sent.

    Raises StorageError when any file fails after its retries; unfinished multipart uploads are aborted.
    """
    config = config or TRANSFER
    files = list(files)
    total = 0
    multiparts: list[_Multipart] = []
    singles: list[Future[None]] = []
    with ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="kubetune-s3") as pool:
        try:
            for path, key in files:
                size = path.stat().st_size
                total += size
                if size < config.threshold:
                    singles.append(pool.submit(lambda p=path, k=key: put_bytes(cli, bucket, k, p.read_bytes())))
                    continue
                created = call(cli.create_multipart_upload, Bucket=bucket, Key=key,
                               what=f"start multipart upload of s3://{bucket}/{key}")
                mp = _Multipart(path, key, created["UploadId"], [])
                multiparts.append(mp)
                part_size = config.part_size_for(size)
                for number, offset in enumerate(range(0, size, part_size), start=1):
                    length = min(part_size, size - offset)
                    mp.parts.append(pool.submit(_put_part, cli, path, bucket, key, mp.upload_id, number, offset, length))
            for fut in singles:
                fut.result()
            for mp in list(multiparts):
                digests = [fut.result() for fut in mp.parts]
                _complete(cli, bucket, mp, digests)
                multiparts.remove(mp)
        except BaseException:
            for fut in singles + [f for mp in multiparts for f in mp.parts]:
                fut.cancel()
            for mp in multiparts:
                try:
                    cli.abort_multipart_upload(Bucket=bucket, Key=mp.key, UploadId=mp.upload_id)
                except Exception:  # noqa: BLE001 - best effort; lifecycle rules clean up the rest
                    log.warning("could not abort multipart upload of s3://%s/%s", bucket, mp.key)
            raise
    return total


def _complete(cli: Any, bucket: str, mp: _Multipart, digests: list[bytes]) -> None:
    parts = [{"PartNumber": n, "ETag": f'"{d.hex()}"'} for n, d in enumerate(digests, start=1)]
    expected = f"{_md5(b''.join(digests)).hex()}-{len(digests)}"
    resp = call(cli.complete_multipart_upload, Bucket=bucket, Key=mp.key, UploadId=mp.upload_id,
                MultipartUpload={"Parts": parts}, what=f"complete multipart upload of s3://{bucket}/{mp.key}")
    if _etag(resp) != expected:
        raise StorageError(f"s3://{bucket}/{mp.key}: multipart ETag {_etag(resp)} != expected {expected}")


def upload_dir(cli: Any, local: Path, bucket: str, prefix: str, *, exclude: Iterable[str] = (),
               config: TransferConfig | None = None) -> list[str]:
    """Upload every file under ``local`` to ``prefix``; return the keys written."""
    skip = set(exclude)
    pairs = [(p, prefix + p.relative_to(local).as_posix())
             for p in sorted(local.rglob("*")) if p.is_file() and p.relative_to(local).as_posix() not in skip]
    upload_files(cli, bucket, pairs, config)
    return [k for _, k in pairs]


# ---------------------------------------------------------------------------------------------------- listing


def list_objects(cli: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        page = call(cli.list_objects_v2, what=f"list s3://{bucket}/{prefix}", **kwargs)
        yield from page.get("Contents", [])
        if not page.get("IsTruncated"):
            return
        token = page["NextContinuationToken"]


def delete_keys(cli: Any, bucket: str, keys: list[str]) -> None:
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start:start + 1000]]
        call(cli.delete_objects, Bucket=bucket, Delete={"Objects": batch, "Quiet": True},
             what=f"delete {len(batch)} objects in s3://{bucket}")


def head(cli: Any, bucket: str, key: str) -> dict[str, Any] | None:
    from botocore.exceptions import ClientError

    try:
        return call(cli.head_object, Bucket=bucket, Key=key, what=f"HEAD s3://{bucket}/{key}")
    except ClientError as exc:
        if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
            return None
        raise


# --------------------------------------------------------------------------------------------------- download


def get_bytes(cli: Any, bucket: str, key: str) -> bytes:
    def once() -> bytes:
        resp = cli.get_object(Bucket=bucket, Key=key)
        data = resp["Body"].read()
        if len(data) != resp["ContentLength"]:
            raise ChecksumMismatch(f"s3://{bucket}/{key}: got {len(data)} of {resp['ContentLength']} bytes")
        return data

    return call(once, what=f"GET s3://{bucket}/{key}")


def download_object(cli: Any, bucket: str, key: str, dest: Path, *,
                    digest: Callable[[], Any] | None = None) -> str | None:
    """Stream one object to ``dest`` (size and plain-ETag MD5 checked); return the hex of ``digest()`` if given."""
    dest.parent.mkdir(parents=True, exist_ok=True)

    def once() -> str | None:
        resp = cli.get_object(Bucket=bucket, Key=key)
        md5 = hashlib.md5(usedforsecurity=False)
        extra = digest() if digest else None
        size = 0
        with dest.open("wb") as fh:
            for chunk in resp["Body"].iter_chunks(1 * MiB):
                fh.write(chunk)
                md5.update(chunk)
                if extra is not None:
                    extra.update(chunk)
                size += len(chunk)
        if size != resp["ContentLength"]:
            raise ChecksumMismatch(f"s3://{bucket}/{key}: got {size} of {resp['ContentLength']} bytes")
        etag = _etag(resp)
        if "-" not in etag and len(etag) == 32 and etag != md5.hexdigest():
            raise ChecksumMismatch(f"s3://{bucket}/{key}: MD5 {md5.hexdigest()} != ETag {etag}")
        return extra.hexdigest() if extra is not None else None

    return call(once, what=f"GET s3://{bucket}/{key}")


def download_prefix(cli: Any, bucket: str, prefix: str, dest: Path, objects: list[dict[str, Any]] | None = None,
                    config: TransferConfig | None = None) -> list[str]:
    """Download every object under ``prefix`` into ``dest`` (relative paths kept); return the relative paths."""
    config = config or TRANSFER
    objects = objects if objects is not None else list(list_objects(cli, bucket, prefix))
    rels = []
    with ThreadPoolExecutor(max_workers=config.concurrency, thread_name_prefix="kubetune-s3") as pool:
        futures = []
        for obj in objects:
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue  # folder placeholder objects
            if ".." in Path(rel).parts:
                raise StorageError(f"s3://{bucket}/{obj['Key']}: refusing a key that escapes the folder")
            rels.append(rel)
            futures.append(pool.submit(download_object, cli, bucket, obj["Key"], dest / rel))
        for fut in futures:
            fut.result()
    return rels
