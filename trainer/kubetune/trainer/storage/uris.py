"""URI parsing shared by fetch and publish."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from kubetune.trainer.errors import ConfigError


@dataclass(frozen=True)
class Uri:
    scheme: str
    rest: str

    @classmethod
    def parse(cls, uri: str) -> Uri:
        if "://" not in uri:
            raise ConfigError(f"{uri!r} is not a URI (expected scheme://...)")
        scheme, rest = uri.split("://", 1)
        return cls(scheme, rest)

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
        raise ConfigError(f"{uri!r} is not a file:// URI")
    path = Path(unquote(parsed.rest)).expanduser()
    return path if path.is_absolute() else (Path(work_dir) / path).resolve()


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])
