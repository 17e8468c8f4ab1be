"""Two "nodes" as Linux network namespaces joined by one veth pair, each running `kubetune-train` as a pod does.

Each node gets what a pod of the Indexed Job gets and nothing more:

- its own network stack (``ip netns``): loopback plus one interface ``eth0`` with its own address on a
  /24 that only the two nodes share. There is no default route, so nothing inside can reach any
  address outside the two namespaces this module made (the test checks the routing table);
- its own hostname (``unshare --uts``) and an ``/etc/hosts`` that resolves the pod names, as the
  kubelet writes it: ``<job>-<i>`` and the headless-Service name of rank 0 (``MASTER_ADDR``);
- its own scratch disk: a per-node folder bind-mounted over the trainer's scratch path inside the
  node's mount namespace (``ip netns exec`` makes one), as each pod has its own emptyDir;
- the environment the operator renders for the pod (``manifests.job.build_job``), with
  ``NODE_RANK`` resolved from the completion index the way the downward API does.

All processes of a node are the processes in its namespace (``ip netns pids``), which is how a node
"dies" here: every one of them gets SIGKILL. The namespaces and links are removed on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

SUBNET = "10.244.7"  # the pod network of this two-node "cluster"; reachable only from its two namespaces
TRAIN = Path(sys.executable).with_name("kubetune-train")


def netns_unavailable() -> str | None:
    """Why two network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "multi-node tests make network namespaces with `ip netns`: they need root"
    for tool in ("ip", "unshare", "mount", "hostname"):
        if shutil.which(tool) is None:
            return f"multi-node tests need `{tool}` (iproute2 / util-linux)"
    return None


def _ip(*args: str) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def pod_env(job_doc: Any, index: int, **overrides: str) -> dict[str, str]:
    """The trainer container's environment as the operator renders it, for completion index ``index``."""
    from kubetune.operator.manifests import BuildOptions
    from kubetune.operator.manifests.job import COMPLETION_INDEX_ANNOTATION, build_job

    job = build_job(job_doc, BuildOptions())
    env: dict[str, str] = {}
    for var in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            path = var["valueFrom"]["fieldRef"]["fieldPath"]
            assert COMPLETION_INDEX_ANNOTATION in path, var  # the only downward-API field the pod reads
            env[var["name"]] = str(index)
    env.update(overrides)
    return env


@dataclass
class Node:
    index: int
    netns: str
    address: str
    hostname: str
    root: Path  # this node's own files: scratch disk, /etc/hosts, HOME, termination log, logs
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def termination_log(self) -> Path:
        return self.root / "termination-log"

    def log(self, attempt: int | None = None) -> str:
        n = len(self.procs) if attempt is None else attempt
        path = self.root / f"train-{n}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        return [int(p) for p in _ip("netns", "pids", self.netns).split()]

    def kill(self) -> None:
        """The node dies: SIGKILL to every process in its namespace (workers, launcher, anything else)."""
        for _ in range(20):
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.netns}: processes survive SIGKILL: {self.pids()}")


class TwoNodes:
    """``with TwoNodes(tmp_path, hostnames) as nodes:`` two namespaces, one veth pair, removed on exit."""

    def __init__(self, root: Path, hostnames: dict[str, int], names: list[str]) -> None:
        """``hostnames``: every name /etc/hosts must resolve, mapped to the node index that owns it;
        ``names``: the two nodes' own hostnames (the pods' ``<job>-<index>``)."""
        tag = uuid.uuid4().hex[:6]
        self.nodes = [
            Node(i, f"kubetune-mn-{tag}-{i}", f"{SUBNET}.{i + 1}", names[i], root / f"node-{i}") for i in range(2)
        ]
        self._veth = [f"kt{tag}{i}" for i in range(2)]  # <= 15 characters, unique per test
        self._hosts = hostnames

    def __enter__(self) -> Self:
        try:
            for node in self.nodes:
                _ip("netns", "add", node.netns)
            _ip("link", "add", self._veth[0], "type", "veth", "peer", "name", self._veth[1])
            for node, veth in zip(self.nodes, self._veth, strict=True):
                _ip("link", "set", veth, "netns", node.netns)
                _ip("-n", node.netns, "link", "set", veth, "name", "eth0")
                _ip("-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0")
                _ip("-n", node.netns, "link", "set", "eth0", "up")
                _ip("-n", node.netns, "link", "set", "lo", "up")
                node.root.mkdir(parents=True, exist_ok=True)
                (node.root / "scratch").mkdir(exist_ok=True)
                (node.root / "home").mkdir(exist_ok=True)
                lines = ["127.0.0.1 localhost"]
                lines += [f"{self.nodes[i].address} {name}" for name, i in self._hosts.items()]
                (node.root / "hosts").write_text("\n".join(lines) + "\n", encoding="utf-8")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            try:
                node.kill()
            except RuntimeError:
                pass
            for proc in node.procs:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(timeout=30)
            subprocess.run(["ip", "netns", "del", node.netns], capture_output=True, check=False)
        # deleting a namespace deletes the veth end inside it, and with it the peer
        left = [n.netns for n in self.nodes if n.netns in _ip("netns", "list")]
        assert not left, f"namespaces left behind: {left}"

    def routes(self, node: Node) -> list[str]:
        return [line.strip() for line in _ip("-n", node.netns, "route", "show").splitlines() if line.strip()]

    def set_link(self, node: Node, up: bool) -> None:
        """Unplug (or plug back) a node's cable: no FIN, no RST, its peers just stop hearing from it."""
        _ip("-n", node.netns, "link", "set", "eth0", "up" if up else "down")

    def start(self, node: Node, env: dict[str, str], config: Path, scratch_path: Path) -> subprocess.Popen[bytes]:
        """Start the pod's command, ``kubetune-train --config …``, on ``node``.

        ``scratch_path`` (the trainer config's scratch folder) is backed by this node's own disk."""
        scratch_path.mkdir(parents=True, exist_ok=True)
        wrapper = 'hostname "$1" && mount --bind "$2" /etc/hosts && mount --bind "$3" "$4" && shift 4 && exec "$@"'
        attempt = len(node.procs) + 1
        cmd = [
            "ip",
            "netns",
            "exec",
            node.netns,
            "unshare",
            "--uts",
            "--",
            "sh",
            "-c",
            wrapper,
            "sh",
            node.hostname,
            str(node.root / "hosts"),
            str(node.root / "scratch"),
            str(scratch_path),
            str(TRAIN),
            "--config",
            str(config),
        ]
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
        with open(node.root / f"train-{attempt}.log", "wb") as out:
            proc = subprocess.Popen(
                cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT, cwd=node.root, start_new_session=True
            )
        node.procs.append(proc)
        return proc
