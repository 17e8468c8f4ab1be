"""Remote sources and targets; importing this module registers them with fetch and publish.

Fetchers (all land in the cache, keyed by source and resolved revision, once per node):

- ``s3://bucket/prefix/`` a folder (a Hugging Face model folder, a data folder) or ``s3://bucket/key``
  one object; the revision is the object listing's ETags.
- ``https://`` / ``http://`` one file (a data file, a ``dataset_info.json``); the revision is the
  server's ETag or Last-Modified.
- ``hf://org/name`` and ``ms://org/name``: see :mod:`kubetune.trainer.storage.hubs`.
- ``configmap://name/key``: the key of the ConfigMap the Job builder mounts at
  ``kubetune.api.trainer_config.CONFIGMAP_ROOT/<name>`` (``/mnt/configmap``): one constant for both sides.

Publisher ``s3://``: delete the old manifest, upload every file, delete the files only the old
manifest listed (nothing else under the prefix is touched), and upload ``manifest.json`` last, so
its presence means the whole artifact is there.

Every network host passes the URL guard (:mod:`kubetune.trainer.storage.guard`) first.
"""

from __future__ import annotations

import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from kubetune.api import trainer_config
from kubetune.api.names import dns_subdomain_problem
from kubetune.api.redact import redact
from kubetune.trainer.errors import ConfigError, TrainerError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage import fetch as _fetch
from kubetune.trainer.storage import publish as _publish
from kubetune.trainer.storage import s3
from kubetune.trainer.storage.cache import cache_key, cached, safe_name, unversioned_revision
from kubetune.trainer.storage.guard import Guard, URLRefused, check_url
from kubetune.trainer.storage.manifest_format import (
    CHECKPOINTS,
    MANIFEST,
    MAX_MANIFEST_BYTES,
    ManifestProblem,
    parse_manifest,
)
from kubetune.trainer.storage.paths import check_relative, contained
from kubetune.trainer.storage.uris import Uri

log = get_logger(__name__)


def s3_client(*, field: str, allow: Iterable[str] = ()) -> Any:
    """An S3 client whose endpoint has passed the URL guard."""
    try:
        cli = s3.client()
    except Exception as exc:  # noqa: BLE001 - botocore config errors (bad region, bad endpoint URL)
        raise ConfigError(f"{field}: cannot configure S3 access: {exc}") from None
    guard = Guard.of(field=field, allow=allow, what="S3 endpoint")
    guard.check_url(s3.endpoint_of(cli))
    return guard.pin_botocore(cli)  # every connection (virtual hosts, redirects) goes to a checked address


def _s3_error(field: str, uri: str, exc: Exception) -> ConfigError:
    from botocore.exceptions import ClientError, HTTPClientError, NoCredentialsError

    refused = getattr(exc, "kwargs", {}).get("error") if isinstance(exc, HTTPClientError) else None
    if isinstance(refused, URLRefused):  # the pinned connection refused the address (DNS rebinding)
        return refused
    if isinstance(exc, NoCredentialsError):
        return ConfigError(
            f"{field}: no S3 credentials for {uri}; set credentialsSecret (AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY) or give the pod an AWS role"
        )
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "?")
        return ConfigError(f"{field}: S3 refused {uri}: {code} ({exc.response.get('Error', {}).get('Message', '')})")
    return ConfigError(f"{field}: cannot read {uri}: {exc}")


# ------------------------------------------------------------------------------------------------------- s3


