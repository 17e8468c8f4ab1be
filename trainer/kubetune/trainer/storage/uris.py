"""URI parsing shared by fetch and publish: one line, never a traceback, for a malformed URI."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from kubetune.api.names import dns_subdomain_problem
from kubetune.api.redact import redact
from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.paths import contained

# The operator mounts claim <c> of a pvc:// URI at PVC_ROOT/<c> (kubetune.operator.manifests.job.PVC_ROOT).
PVC_ROOT = "/mnt/pvc"
# Schemes whose first segment names a bucket, claim or ConfigMap: it must be there (``s3:///key`` names none).
_NAMED_FIRST = ("s3", "pvc", "configmap")


def _shown(uri: str) -> str:
    text = redact(uri)
    return repr(text if len(text) <= 200 else text[:197] + "...")


@dataclass(frozen=True)
class Uri:
    scheme: str
    rest: str

    @classmethod
    def parse(cls, uri: str, *, field: str = "") -> Uri:
        where = f"{field}: " if field else ""
        if not isinstance(uri, str) or "://" not in uri:
            raise ConfigError(f"{where}{_shown(str(uri))} is not a URI (expected scheme://...)")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in uri):
            raise ConfigError(f"{where}URI {_shown(uri)} contains a control character (NUL, newline ...); remove it")
        scheme, rest = uri.split("://", 1)
        parsed = cls(scheme.lower(), rest)
        if parsed.scheme in _NAMED_FIRST and not parsed.bucket:
            raise ConfigError(
                f"{where}URI {_shown(uri)} names no {'bucket' if scheme == 's3' else 'name'} "
                f"(expected {scheme}://<name>/...)"
            )
        return parsed

    @property
    def bucket(self) -> str:
        return self.rest.split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.rest.split("/", 1)[1] if "/" in self.rest else ""

    def __str__(self) -> str:
        return f"{self.scheme}://{self.rest}"


def file_path(uri: str, work_dir: str | Path = ".") -> Path:
    """The local path of a file:// URI; relative paths resolve against ``work_dir``.

    ``file:///abs/path`` is absolute; ``file://rel/path`` and ``file://./rel`` are relative.
    """
    parsed = Uri.parse(uri)
    if parsed.scheme != "file":
        raise ConfigError(f"{_shown(uri)} is not a file:// URI")
    path = Path(unquote(parsed.rest)).expanduser()
    return path if path.is_absolute() else (Path(work_dir) / path).resolve()


def pvc_path(uri: str, *, field: str = "") -> Path:
    """The local path of ``pvc://<claim>/<path>``: inside the claim's mount, never outside it.

    An absolute remainder (``pvc://c//etc``), ``..``, or a symlink on the claim that leads out is refused.
    """
    parsed = Uri.parse(uri, field=field)
    where = f"{field}: " if field else ""
    problem = dns_subdomain_problem(parsed.bucket)
    if problem:
        raise ConfigError(f"{where}{_shown(uri)}: the claim name {problem}")
    mount = Path(PVC_ROOT) / parsed.bucket
    rel = parsed.key.rstrip("/")
    if not rel:
        return mount.resolve()
    return contained(mount, rel, what=f"{where}{_shown(uri)}: the path")


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])
