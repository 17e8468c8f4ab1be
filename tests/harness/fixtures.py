"""pytest fixtures: ``kube_api`` (the emulator on 127.0.0.1 with KUBECONFIG pointing at it),
``cluster`` (the Job controller / kubelet simulator) and ``start_operator`` (the real
kubetune operator, in this event loop, against the emulator)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import kmock
import pytest
import yaml

from tests.harness.cluster import ClusterSimulator
from tests.harness.emulator import KubeEmulator, kubeconfig


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


@pytest.fixture
async def start_operator() -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    """``await start_operator(**settings)`` runs the real operator until the test ends.

    kopf runs in its own thread and event loop, as in a pod: at exit it cancels every task
    of its loop, which must not include the emulator's or the simulator's."""
    from kubetune.operator.__main__ import operate
    from kubetune.operator.settings import OperatorSettings

    runs: list[tuple[threading.Thread, threading.Event]] = []

    async def start(**overrides: Any) -> Any:
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
        runs.append((thread, stop))
        assert await asyncio.to_thread(ready.wait, 30), "the operator did not start in 30 s"
        return stop

    yield start
    for thread, stop in runs:
        stop.set()
        await asyncio.to_thread(thread.join, 15)


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
