"""The repository's container images, built for real, and a small kubelet-like runner for them.

``ensure_images()`` runs ``scripts/tools.d/50-images.sh`` (``make images``; a no-op when the tree is
unchanged) and returns the tags of ``kubetune-operator:dev`` and ``kubetune-trainer:dev``. Everything then
goes through ``.tools/bin/kt-buildah`` (buildah on kubetune's own image storage).

Running a pod's container from an image (:func:`pod_container`): the pieces a kubelet puts together from
the pod spec, translated to ``buildah run --isolation chroot``:

- the command: ``command``/``args`` against the image's ENTRYPOINT/CMD, with Kubernetes' rules;
- the user: the container's then the pod's ``runAsUser``/``runAsGroup``, else the image's USER;
- the env: ``envFrom`` (Secrets, ConfigMaps) then ``env`` (values, ``$(VAR)`` references, ``fieldRef``,
  ``secretKeyRef``, ``configMapKeyRef``), on top of the image's ENV (``env K=V … cmd`` inside the container:
  no shell and no ``$`` expansion on the way);
- the volumes: ConfigMap and Secret volumes written out as files (read-only), ``emptyDir`` as a host folder
  owned by ``fsGroup``, a PVC as a host folder, the termination message file as a host file bind-mounted at
  ``terminationMessagePath`` and read back after the exit like the kubelet does. An ``emptyDir`` with
  ``medium: Memory`` at ``/dev/shm`` cannot be mounted: chroot isolation binds the host's ``/dev`` (with its
  ``/dev/shm``, world-writable and sticky) over it, so the container shares the host's shared memory and the
  volume's ``sizeLimit`` is not enforced. For the same reason a ``terminationMessagePath`` under ``/dev`` (the
  default ``/dev/termination-log``) is mounted at ``/run/<name>`` and env values naming it are pointed there
  (the trainer takes the path from ``KUBETUNE_TERMINATION_LOG``, which the Job sets to it);
- a read-only root filesystem (``readOnlyRootFilesystem``, or forced by the caller): buildah run has no flag
  for it (and remounting the storage's mount read-only breaks buildah run, which creates its mount points in
  it), so the container starts :data:`READ_ONLY_SHIM` as root with ``CAP_SYS_ADMIN``: in the container's own
  mount namespace it remounts ``/`` read-only (the volumes stay as mounted), empties the capability bounding
  set, sets ``no_new_privs`` (``allowPrivilegeEscalation: false``) and drops to the pod's uid/gid before it
  execs the command: the process runs with no capabilities at all, like ``capabilities: drop: [ALL]``;
- the network: the host's (``--network host``; chroot isolation has no network namespace of its own).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
SCRIPT = ROOT / "scripts" / "tools.d" / "50-images.sh"
KT_BUILDAH = TOOLS / "bin" / "kt-buildah"
ENV_FILE = TOOLS / "images.env"
BUILD_ARGS = TOOLS / "images.buildargs"
"""The --build-arg values of the CPU variant, one a line."""
RUN_PREFIX = "kt-run-"
"""Names of the working containers the tests create (the tools step leaves them alone)."""


READ_ONLY_SHIM = """
import ctypes, os, pwd, subprocess, sys
uid, gid, home, argv = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
subprocess.run(["mount", "-o", "remount,bind,ro", "/"], check=True)
libc = ctypes.CDLL(None, use_errno=True)
cap = 0
while libc.prctl(24, cap, 0, 0, 0) == 0:  # PR_CAPBSET_DROP until EINVAL: an empty bounding set
    cap += 1
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: allowPrivilegeEscalation false
    sys.exit("no_new_privs failed")
os.setgroups([])
os.setgid(gid)
os.setuid(uid)  # all uids non-zero: permitted and effective capabilities are cleared
if home == "passwd":
    try:
        os.environ["HOME"] = pwd.getpwuid(uid).pw_dir
    except KeyError:
        os.environ["HOME"] = "/"