def _fetch_s3(
    uri: str, *, cache_dir: Path, field: str, kind: str = "dataset", allow: Iterable[str] = (), **_: object
) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    cli = s3_client(field=field, allow=allow)
    bucket, key = s3.split(uri)
    try:
        obj = s3.head(cli, bucket, key) if key and not key.endswith("/") else None
        if obj is not None:  # one object
            name = Path(key).name
            target = cache_dir / f"{kind}s" / f"s3-{safe_name(name)}-{cache_key(uri, obj.get('ETag', ''))}"
            cached(
                target,
                lambda tmp: s3.download_object(
                    cli,
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
        objects = [o for o in s3.list_objects(cli, bucket, prefix) if not o["Key"].endswith("/")]
    except (ClientError, BotoCoreError) as exc:
        raise _s3_error(field, uri, exc) from None
    if not objects:
        raise ConfigError(f"{field}: nothing at {uri} (no object with that key, no objects under {prefix!r})")
    listing = sorted(f"{o['Key']} {o.get('ETag', '')} {o.get('Size', 0)}" for o in objects)
    label = safe_name(f"{bucket}-{prefix.rstrip('/').rsplit('/', 1)[-1]}")
    target = cache_dir / f"{kind}s" / f"s3-{label}-{cache_key(f's3://{bucket}/{prefix}', *listing)}"
    log.info("fetching %s (%d objects) into %s", uri, len(objects), target)
    return cached(target, lambda tmp: s3.download_prefix(cli, bucket, prefix, tmp, objects), marker=uri)


def _publish_s3(local: Path, uri: str, *, allow: Iterable[str] = (), **_: object) -> str:
    field = "spec.output.uri"
    cli = s3_client(field=field, allow=allow)
    bucket, key = s3.split(uri)
    prefix = s3.prefix_of(key)
    manifest_key = prefix + MANIFEST
    from botocore.exceptions import ClientError, NoCredentialsError

    try:
        previous = _previous_files(cli, bucket, manifest_key)
        s3.delete_keys(cli, bucket, [manifest_key])  # an old manifest must not vouch for new files
        written = set(s3.upload_dir(cli, local, bucket, prefix, exclude=[MANIFEST]))
        stale = sorted(prefix + rel for rel in previous if prefix + rel not in written)
        if stale:
            log.info("removing %d objects of an earlier artifact under %s", len(stale), uri)
            s3.delete_keys(cli, bucket, stale)
        if (local / MANIFEST).exists():
            s3.put_bytes(cli, bucket, manifest_key, (local / MANIFEST).read_bytes(), ContentType="application/json")
    except (ClientError, NoCredentialsError) as exc:
        raise _s3_error(field, uri, exc) from None
    return f"s3://{bucket}/{prefix}".rstrip("/")


def _previous_files(cli: Any, bucket: str, manifest_key: str) -> list[str]:
    """Files an earlier kubetune artifact at this prefix listed (safe to replace); none when there is none."""
    if s3.head(cli, bucket, manifest_key) is None:
        return []
    try:
        entries = json.loads(s3.get_bytes(cli, bucket, manifest_key)).get("files", [])
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
        cli = s3.client() if allow is None else s3_client(field="URI", allow=allow)
        head = s3.head(cli, bucket, prefix + MANIFEST)
        if head is None:
            return [f"{where}: no manifest (the artifact is incomplete or not a kubetune output)"]
        if int(head.get("ContentLength") or 0) > MAX_MANIFEST_BYTES:
            return [f"{where}: {head['ContentLength']:,} bytes, over the {MAX_MANIFEST_BYTES:,} a manifest may have"]
        listed, problems = parse_manifest(s3.get_bytes(cli, bucket, prefix + MANIFEST), where=where)
        present = {o["Key"][len(prefix) :]: o for o in s3.list_objects(cli, bucket, prefix)}
        for rel, entry in listed.items():
            obj = present.get(rel)
            if obj is None:
                problems.append(f"{rel}: missing")
            elif obj["Size"] != entry["size"]:
                problems.append(f"{rel}: size {obj['Size']} != {entry['size']}")
            elif _stream_sha256(cli, bucket, prefix + rel) != entry["sha256"]:
                problems.append(f"{rel}: sha256 mismatch")
    except ManifestProblem as exc:
        return [str(exc)]
    except (ClientError, BotoCoreError) as exc:
        return [str(_s3_error("URI", uri, exc))]
    except TrainerError as exc:  # retries exhausted (StorageError), the URL guard
        return [str(exc)]
    for rel in sorted(present):
        if rel not in listed and rel != MANIFEST and not rel.startswith(CHECKPOINTS + "/") and not rel.endswith("/"):
            problems.append(f"{rel}: not in the manifest")
    return problems


def _stream_sha256(cli: Any, bucket: str, key: str) -> str:
    return s3.sha256_of(cli, bucket, key)


# ----------------------------------------------------------------------------------------------------- http(s)


def _http_open(url: str, *, method: str, field: str, allow: Iterable[str], timeout: float = 30) -> Any:
    """Open ``url`` with every connection pinned to a checked address and every redirect checked (see guard)."""
    opener = Guard.of(field=field, allow=allow).urllib_opener()
    request = urllib.request.Request(url, method=method, headers={"User-Agent": "kubetune"})
    return opener.open(request, timeout=timeout)


class _ShortRead(Exception):
    """The server closed the body before its Content-Length (retried)."""


def _http_pause(attempt: int) -> float:
    """Exponential backoff with jitter (``$KUBETUNE_HTTP_BACKOFF_S`` the first pause, capped at 8 s)."""
    base = float(os.environ.get("KUBETUNE_HTTP_BACKOFF_S", "0.25"))
    return min(8.0, base * 2**attempt) * (0.5 + random.random() / 2)


def _http_retry(url: str, *, field: str, action: Any) -> Any:
    tries = s3.attempts()
    for attempt in range(tries):
        try:
            return action()
        except urllib.error.HTTPError as exc:
            if exc.code < 500 and exc.code != 429:
                raise ConfigError(f"{field}: {url} answered HTTP {exc.code} {exc.reason}") from None
            problem: Exception = exc
        except (urllib.error.URLError, ConnectionError, TimeoutError, _ShortRead) as exc:
            problem = exc
        if attempt + 1 == tries:
            raise ConfigError(f"{field}: cannot download {url} after {tries} attempts: {problem}")
        pause = _http_pause(attempt)
        log.warning("%s: %s; retrying in %.2fs", url, problem, pause)
        time.sleep(pause)
    raise AssertionError("unreachable")


def _fetch_http(
    uri: str, *, cache_dir: Path, field: str, kind: str = "dataset", allow: Iterable[str] = (), **_: object
) -> Path:
    check_url(uri, field=field, allow=allow)
    name = unquote(urlsplit(uri).path.rstrip("/").rsplit("/", 1)[-1]) or "index"
    if "/" in name or name in {".", ".."}:
        raise ConfigError(f"{field}: {redact(uri)} does not end in a file name")
    check_relative(name, what=f"{field}: the file name of {redact(uri)}")

    def revision() -> str:
        try:
            with _http_open(uri, method="HEAD", field=field, allow=allow) as resp:
                return resp.headers.get("ETag") or resp.headers.get("Last-Modified") or ""
        except urllib.error.HTTPError as exc:
            if exc.code in (405, 501):
                return ""  # no HEAD support: no revision, download every time
            raise

    rev = _http_retry(uri, field=field, action=revision)
    if not rev:
        rev = unversioned_revision()  # reused for a day, then fetched again (the old copy is evicted in time)
    target = cache_dir / f"{kind}s" / f"http-{safe_name(name)}-{cache_key(uri, rev)}"

    def download(tmp: Path) -> None:
        def once() -> None:
            with _http_open(uri, method="GET", field=field, allow=allow) as resp, (tmp / name).open("wb") as fh:
                expected = resp.headers.get("Content-Length")
                size = 0
                while block := resp.read(1 << 20):
                    fh.write(block)
                    size += len(block)
            if expected is not None and int(expected) != size:
                raise _ShortRead(f"got {size} of {expected} bytes")

        _http_retry(uri, field=field, action=once)

    return cached(target, download, marker=f"{uri} {rev}") / name


# ---------------------------------------------------------------------------------------------------- configmap


def _fetch_configmap(uri: str, *, field: str, **_: object) -> Path:
    parsed = Uri.parse(uri, field=field)
    name, key = parsed.bucket, parsed.key
    if not name or not key or "/" in key or ".." in (name, key) or dns_subdomain_problem(name):
        raise ConfigError(f"{field}: {redact(uri)} must be configmap://<name>/<key> (a ConfigMap name and one key)")
    root = Path(trainer_config.CONFIGMAP_ROOT)  # read at call time: the Job mounts ConfigMap <name> there
    # The kubelet mounts keys as symlinks into ..data/; they must stay inside the ConfigMap's folder.
    path = contained(root / name, key, what=f"{field}: {redact(uri)}: the key")
    if not path.is_file():
        raise ConfigError(
            f"{field}: ConfigMap {name!r} key {key!r} is not mounted at {path} "
            "(does the ConfigMap exist in the job's namespace, and does it have that key?)"
        )
    return path


def _fetch_hf(uri: str, **kwargs: Any) -> Path:
    from kubetune.trainer.storage.hubs import fetch_hf

    return fetch_hf(uri, **kwargs)


def _fetch_ms(uri: str, **kwargs: Any) -> Path:
    from kubetune.trainer.storage.hubs import fetch_ms

    return fetch_ms(uri, **kwargs)


_fetch.register("s3", _fetch_s3)
_fetch.register("https", _fetch_http)
_fetch.register("http", _fetch_http)
_fetch.register("configmap", _fetch_configmap)
_fetch.register("hf", _fetch_hf)
_fetch.register("ms", _fetch_ms)
_publish.PUBLISHERS["s3"] = _publish_s3
