"""Bring models and data to the local disk.

One fetcher per URI scheme, in a registry that fails loudly on an unknown scheme.
Each returns a local path; remote sources land in the cache folder, keyed by
(source, revision), and a partial download never counts as cached.
"""

from __future__ import annotations

import pkgutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from kubetune.api.redact import redact
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage import uris
from kubetune.trainer.storage.paths import links_stay_inside
from kubetune.trainer.storage.uris import Uri, file_path, pvc_path


def _fetch_file(uri: str, *, work_dir: Path, cache_dir: Path, field: str, **_: object) -> Path:
    path = file_path(uri, work_dir)
    if not path.exists():
        raise ConfigError(f"{field}: {path} does not exist (from {uri})")
    return path


def _fetch_pvc(uri: str, *, work_dir: Path, cache_dir: Path, field: str, **_: object) -> Path:
    """pvc://claim/path: the operator mounts the claim read-only at /mnt/pvc/<claim>; the path stays inside it."""
    path = pvc_path(uri, field=field)
    if not path.exists():
        claim = Uri.parse(uri).bucket
        raise ConfigError(f"{field}: {path} does not exist (PVC {claim!r} mounted at {uris.PVC_ROOT}/{claim})")
    if path.is_dir():  # a folder (a model, a dataset) on a shared claim: no link in it may lead off the claim
        links_stay_inside(path, Path(uris.PVC_ROOT) / Uri.parse(uri).bucket, what=f"{field}:")
    return path


Fetcher = Callable[..., Path]
T = TypeVar("T")


def by_scheme(table: Mapping[str, T | str], scheme: str) -> T | None:
    """The handler for ``scheme``: a function, or one named ``module:function`` and imported now; None when unknown.

    Remote handlers import boto3 or huggingface_hub when they run, so their modules load on first use.
    """
    entry = table.get(scheme)
    return pkgutil.resolve_name(entry) if isinstance(entry, str) else entry


FETCHERS: dict[str, Fetcher | str] = {
    "file": _fetch_file,
    "pvc": _fetch_pvc,
    "s3": "kubetune.trainer.storage.s3_fetch:fetch_s3",
    "https": "kubetune.trainer.storage.http_fetch:fetch_http",
    "http": "kubetune.trainer.storage.http_fetch:fetch_http",
    "configmap": "kubetune.trainer.storage.configmap_fetch:fetch_configmap",
    "hf": "kubetune.trainer.storage.hubs:fetch_hf",
    "ms": "kubetune.trainer.storage.hubs:fetch_ms",
}


def fetch(uri: str, *, field: str, work_dir: str | Path, cache_dir: str | Path, **options: object) -> Path:
    """Return a local path holding ``uri``'s content. ``field`` names the spec field for error messages."""
    scheme = Uri.parse(uri, field=field).scheme
    fetcher = by_scheme(FETCHERS, scheme)
    if fetcher is None:
        raise ConfigError(
            f"{field}: no fetcher for {scheme}:// URIs ({redact(uri)}); known: {', '.join(sorted(FETCHERS))}"
        )
    return fetcher(uri, work_dir=Path(work_dir), cache_dir=Path(cache_dir), field=field, **options)
