"""Path containment: the one place that turns an untrusted relative name into a local path.

Every download, extraction, restore and publish that joins a name it did not choose (an S3 key
remainder, a Hub file name, a manifest entry, the path of a ``pvc://`` or ``configmap://`` URI)
goes through :func:`contained`, which refuses anything that is not strictly inside its
destination once resolved: absolute remainders (``prefix//etc/passwd``), ``..``, empty or ``.``
components, NUL and control characters, Windows drives and backslashes, and symlinks (existing
ones, in the destination or in the name) that lead out.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath, PureWindowsPath

from kubetune.trainer.errors import ConfigError


class UnsafePath(ConfigError):
    """A name would land outside its destination (or is not a plain relative name)."""


def _problem(rel: str) -> str | None:
    if not rel:
        return "is empty"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in rel):
        return "contains a NUL or control character"
    if "\\" in rel:
        return "contains a backslash (Windows separators are not allowed)"
    if rel.startswith("/"):
        return "is absolute"
    if PureWindowsPath(rel).drive or (len(rel) >= 2 and rel[1] == ":" and rel[0].isalpha()):
        return "names a Windows drive"
    parts = rel.split("/")
    if parts and parts[-1] == "":
        parts = parts[:-1]  # a trailing slash names the same folder
    if any(part == "" for part in parts):
        return "has an empty component (//)"
    if any(part in (".", "..") for part in parts):
        return "has a '.' or '..' component"
    return None


def check_relative(rel: str | PurePosixPath, *, what: str = "path") -> str:
    """Return ``rel`` as a POSIX string when it is a plain relative name; UnsafePath otherwise (no filesystem use)."""
    text = rel.as_posix() if isinstance(rel, PurePosixPath) else str(rel)
    problem = _problem(text)
    if problem:
        raise UnsafePath(f"{what} {text!r} {problem}; refusing it (it must stay inside its destination)")
    return text


def contained(
    dest: str | os.PathLike[str], rel: str | PurePosixPath, *, what: str = "path", symlinks: bool = True
) -> Path:
    """``dest / rel``, resolved, when it lies strictly inside ``dest`` (symlinks followed); UnsafePath otherwise.

    ``dest`` is resolved too, so a destination reached through a symlink is fine; a link *inside* it
    that points elsewhere is not. With ``symlinks=False`` any symlink on the way (even one that stays
    inside) is refused. The result is the resolved path to read or write.
    """
    text = check_relative(rel, what=what)
    root = Path(dest).resolve()
    lexical = root.joinpath(*text.rstrip("/").split("/"))
    target = lexical.resolve()
    if target == root or not target.is_relative_to(root):
        raise UnsafePath(f"{what} {text!r} resolves to {target}, outside {root}; refusing it")
    if not symlinks and target != lexical:
        raise UnsafePath(f"{what} {text!r} goes through a symlink (to {target}); refusing it")
    return target


def regular_file(path: Path, *, what: str = "path") -> Path:
    """``path`` when it is an existing regular file reached without a symlink at its end; UnsafePath otherwise.

    Reading a device (``/dev/zero``), a FIFO or a socket could block or never end.
    """
    mode = path.lstat().st_mode  # FileNotFoundError when it is missing: the caller reports that
    if stat.S_ISLNK(mode):
        raise UnsafePath(f"{what} {path} is a symlink; refusing it")
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise UnsafePath(f"{what} {path} is {kind}; refusing it")
    return path


def links_stay_inside(root: Path, within: str | os.PathLike[str], *, what: str = "path") -> Path:
    """``root`` when no symlink under it (``root`` itself included) leads outside ``within``; UnsafePath otherwise.

    A model folder read from a shared volume may hold links planted by someone else (``tokenizer.json ->
    /var/run/secrets/...``); they must stay on the volume.
    """
    bound = Path(within).resolve()
    for folder, dirs, names in os.walk(root, followlinks=False):
        for name in [*dirs, *names]:
            entry = Path(folder) / name
            if entry.is_symlink() and not entry.resolve().is_relative_to(bound):
                raise UnsafePath(f"{what} {entry} is a symlink to {entry.resolve()}, outside {bound}; refusing it")
    return root
