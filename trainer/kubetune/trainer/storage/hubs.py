"""Model hubs: fetch from the Hugging Face Hub (``hf://``) and ModelScope (``ms://``); push to the HF Hub.

``hf://org/name``: ``huggingface_hub.snapshot_download`` into the Hub's own cache layout under
``<cache>/hub`` (so an interrupted download resumes, concurrent ranks share per-file locks, and a
cached snapshot is used without the network when the Hub is unreachable or ``HF_HUB_OFFLINE=1``).
The revision (branch, tag or commit; default ``main``) resolves to a commit, the name of the snapshot
folder, also written to ``<snapshot>/.kubetune-revision`` (the model loader records it in the
manifest). The token is ``$HF_TOKEN`` (the operator maps it from ``credentialsSecret``);
``$HF_ENDPOINT`` selects a mirror.

``ms://org/name`` uses the ``modelscope`` package (``$MODELSCOPE_API_TOKEN``, ``$MODELSCOPE_ENDPOINT``);
the requested revision (default ``master``) is recorded as given.

Before any hub call the endpoint passes the URL guard and a short reachability probe: a pod without
network uses the cache, or fails at once with a message naming the field, not after minutes of retries.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage.cache import REVISION, cache_key, cached, safe_name, trim, use
from kubetune.trainer.storage.guard import check_url, guard_hub
from kubetune.trainer.storage.paths import check_relative, contained
from kubetune.trainer.storage.uris import Uri

log = get_logger(__name__)

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
MS_DEFAULT_ENDPOINT = "https://www.modelscope.cn"
PROBE_TIMEOUT_S = 5.0


def hf_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HF_DEFAULT_ENDPOINT).rstrip("/")


def ms_endpoint() -> str:
    return os.environ.get("MODELSCOPE_ENDPOINT", MS_DEFAULT_ENDPOINT).rstrip("/")


def probe(endpoint: str, *, field: str, hub: str, env: str) -> None:
    """Open (and close) a TCP connection to the hub; ConfigError naming the field when it cannot."""
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname or "", port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"{field}: {hub} at {endpoint} is unreachable ({exc.__class__.__name__}: {exc}); this pod has no route "
            f"to it. Allow egress to it, set {env} to a reachable mirror, or copy the model to s3://, pvc:// or "
            "file:// and point the field there"
        ) from None


def _repo(uri: str, field: str) -> str:
    repo = Uri.parse(uri).rest.strip("/")
    if repo.count("/") > 1 or not repo:
        raise ConfigError(f"{field}: {uri} must be <scheme>://<org>/<name> (or <name>)")
    return repo


# ------------------------------------------------------------------------------------------------ Hugging Face


def _hf_problem(field: str, repo: str, revision: str | None, exc: Exception) -> ConfigError:
    from huggingface_hub import errors

    if isinstance(exc, errors.GatedRepoError):
        return ConfigError(
            f"{field}: {repo} is gated; accept its terms on the Hub and give a token (HF_TOKEN in "
            "credentialsSecret) of an account that has access"
        )
    if isinstance(exc, errors.RevisionNotFoundError):
        return ConfigError(f"{field}: revision {revision!r} does not exist in {repo} (spec.model.revision)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ConfigError(
            f"{field}: repository {repo} not found on {hf_endpoint()}, or it is private and "
            "HF_TOKEN (credentialsSecret) is missing or lacks access"
        )
    if isinstance(exc, errors.HfHubHTTPError):
        return ConfigError(f"{field}: the Hugging Face Hub refused {repo}: {exc}")
    return ConfigError(
        f"{field}: the Hugging Face Hub at {hf_endpoint()} is unreachable or failed for {repo} "
        f"({exc.__class__.__name__}: {exc})"
    )


def hub_cache(cache_dir: Path) -> Path:
    """The Hugging Face Hub cache (its own layout: ``models--org--name/{blobs,snapshots,refs}``) inside ours."""
    return Path(cache_dir) / "hub"


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def fetch_hf(
    uri: str,
    *,
    cache_dir: Path,
    field: str,
    kind: str = "model",
    revision: str | None = None,
    allow: Iterable[str] = (),
    dataset: Any = None,
    **_: object,
) -> Path:
    """Download (or find in the cache) a snapshot with ``huggingface_hub.snapshot_download``; return its folder.

    The Hub's cache resumes a dropped transfer with a Range request, locks each file, and serves a complete
    snapshot without the network when the Hub is unreachable or ``HF_HUB_OFFLINE=1``; partial files a killed
    process left are finished first (:func:`_resume_dead_partials`). The snapshot folder is named after the resolved commit, which is also written to
    ``.kubetune-revision`` in it for the manifest.
    """
    repo = _repo(uri, field)
    endpoint = hf_endpoint()
    guard_hub(endpoint, field=field, allow=allow)  # checked, and every Hub connection pinned to checked addresses
    repo_type = "dataset" if kind == "dataset" else "model"
    token = os.environ.get("HF_TOKEN") or None
    folder = getattr(dataset, "folder", None)
    if folder:
        check_relative(folder.strip("/"), what=f"{field}: folder")
    offline = _offline()
    unreachable: ConfigError | None = None
    if not offline:
        try:
            probe(endpoint, field=field, hub="the Hugging Face Hub", env="HF_ENDPOINT")
        except ConfigError as exc:
            unreachable = exc  # the cache may still have it
    from huggingface_hub import snapshot_download

    root = hub_cache(cache_dir)
    entry = root / f"{repo_type}s--{repo.replace('/', '--')}"
    use(entry)  # held while this process runs: never evicted under it
    if not (offline or unreachable):
        _resume_dead_partials(root, entry, repo=repo, repo_type=repo_type, endpoint=endpoint, token=token)
    log.info(
        "%s %s@%s (%s)",
        "looking up" if offline or unreachable else "fetching",
        repo,
        revision or "main",
        "offline: the cache only" if offline or unreachable else endpoint,
    )
    try:
        path = Path(
            snapshot_download(
                repo,
                repo_type=repo_type,
                revision=revision,
                cache_dir=root,
                token=token,
                endpoint=endpoint,
                local_files_only=offline or unreachable is not None,
                allow_patterns=[f"{folder.strip('/')}/*"] if folder else None,
            )
        )
    except Exception as exc:  # noqa: BLE001 - mapped to a message naming the field
        raise _hf_cache_problem(field, repo, revision, exc, unreachable=unreachable, offline=offline) from None
    # A Hub (or mirror) names the snapshot folder by the commit it answers: it must stay inside this repo's cache.
    path = contained(entry / "snapshots", os.path.relpath(path, entry / "snapshots"), what=f"{field}: the snapshot")
    commit = path.name
    if not (path / REVISION).exists():
        try:
            (path / REVISION).write_text(commit + "\n", encoding="utf-8")
        except OSError:
            log.warning("cannot record the revision in %s (read-only cache?)", path)
    trim(Path(cache_dir))
    return contained(path, folder.strip("/"), what=f"{field}: folder") if folder else path


def _resume_dead_partials(
    root: Path, entry: Path, *, repo: str, repo_type: str, endpoint: str, token: str | None
) -> None:
    """Finish the partial blobs a killed download left, from where they stopped.

    huggingface_hub 2 writes each download to a process-unique ``blobs/<etag>.<id>.incomplete`` and never
    reuses one another process left, so a pod killed mid-download would start those files over. A partial
    whose blob lock (``.locks/<repo>/<etag>.lock``) is free has no live writer: under that lock it is
    completed with huggingface_hub's own ``http_get`` and a Range request (the file and commit come from the
    Hub cache's tree listing), then moved into place, so ``snapshot_download`` finds the blob there. A
    partial that cannot be matched to a file is removed; one that cannot be finished now (no network) stays.
    """
    partials = sorted((entry / "blobs").glob("*.incomplete"))
    if not partials:
        return
    from filelock import FileLock, Timeout

    files = _tree_files(entry)
    for partial in partials:
        etag = partial.name.split(".", 1)[0]
        lock = FileLock(str(root / ".locks" / entry.name / f"{etag}.lock"))
        try:
            with lock.acquire(timeout=0):
                if not partial.exists() or (entry / "blobs" / etag).exists():
                    partial.unlink(missing_ok=True)
                    continue
                if etag not in files:
                    partial.unlink(missing_ok=True)
                    continue
                path, commit, size = files[etag]
                _finish_blob(
                    partial,
                    entry / "blobs" / etag,
                    repo=repo,
                    repo_type=repo_type,
                    path=path,
                    commit=commit,
                    size=size,
                    endpoint=endpoint,
                    token=token,
                )
        except Timeout:
            continue  # being written by a live download


def _tree_files(entry: Path) -> dict[str, tuple[str, str, int]]:
    """etag → (path in the repo, commit, size) from the tree listings the Hub cache keeps per commit."""
    try:
        from huggingface_hub._tree_cache import read_tree_cache
    except ImportError:  # another huggingface_hub layout: partial files just start over
        return {}
    files: dict[str, tuple[str, str, int]] = {}
    for listing in sorted((entry / "trees").glob("*.json")):
        for path, info in (read_tree_cache(str(entry), listing.stem) or {}).items():
            etag = info.lfs_sha256 or info.blob_id
            files.setdefault(etag, (path, listing.stem, info.lfs_size or info.size))
    return files


def _finish_blob(
    partial: Path,
    blob: Path,
    *,
    repo: str,
    repo_type: str,
    path: str,
    commit: str,
    size: int,
    endpoint: str,
    token: str | None,
) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(repo, path, repo_type=repo_type, revision=commit, endpoint=endpoint)
    done = partial.stat().st_size
    log.info("resuming %s of %s@%s at %.1f of %.1f MiB", path, repo, commit[:12], done / 2**20, size / 2**20)
    try:
        with partial.open("r+b") as fh:
            fh.seek(0, os.SEEK_END)
            http_get(url, fh, resume_size=done, headers=build_hf_headers(token=token), expected_size=size)
    except Exception as exc:  # noqa: BLE001 - kept for the next attempt; snapshot_download reports the real problem
        log.warning(
            "could not resume %s of %s (%s: %s); it stays for the next attempt",
            path,
            repo,
            exc.__class__.__name__,
            exc,
        )
        return
    if partial.stat().st_size == size:
        os.replace(partial, blob)
    else:
        partial.unlink(missing_ok=True)


def _hf_cache_problem(
    field: str, repo: str, revision: str | None, exc: Exception, *, unreachable: ConfigError | None, offline: bool
) -> ConfigError:
    from huggingface_hub import errors

    rev = revision or "main"
    if isinstance(exc, errors.LocalEntryNotFoundError | errors.IncompleteSnapshotError):
        partly = "only partly" if isinstance(exc, errors.IncompleteSnapshotError) else "not"
        if unreachable is not None:
            return ConfigError(f"{unreachable} ({repo}@{rev} is {partly} in the cache)")
        if offline:
            return ConfigError(
                f"{field}: HF_HUB_OFFLINE is set and {repo}@{rev} is {partly} in the cache; unset it "
                "for one run with network access, or point the field at s3://, pvc:// or file://"
            )
        cause = exc.__cause__ or exc
        return ConfigError(
            f"{field}: the Hugging Face Hub at {hf_endpoint()} is unreachable or failed for {repo} "
            f"({cause.__class__.__name__}: {cause}), and {repo}@{rev} is {partly} in the cache"
        )
    return _hf_problem(field, repo, revision, exc)


def push_to_hub(
    local: Path, *, repo: str, private: bool, allow: Iterable[str] = (), field: str = "spec.output.hub"
) -> str:
    """Upload an artifact folder to a Hub model repository; return the commit URL."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError(
            f"{field}.credentialsSecret: HF_TOKEN is not set; the Secret must have an HF_TOKEN key with a write token"
        )
    endpoint = hf_endpoint()
    guard_hub(endpoint, field=field, allow=allow)
    probe(endpoint, field=field, hub="the Hugging Face Hub", env="HF_ENDPOINT")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(
            folder_path=str(local),
            repo_id=repo,
            repo_type="model",
            commit_message="kubetune: upload fine-tuned adapter",
        )
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(
            f"{field}.repo: pushing to {repo} on {endpoint} failed ({exc.__class__.__name__}: "
            f"{exc}); check the token has write access"
        ) from None
    return str(getattr(info, "commit_url", info))