os.execvp(argv[0], argv)
"""
"""Runs inside the container for a read-only root (argv: uid gid keep|passwd command...)."""


class ImagesUnavailable(RuntimeError):
    """The images could not be built; the message carries the build's last lines."""


@dataclass(frozen=True)
class BuiltImages:
    operator: str
    trainer: str
    driver: str
    hash: str
    log: str


def ensure_images(timeout: float = 5400) -> BuiltImages:
    """Build (or reuse) both images with the tools step `make images` runs. ``KUBETUNE_IMAGES_SKIP_BUILD=1``
    takes the images the last build recorded as they are (to iterate on a test while a build runs)."""
    if os.environ.get("KUBETUNE_IMAGES_SKIP_BUILD") == "1" and ENV_FILE.exists():
        env = dict(line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
        return BuiltImages(
            operator=env["KUBETUNE_OPERATOR_IMAGE"],
            trainer=env["KUBETUNE_TRAINER_IMAGE"],
            driver=env["KUBETUNE_IMAGES_DRIVER"],
            hash=env["KUBETUNE_IMAGES_HASH"],
            log="",
        )
    proc = subprocess.run(
        ["bash", str(SCRIPT), str(TOOLS)], cwd=ROOT, capture_output=True, text=True, check=False, timeout=timeout
    )
    if proc.returncode != 0 or not ENV_FILE.exists():
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise ImagesUnavailable(f"scripts/tools.d/50-images.sh failed (exit {proc.returncode}):\n{tail}")
    env = dict(line.split("=", 1) for line in ENV_FILE.read_text().splitlines() if "=" in line)
    return BuiltImages(
        operator=env["KUBETUNE_OPERATOR_IMAGE"],
        trainer=env["KUBETUNE_TRAINER_IMAGE"],
        driver=env["KUBETUNE_IMAGES_DRIVER"],
        hash=env["KUBETUNE_IMAGES_HASH"],
        log=proc.stderr,
    )


def buildah(
    *args: str, check: bool = True, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(KT_BUILDAH), *args], capture_output=True, text=True, check=False, timeout=timeout, input=input
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"buildah {shlex.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return proc


def image_config(image: str) -> dict[str, Any]:
    """The OCI image config (``config``: User, Entrypoint, Cmd, Env, WorkingDir, Labels, ExposedPorts)."""
    data = json.loads(buildah("inspect", "--type", "image", image).stdout)
    return data["OCIv1"]


def image_size(image: str) -> int:
    """Bytes of the image's layers (uncompressed tar streams, as the image manifest lists them)."""
    data = json.loads(buildah("inspect", "--type", "image", image).stdout)
    manifest = json.loads(data["Manifest"])
    return sum(int(layer["size"]) for layer in manifest["layers"])


def human(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


# ------------------------------------------------------------------------------------------ one container


@dataclass(frozen=True)
class Mount:
    """A host path bind-mounted at ``target``."""

    target: str
    source: Path
    read_only: bool = False

    def flag(self) -> str:
        return f"type=bind,source={self.source},destination={self.target},{'ro' if self.read_only else 'rw'}"


@dataclass
class Container:
    """One working container of ``image``, ready to run ``argv`` (the caller runs it, sync or async)."""

    image: str
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    mounts: list[Mount] = field(default_factory=list)
    user: str | None = None
    workdir: str | None = None
    read_only_root: bool = False
    network: str = "host"
    name: str = field(default_factory=lambda: f"{RUN_PREFIX}{uuid.uuid4().hex[:10]}")
    _created: bool = False

    def create(self) -> Self:
        buildah("from", "--pull-never", "--name", self.name, self.image)
        self._created = True
        # buildah resolves a symlink on a mount's way (Debian's /var/run -> /run) against the host, not the
        # image: resolve the targets in the image's root first.
        rootfs = Path(buildah("mount", self.name).stdout.strip())
        try:
            self.mounts = [Mount(resolve_in_root(rootfs, m.target), m.source, m.read_only) for m in self.mounts]
        finally:
            buildah("umount", self.name, check=False)
        return self

    def argv(self) -> list[str]:
        flags = ["--isolation", "chroot", "--network", self.network]
        if self.workdir:
            flags += ["--workingdir", self.workdir]
        for m in self.mounts:
            flags += ["--mount", m.flag()]
        env = [f"{k}={v}" for k, v in self.env.items()]
        if not self.read_only_root:
            if self.user:
                flags += ["--user", self.user]
            return [str(KT_BUILDAH), "run", *flags, self.name, "--", "env", *env, *self.command]
        # buildah run has no read-only root: the shim starts as root with CAP_SYS_ADMIN in the container's own
        # mount namespace, remounts / read-only, then drops to the user with no capabilities left.
        uid, _, gid = (self.user or self._image_user()).partition(":")
        flags += ["--user", "0:0", "--cap-add", "CAP_SYS_ADMIN"]
        home = "keep" if "HOME" in self.env or self._image_sets_home() else "passwd"
        return [
            str(KT_BUILDAH),
            "run",
            *flags,
            self.name,
            "--",
            "env",
            *env,
            "python3",
            "-c",
            READ_ONLY_SHIM,
            uid,
            gid or uid,
            home,
            *self.command,
        ]

    def _image_user(self) -> str:
        user = image_config(self.image)["config"].get("User") or "0"
        assert re.fullmatch(r"\d+(:\d+)?", user), f"{self.image}: USER {user!r} is not numeric"
        return user

    def _image_sets_home(self) -> bool:
        return any(e.startswith("HOME=") for e in image_config(self.image)["config"].get("Env") or [])

    def run(self, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        for attempt in range(1, START_ATTEMPTS + 1):
            proc = subprocess.run(self.argv(), capture_output=True, text=True, check=False, timeout=timeout)
            if proc.returncode == 0 or not runtime_start_failed(proc.stderr) or attempt == START_ATTEMPTS:
                return proc
        raise AssertionError("unreachable")

    def popen(self, log: Path, started_within: float = 60) -> subprocess.Popen[bytes]:
        """Started in its own process group: :meth:`stop` signals the group (buildah and the container).
        Returns once the container's own process runs (or buildah has ended); a start that buildah's runtime
        itself failed (:func:`runtime_start_failed`, before the image's command ran) is tried again."""
        for attempt in range(1, START_ATTEMPTS + 1):
            with log.open("wb") as out:
                proc = subprocess.Popen(self.argv(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            deadline = time.monotonic() + started_within
            while proc.poll() is None and not container_processes(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if proc.poll() is None or attempt == START_ATTEMPTS:
                return proc
            if not runtime_start_failed(log.read_text(errors="replace")):
                return proc
        raise AssertionError("unreachable")

    @staticmethod
    def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> int:
        """Like the kubelet: SIGTERM to the container's process (not to buildah, which would kill it at once),
        then after ``timeout`` SIGKILL to the whole process group."""
        if proc.poll() is None:
            for pid in container_processes(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
        return proc.returncode

    def remove(self) -> None:
        if self._created:
            buildah("rm", self.name, check=False)
            self._created = False

    def __enter__(self) -> Self:
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.remove()


START_ATTEMPTS = 3
RUNTIME_START_FAILURES = ("sealing memfd copy",)
"""What buildah's runtime prints when it failed before the container's command ran: its re-exec copies
itself into a sealed memfd, and sealing can fail with EBUSY while the kernel still holds a page of the copy
(seen once in CI under load). Nothing of the image ran, so trying again is what a kubelet would do."""


def runtime_start_failed(output: str) -> bool:
    return any(line in output for line in RUNTIME_START_FAILURES)


def container_processes(group: int) -> list[int]:
    """The processes of process group ``group`` (a :meth:`Container.popen`) that are not buildah itself: the
    container's main process (and anything it started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            exe = os.readlink(stat.parent / "exe")
        except OSError:
            continue
        if int(fields[2]) == group and "buildah" not in Path(exe).name:
            found.append(int(stat.parent.name))
    return found


def resolve_in_root(root: Path, path: str, depth: int = 0) -> str:
    """``path`` inside the tree at ``root`` with every symlink on the way resolved as the container sees it."""
    assert depth < 40, f"too many symlinks resolving {path}"
    parts = [p for p in path.split("/") if p not in ("", ".")]
    done: list[str] = []
    for i, part in enumerate(parts):
        if part == "..":
            if done:
                done.pop()
            continue
        here = root.joinpath(*done, part)
        if here.is_symlink():
            link = os.readlink(here)
            base = "/" if link.startswith("/") else "/" + "/".join(done)
            rest = "/".join(parts[i + 1 :])
            return resolve_in_root(root, f"{base.rstrip('/')}/{link.lstrip('/')}/{rest}".rstrip("/"), depth + 1)
        done.append(part)
    return "/" + "/".join(done)


@contextlib.contextmanager
def container(image: str, command: list[str], **kw: Any) -> Iterator[Container]:
    with Container(image, command, **kw) as ctr:
        yield ctr


# ------------------------------------------------------------------------------------------ from a pod spec

Lookup = Callable[[str], dict[str, str]]
"""name -> data of a ConfigMap or a Secret (decoded), in the pod's namespace; KeyError when it is absent."""


def pod_command(container: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """Kubernetes' rules: ``command`` replaces ENTRYPOINT (and drops CMD); ``args`` replaces CMD."""
    entrypoint = list(config.get("config", {}).get("Entrypoint") or [])
    cmd = list(config.get("config", {}).get("Cmd") or [])
    if container.get("command"):
        return [*container["command"], *(container.get("args") or [])]
    return [*entrypoint, *(container.get("args") if container.get("args") is not None else cmd)]


def _field(pod: dict[str, Any], path: str) -> str:
    meta = pod.get("metadata") or {}
    m = re.fullmatch(r"metadata\.(annotations|labels)\['([^']+)'\]", path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "spec.serviceAccountName": (pod.get("spec") or {}).get("serviceAccountName"),
        "status.podIP": (pod.get("status") or {}).get("podIP"),
        "status.hostIP": (pod.get("status") or {}).get("hostIP"),
    }
    assert path in simple, f"fieldRef {path} is not supported by this runner"
    return str(simple[path] or "")


def _expand(value: str, env: dict[str, str]) -> str:
    """``$(VAR)`` from the variables defined before; ``$$(VAR)`` stays literal; unknown ones stay as written."""
    return re.sub(
        r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
        lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)),
        value,
    )


def pod_env(pod: dict[str, Any], container: dict[str, Any], configmaps: Lookup, secrets: Lookup) -> dict[str, str]:
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        ref = src.get("secretRef") or src.get("configMapRef") or {}
        lookup = secrets if "secretRef" in src else configmaps
        try:
            data = lookup(ref["name"])
        except KeyError:
            if ref.get("optional"):
                continue
            raise
        env.update({f"{src.get('prefix', '')}{k}": v for k, v in data.items()})
    for e in container.get("env") or []:
        if "value" in e or "valueFrom" not in e:
            env[e["name"]] = _expand(e.get("value", ""), env)
            continue
        vf = e["valueFrom"]
        if "fieldRef" in vf:
            env[e["name"]] = _field(pod, vf["fieldRef"]["fieldPath"])
        elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
            ref = vf.get("secretKeyRef") or vf["configMapKeyRef"]
            lookup = secrets if "secretKeyRef" in vf else configmaps
            try:
                env[e["name"]] = lookup(ref["name"])[ref["key"]]
            except KeyError:
                if not ref.get("optional"):
                    raise
        else:
            raise AssertionError(f"env {e['name']}: {sorted(vf)} is not supported by this runner")
    return env


def _user(pod: dict[str, Any], container: dict[str, Any]) -> tuple[int | None, int | None]:
    pod_sc = (pod.get("spec") or {}).get("securityContext") or {}
    ctr_sc = container.get("securityContext") or {}
    uid = ctr_sc.get("runAsUser", pod_sc.get("runAsUser"))
    gid = ctr_sc.get("runAsGroup", pod_sc.get("runAsGroup"))
    return uid, gid


def _write_files(
    folder: Path, data: dict[str, str], items: list[dict[str, Any]] | None, owner: tuple[int, int] | None
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
    for key, rel in pairs:
        path = folder / rel
        assert path.resolve().is_relative_to(folder.resolve()), f"volume item path {rel!r} leaves the volume"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(data[key], encoding="utf-8")
        path.chmod(0o644)


def _own(path: Path, owner: tuple[int, int] | None) -> None:
    if owner is not None and owner[0] is not None:
        os.chown(path, owner[0], owner[1] if owner[1] is not None else owner[0])


def pod_mounts(
    pod: dict[str, Any],
    container: dict[str, Any],
    workdir: Path,
    configmaps: Lookup,
    secrets: Lookup,
    pvcs: Callable[[str], Path] | None = None,
) -> tuple[list[Mount], Path]:
    """Host folders for the container's volume mounts, and the termination message file (host side)."""
    spec = pod.get("spec") or {}
    sc = spec.get("securityContext") or {}
    uid, gid = _user(pod, container)
    fs_group = sc.get("fsGroup")
    owner = (uid, fs_group if fs_group is not None else gid) if uid is not None else None
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    mounts: list[Mount] = []
    for vm in container.get("volumeMounts") or []:
        vol = volumes[vm["name"]]
        host = workdir / "volumes" / vm["name"]
        ro = bool(vm.get("readOnly"))
        if "configMap" in vol or "secret" in vol:
            src = vol.get("configMap") or vol["secret"]
            name = src.get("name") or src.get("secretName")
            try:
                data = (configmaps if "configMap" in vol else secrets)(name)
            except KeyError:
                if not src.get("optional"):
                    raise
                data = {}
            if not host.exists():
                _write_files(host, data, src.get("items"), owner)
            ro = True
        elif "emptyDir" in vol:
            ed = vol["emptyDir"] or {}
            if ed.get("medium") == "Memory" and vm["mountPath"] == "/dev/shm":
                # chroot isolation binds the host's /dev (and its /dev/shm) over anything mounted there: the
                # container gets the host's shared memory, without the volume's sizeLimit.
                continue
            host.mkdir(parents=True, exist_ok=True)
            _own(host, owner)
        elif "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"]["claimName"]
            host = pvcs(claim) if pvcs else workdir / "pvc" / claim
            host.mkdir(parents=True, exist_ok=True)
            _own(host, owner)
            ro = ro or bool(vol["persistentVolumeClaim"].get("readOnly"))
        else:
            raise AssertionError(f"volume {vm['name']}: {sorted(vol)} is not supported by this runner")
        if vm.get("subPath"):
            host = host / vm["subPath"]
        mounts.append(Mount(vm["mountPath"], host, ro))
    term = workdir / "termination-log"
    term.parent.mkdir(parents=True, exist_ok=True)
    term.write_text("")
    _own(term, owner)
    mounts.append(Mount(termination_target(container), term, False))
    return mounts, term


def termination_target(container: dict[str, Any]) -> str:
    """Where the termination message file is mounted: ``terminationMessagePath``, except under ``/dev``, which
    chroot isolation binds read-only from the host over any mount there: then ``/run/<name>`` (and
    :func:`pod_container` points env values naming the original path there)."""
    path = container.get("terminationMessagePath") or "/dev/termination-log"
    return f"/run/{Path(path).name}" if path.startswith("/dev/") else path


def pod_container(
    pod: dict[str, Any],
    image: str,
    workdir: Path,
    configmaps: Lookup,
    secrets: Lookup,
    read_only_root: bool | None = None,
    extra_env: dict[str, str] | None = None,
    pvcs: Callable[[str], Path] | None = None,
) -> tuple[Container, Path]:
    """The first container of ``pod`` as a :class:`Container` from ``image`` (not yet created), and the host
    file that receives its termination message."""
    container = pod["spec"]["containers"][0]
    config = image_config(image)
    mounts, term = pod_mounts(pod, container, workdir, configmaps, secrets, pvcs)
    uid, gid = _user(pod, container)
    user = None if uid is None else f"{uid}:{gid if gid is not None else uid}"
    if read_only_root is None:
        read_only_root = bool((container.get("securityContext") or {}).get("readOnlyRootFilesystem"))
    env = {**pod_env(pod, container, configmaps, secrets), **(extra_env or {})}
    original = container.get("terminationMessagePath") or "/dev/termination-log"
    env = {k: termination_target(container) if v == original else v for k, v in env.items()}
    ctr = Container(
        image,
        pod_command(container, config),
        env=env,
        mounts=mounts,
        user=user,
        workdir=container.get("workingDir"),
        read_only_root=read_only_root,
    )
    return ctr, term


def termination_message(term: Path, log: str, exit_code: int, policy: str | None) -> str:
    """What the kubelet writes into ``state.terminated.message``: the file, or with ``FallbackToLogsOnError``
    and an empty file after a failure, the log's last 80 lines (at most 2048 bytes)."""
    message = term.read_text(errors="replace") if term.exists() else ""
    if not message.strip() and exit_code != 0 and policy == "FallbackToLogsOnError":
        message = "\n".join(log.splitlines()[-80:])[-2048:]
    return message[:4096]


# ------------------------------------------------------------------------------------------ a kubelet for images


def image_kubelet_class() -> type:
    """:class:`tests.harness.processkubelet.ProcessKubelet` whose containers run from their pod's ``image``
    (which must be in kubetune's image storage, like ``imagePullPolicy: Never``) with :func:`pod_container`:
    the image's entrypoint and user unless the pod overrides them, the pod's env and mounts, and the
    termination message read back from the host file bound at ``terminationMessagePath``. Imported lazily:
    the real control plane's harness is only needed here."""
    from tests.harness.processkubelet import ProcessKubelet

    class ImageKubelet(ProcessKubelet):
        def __init__(self, *args: Any, read_only_root: bool | None = None, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.read_only_root = read_only_root
            self.containers: dict[str, Container] = {}

        def _run(self, pod: dict[str, Any]) -> subprocess.Popen[bytes]:
            meta, spec = pod["metadata"], pod["spec"]
            ns, key = meta["namespace"], self._key(pod)
            root = self.workdir / meta["name"]
            image = spec["containers"][0]["image"]
            if buildah("inspect", "--type", "image", image, check=False).returncode != 0:
                raise RuntimeError(f'image "{image}" is not in the node\'s image storage (ErrImageNeverPull)')
            running = {
                **pod,
                "spec": {**spec, "nodeName": self.node},
                "status": {**(pod.get("status") or {}), "podIP": self.pod_ip, "hostIP": self.pod_ip},
            }

            def lookup(read: Callable[[str, str], dict[str, str]]) -> Lookup:
                def get(name: str) -> dict[str, str]:
                    try:
                        return read(ns, name)
                    except RuntimeError as exc:  # the base class's "not found"
                        raise KeyError(name) from exc

                return get

            ctr, term = pod_container(
                running,
                image,
                root,
                lookup(self._configmap),
                lookup(self._secret),
                read_only_root=self.read_only_root,
                extra_env=self.extra_env,
                pvcs=lambda claim: self.workdir / "pvc" / claim,
            )
            ctr.create()
            self.containers[key] = ctr
            log = root / "container.log"
            self.logs[key], self._term_files[key] = log, term
            return ctr.popen(log)

        def stop(self) -> None:
            super().stop()
            for ctr in self.containers.values():
                ctr.remove()
            self.containers.clear()

    return ImageKubelet
