"""Real servers on 127.0.0.1 for integration tests (a pytest plugin loaded by conftest.py).

- ``s3_endpoint``: moto in server mode (S3 over real HTTP), AWS_* env pointing at it.
- ``s3_bucket``: a fresh bucket on it per test.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator

import pytest


def free_port() -> int:
    """A port that was free a moment ago. Only for programs that must be told their port up front (torchrun's
    MASTER_PORT, a container's published port): another process may take it before they bind, so their
    start is retried on "address already in use". Servers that can bind port 0 report their own port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto on a port it binds itself (port 0, then asks the server), so no other process can take it between
    a probe and the bind; the AWS_* variables point at it for the session and are restored afterwards."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    try:
        with pytest.MonkeyPatch.context() as env:
            for key, value in {
                "AWS_ENDPOINT_URL": url,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
            }.items():
                env.setenv(key, value)
            yield url
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str) -> str:
    import boto3

    name = f"kt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name
