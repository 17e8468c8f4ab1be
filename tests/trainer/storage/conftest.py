"""Fixtures for storage tests: a fault proxy in front of moto, local HTTP(S) servers, fast retries."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.storage.faultproxy import FaultProxy

LOCAL = ["127.0.0.1"]


@pytest.fixture(autouse=True)
def retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's standard retry mode with 5 attempts (read when a client is made, so upload subprocesses too)."""
    monkeypatch.setenv("KUBETUNE_S3_ATTEMPTS", "5")
    monkeypatch.setenv("KUBETUNE_HTTP_BACKOFF_S", "0.01")


@pytest.fixture
def s3c(s3_endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint)


@pytest.fixture
def proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """AWS_ENDPOINT_URL points at a fault-injecting proxy in front of moto for this test."""
    p = FaultProxy(s3_endpoint)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def sse_proxy(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """Like ``proxy``, but the store answers opaque (non-MD5) ETags, as S3 does for SSE-KMS and SSE-C objects."""
    p = FaultProxy(s3_endpoint, opaque_etags=True)
    monkeypatch.setenv("AWS_ENDPOINT_URL", p.url)
    try:
        yield p
    finally:
        p.close()


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def object_keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert "127.0.0.1" in os.environ["NO_PROXY"]


LOOPBACK = ("localhost", "127.0.0.1", "::1")


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, no_proxy_env: None) -> list[str]:
    """This process as if the machine had no network, whatever the machine has: looking up any name but
    loopback fails as it does without DNS, and a connection to an address outside loopback is unreachable.
    Returns the hosts that were tried, so a test can show it reached the network boundary."""
    tried: list[str] = []
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name not in LOOPBACK and not name.startswith("127."):
            tried.append(name)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network in this test)")
        return real_getaddrinfo(host, *args, **kwargs)

    def connect(sock: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else None
        if host is not None and host not in LOOPBACK and not str(host).startswith("127."):
            tried.append(str(host))
            raise OSError(errno.ENETUNREACH, "Network is unreachable (no network in this test)")
        real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", connect)
    return tried