# --------------------------------------------------------------------------------------------------- ModelScope


def fetch_ms(
    uri: str,
    *,
    cache_dir: Path,
    field: str,
    kind: str = "model",
    revision: str | None = None,
    allow: Iterable[str] = (),
    **_: object,
) -> Path:
    repo = _repo(uri, field)
    endpoint = ms_endpoint()
    check_url(endpoint, field=field, allow=allow, what="ModelScope")
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ConfigError(
            f"{field}: ms:// sources need the modelscope package: pip install modelscope "
            "(the kubetune trainer image includes it)"
        ) from None
    rev = revision or "master"
    probe(endpoint, field=field, hub="ModelScope", env="MODELSCOPE_ENDPOINT")
    target = cache_dir / f"{kind}s" / f"ms-{safe_name(repo)}-{cache_key(endpoint, repo, rev)}"

    def download(tmp: Path) -> None:
        try:
            snapshot_download(
                repo,
                revision=rev,
                local_dir=str(tmp),
                endpoint=endpoint,
                token=os.environ.get("MODELSCOPE_API_TOKEN") or None,
                repo_type="dataset" if kind == "dataset" else "model",
            )
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(
                f"{field}: ModelScope download of {repo}@{rev} from {endpoint} failed "
                f"({exc.__class__.__name__}: {exc})"
            ) from None
        (tmp / REVISION).write_text(rev + "\n", encoding="utf-8")

    return cached(target, download, marker=f"{uri}@{rev}")
