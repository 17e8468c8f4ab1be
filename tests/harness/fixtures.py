"""pytest fixtures: ``kube_api`` (the emulator on 127.0.0.1 with KUBECONFIG pointing at it),
``cluster`` (the Job controller / kubelet simulator), ``start_operator`` (the real
kubetune operator, in a thread of its own, against the emulator) and ``operator_passes`` (its reconcile
passes, to wait on the one that proves something did not happen)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import FTJ, KubeEmulator, kubeconfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def emulated_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeEmulator]:
    """The emulator on a free port of 127.0.0.1, with $KUBECONFIG pointing at it."""
    emulator = KubeEmulator()
    async with emulator, kmock.Server(emulator) as server:
        path = tmp_path / "kubeconfig.yaml"
        path.write_text(yaml.safe_dump(kubeconfig(str(server.url).rstrip("/"))), encoding="utf-8")
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield emulator


@pytest.fixture
async def kube_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[KubeEmulator]:
    async with emulated_api(tmp_path, monkeypatch) as emulator:
        yield emulator


@pytest.fixture
async def cluster(kube_api: KubeEmulator) -> AsyncIterator[ClusterSimulator]:
    async with ClusterSimulator(kube_api) as sim:
        yield sim


class OperatorRun:
    """One operator started by ``start_operator``: ``set()`` asks it to stop, ``await stop()`` also waits
    until its thread has ended (no pass of it runs any more)."""

    def __init__(self, thread: threading.Thread, flag: threading.Event) -> None:
        self.thread, self.flag = thread, flag

    def set(self) -> None:
        self.flag.set()

    async def stop(self, timeout: float = 15.0) -> None:
        self.flag.set()
        await asyncio.to_thread(self.thread.join, timeout)
        assert not self.thread.is_alive(), f"the operator did not stop in {timeout} s"


@pytest.fixture
async def start_operator() -> AsyncIterator[Callable[..., Awaitable[OperatorRun]]]:
    """``await start_operator(**settings)`` runs the real operator until the test ends.

    kopf runs in its own thread and event loop, as in a pod: at exit it cancels every task
    of its loop, which must not include the emulator's or the simulator's."""
    from kubetune.operator.__main__ import operate
    from kubetune.operator.settings import OperatorSettings

    runs: list[OperatorRun] = []

    async def start(**overrides: Any) -> OperatorRun:
        settings = OperatorSettings(
            **{
                "standalone": True,
                "metrics_port": 0,
                "health_port": 0,
                "sync_interval": 0.2,
                "trainer_image": "ghcr.io/kubetune/kubetune-trainer:test",
                **overrides,
            }
        )
        ready, stop = threading.Event(), threading.Event()
        thread = threading.Thread(
            target=lambda: asyncio.run(operate(settings, ready_flag=ready, stop_flag=stop)),
            name="kopf-operator",
            daemon=True,
        )
        thread.start()
        runs.append(OperatorRun(thread, stop))
        assert await asyncio.to_thread(ready.wait, 30), "the operator did not start in 30 s"
        return runs[-1]

    yield start
    for run in runs:
        run.set()
    for run in runs:
        await asyncio.to_thread(run.thread.join, 15)


TOUCH = "test.kubetune.io/touch"  # an annotation the tests change to make the operator look once more


@dataclasses.dataclass
class Pass:
    """One reconcile pass of the operator over one FineTuneJob: what it decided on, from which replica."""

    key: tuple[str, str]
    body: dict[str, Any]  # the FineTuneJob as the operator's index held it when the pass took its lock
    job: dict[str, Any] | None
    pods: list[dict[str, Any]]
    thread: threading.Thread
    second: int  # the wall-clock second the pass began in (condition timestamps have this resolution)
    poll: bool  # a resync pass (it also scrapes progress), not one a watch event triggered
    decided: bool = False  # children created or patched; the status write and Events follow under the same lock

    @property
    def rv(self) -> int:
        return int(self.body["metadata"]["resourceVersion"])

    @property
    def touch(self) -> str | None:
        return (self.body["metadata"].get("annotations") or {}).get(TOUCH)


class OperatorPasses:
    """Every reconcile pass of the operator (all replicas), to wait on the pass that proves a negative.

    A pass of one FineTuneJob holds that FineTuneJob's lock from reading its body to its last status write
    and Event, so a pass that began after pass P ended means P is done, writes included."""

    def __init__(self) -> None:
        self.log: list[Pass] = []
        self.touches = 0

    def mark(self) -> int:
        """A position in the log: ``settled(..., since=mark)`` looks only at passes that began after it."""
        return len(self.log)

    def of(self, name: str, ns: str = "default", replica: OperatorRun | None = None, since: int = 0) -> list[Pass]:
        return [
            p
            for p in list(self.log)[since:]
            if p.key == (ns, name) and (replica is None or p.thread is replica.thread)
        ]

    async def settled(
        self,
        api: Any,  # the emulator, or the real cluster's API: anything with update(resource, ns, name, patch)
        name: str,
        saw: Callable[[Pass], Any] = lambda _: True,
        *,
        since: int = 0,
        replica: OperatorRun | None = None,
        ns: str = "default",
        timeout: float = 15.0,
    ) -> Pass:
        """Wait until a pass of ``name`` whose inputs ``saw`` accepts has ended, writes and Events included.

        Waits for that pass to decide, then makes the operator look once more (an annotation: a finished
        FineTuneJob is not resynced) and waits for that next pass to begin, which takes the lock the first one
        held until its last write (locks are per replica: with several, name the one). Returns the first."""
        seen = await eventually(
            lambda: next((p for p in self.of(name, ns, replica, since) if p.decided and saw(p)), None), timeout=timeout
        )
        self.touches += 1
        mark = str(self.touches)
        api.update(FTJ, ns, name, {"metadata": {"annotations": {TOUCH: mark}}})
        await eventually(lambda: any(p.touch == mark for p in self.of(name, ns, replica)), timeout=timeout)
        return seen


@pytest.fixture
def operator_passes(monkeypatch: pytest.MonkeyPatch) -> OperatorPasses:
    """Records each reconcile pass of every operator the test starts (see ``OperatorPasses``)."""
    from kubetune.operator.handlers import finetunejob

    passes = OperatorPasses()
    reconcile_once = finetunejob.reconcile_once

    async def recorded(body: dict[str, Any], *args: Any, job: Any, pods: Any, **kwargs: Any) -> Any:
        meta = body.get("metadata") or {}
        seen = Pass(
            key=(meta.get("namespace", ""), meta.get("name", "")),
            body=copy.deepcopy(body),
            job=copy.deepcopy(job),
            pods=copy.deepcopy(pods),
            thread=threading.current_thread(),
            second=int(time.time()),
            poll=bool(kwargs.get("poll")),
        )
        passes.log.append(seen)
        decision = await reconcile_once(body, *args, job=job, pods=pods, **kwargs)
        seen.decided = True
        return decision

    monkeypatch.setattr(finetunejob, "reconcile_once", recorded)
    return passes


def requests_since(api: KubeEmulator, position: int) -> list[Any]:
    """The requests the emulator answered after ``position`` (``len(list(api))`` at some earlier moment)."""
    return list(api)[position:]


WRITES = ("PATCH", "PUT")


def status_writes(api: KubeEmulator, name: str, since: int = 0) -> int:
    """How many times a client wrote the status of FineTuneJob ``name`` after request ``since``."""
    return sum(
        1
        for r in requests_since(api, since)
        if r.subresource == "status" and r.name == name and str(getattr(r.method, "value", r.method)) in WRITES
    )


async def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll ``check`` until it returns a truthy value (returned) or raise with the last value."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: Any = None
    while loop.time() < deadline:
        try:
            last = check()
        except (KeyError, TypeError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(interval)
    raise AssertionError(f"condition not met in {timeout}s; last value: {last!r}")
