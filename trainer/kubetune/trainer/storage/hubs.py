"""Model hubs: fetch from the Hugging Face Hub (``hf://``) and ModelScope (``ms://``); push to the HF Hub.

``hf://org/name``: the revision (branch, tag or commit; default ``main``) is resolved to its commit
first, the snapshot of that commit is downloaded into the cache once per node, and the commit is
written to ``<folder>/.kubetune-revision`` (the model loader records it in the manifest). The token
is ``$HF_TOKEN`` (the operator maps it from ``credentialsSecret``); ``$HF_ENDPOINT`` selects a mirror.

``ms://org/name`` uses the ``modelscope`` package (``$MODELSCOPE_API_TOKEN``, ``$MODELSCOPE_ENDPOINT``);
the requested revision (default ``master``) is recorded as given.

Before any hub call the endpoint passes the URL guard and a short reachability probe, so a pod
without network fails at once with a message naming the field, not after minutes of retries.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.logging import get_logger
from kubetune.trainer.storage.cache import REVISION, cache_key, cached, safe_name
from kubetune.trainer.storage.guard import check_url, guard_hub
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
        return ConfigError(f"{field}: {repo} is gated; accept its terms on the Hub and give a token (HF_TOKEN in "
                           "credentialsSecret) of an account that has access")
    if isinstance(exc, errors.RevisionNotFoundError):
        return ConfigError(f"{field}: revision {revision!r} does not exist in {repo} (spec.model.revision)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return ConfigError(f"{field}: repository {repo} not found on {hf_endpoint()}, or it is private and "
                           "HF_TOKEN (credentialsSecret) is missing or lacks access")
    if isinstance(exc, errors.HfHubHTTPError):
        return ConfigError(f"{field}: the Hugging Face Hub refused {repo}: {exc}")
    return ConfigError(f"{field}: the Hugging Face Hub at {hf_endpoint()} is unreachable or failed for {repo} "
                       f"({exc.__class__.__name__}: {exc})")


def fetch_hf(uri: str, *, cache_dir: Path, field: str, kind: str = "model", revision: str | None = None,
             allow: Iterable[str] = (), dataset: Any = None, **_: object) -> Path:
    repo = _repo(uri, field)
    endpoint = hf_endpoint()
    guard_hub(endpoint, field=field, allow=allow)  # checked, and every Hub connection pinned to checked addresses
    repo_type = "dataset" if kind == "dataset" else "model"
    token = os.environ.get("HF_TOKEN") or None
    folder = getattr(dataset, "folder", None)
    probe(endpoint, field=field, hub="the Hugging Face Hub", env="HF_ENDPOINT")
    from huggingface_hub import HfApi, snapshot_download

    try:
        commit = HfApi(endpoint=endpoint, token=token).repo_info(repo, repo_type=repo_type, revision=revision).sha
    except Exception as exc:  # noqa: BLE001 - mapped to a message naming the field
        raise _hf_problem(field, repo, revision, exc) from None
    if not commit:
        raise ConfigError(f"{field}: the Hub did not resolve revision {revision or 'main'!r} of {repo} to a commit")
    target = cache_dir / f"{kind}s" / f"hf-{safe_name(repo)}-{commit[:12]}-{cache_key(endpoint, repo, commit, folder or '')}"

    def download(tmp: Path) -> None:
        log.info("downloading %s@%s (%s) from %s", repo, revision or "main", commit, endpoint)
        try:
            snapshot_download(repo, repo_type=repo_type, revision=commit, local_dir=tmp, token=token,
                              endpoint=endpoint, allow_patterns=[f"{folder.strip('/')}/*"] if folder else None)
        except Exception as exc:  # noqa: BLE001
            raise _hf_problem(field, repo, revision, exc) from None
        shutil.rmtree(tmp / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping
        (tmp / REVISION).write_text(commit + "\n", encoding="utf-8")

    path = cached(target, download, marker=f"{uri}@{commit}")
    return path / folder.strip("/") if folder else path


def push_to_hub(local: Path, *, repo: str, private: bool, allow: Iterable[str] = (),
                field: str = "spec.output.hub") -> str:
    """Upload an artifact folder to a Hub model repository; return the commit URL."""
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise ConfigError(f"{field}.credentialsSecret: HF_TOKEN is not set; the Secret must have an HF_TOKEN key "
                          "with a write token")
    endpoint = hf_endpoint()
    guard_hub(endpoint, field=field, allow=allow)
    probe(endpoint, field=field, hub="the Hugging Face Hub", env="HF_ENDPOINT")
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
        info = api.upload_folder(folder_path=str(local), repo_id=repo, repo_type="model",
                                 commit_message="kubetune: upload fine-tuned adapter")
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{field}.repo: pushing to {repo} on {endpoint} failed ({exc.__class__.__name__}: "
                          f"{exc}); check the token has write access") from None
    return str(getattr(info, "commit_url", info))


# --------------------------------------------------------------------------------------------------- ModelScope


def fetch_ms(uri: str, *, cache_dir: Path, field: str, kind: str = "model", revision: str | None = None,
             allow: Iterable[str] = (), **_: object) -> Path:
    repo = _repo(uri, field)
    endpoint = ms_endpoint()
    check_url(endpoint, field=field, allow=allow, what="ModelScope")
    try:
        from modelscope import snapshot_download
    except ImportError:
        raise ConfigError(f"{field}: ms:// sources need the modelscope package: pip install modelscope "
                          "(the kubetune trainer image includes it)") from None
    rev = revision or "master"
    probe(endpoint, field=field, hub="ModelScope", env="MODELSCOPE_ENDPOINT")
    target = cache_dir / f"{kind}s" / f"ms-{safe_name(repo)}-{cache_key(endpoint, repo, rev)}"

    def download(tmp: Path) -> None:
        try:
            snapshot_download(repo, revision=rev, local_dir=str(tmp), endpoint=endpoint,
                              token=os.environ.get("MODELSCOPE_API_TOKEN") or None,
                              repo_type="dataset" if kind == "dataset" else "model")
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{field}: ModelScope download of {repo}@{rev} from {endpoint} failed "
                              f"({exc.__class__.__name__}: {exc})") from None
        (tmp / REVISION).write_text(rev + "\n", encoding="utf-8")

    return cached(target, download, marker=f"{uri}@{rev}")
