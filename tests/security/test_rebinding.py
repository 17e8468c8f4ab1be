"""DNS rebinding: a name that answers a public address to the guard's look-up and a loopback address to the
client's own look-up must not reach the loopback server, through urllib, botocore or the Hub client, redirects
included. The resolver is ``socket.getaddrinfo`` itself, which every one of those clients calls to connect."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.trainer.errors import ConfigError

from .conftest import REBIND, CountingServer


@pytest.fixture
def default_hub_client() -> Iterator[None]:
    """guard_hub installs a pinned client factory for huggingface_hub; put the library's default back after."""
    yield
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    set_client_factory(default_client_factory)


def test_urllib_connects_only_to_the_checked_address(tmp_path: Path, served: CountingServer, rebinding) -> None:
    from kubetune.trainer.storage.fetch import fetch

    resolver = rebinding("127.0.0.2")
    with pytest.raises(
        ConfigError, match=r"host .*rebind\.kubetune\.test.* \(resolves to 127\.0\.0\.2\) is a loopback"
    ):
        fetch(
            f"http://{REBIND}:{served.port}/data.jsonl",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
        )
    assert len(resolver.calls) >= 2  # the guard's look-up, then the connection's own (checked, not trusted)
    assert served.hits == []


def test_urllib_redirect_to_a_rebinding_name_is_refused(tmp_path: Path, served: CountingServer, rebinding) -> None:
    from kubetune.trainer.storage.fetch import fetch

    root = tmp_path / "bounce"
    root.mkdir()
    bounce = CountingServer(
        root, host="127.0.0.1", redirects={"/d.jsonl": f"http://{REBIND}:{served.port}/data.jsonl"}
    )
    rebinding("127.0.0.2")
    try:
        with pytest.raises(ConfigError, match="loopback"):
            fetch(
                f"http://127.0.0.1:{bounce.port}/d.jsonl",
                field="spec.datasets[0].source",
                work_dir=tmp_path,
                cache_dir=tmp_path / "c",
                allow=["127.0.0.1"],
            )
    finally:
        bounce.close()
    assert bounce.hits and served.hits == []


def test_an_allowed_address_still_downloads(tmp_path: Path, served: CountingServer) -> None:
    from kubetune.trainer.storage.fetch import fetch

    path = fetch(
        f"http://127.0.0.1:{served.port}/data.jsonl",
        field="f",
        work_dir=tmp_path,
        cache_dir=tmp_path / "c",
        allow=["127.0.0.1"],
    )
    assert path.read_text().startswith('{"instruction"')


def test_boto3_connects_only_to_the_checked_address(
    s3_bucket: str, s3_endpoint: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, rebinding
) -> None:
    import boto3

    from kubetune.trainer.storage.fetch import fetch

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="d/data.jsonl", Body=b"{}\n")
    port = s3_endpoint.rsplit(":", 1)[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{REBIND}:{port}")
    rebinding("127.0.0.1")
    with pytest.raises(ConfigError, match=r"S3 endpoint host .*rebind\.kubetune\.test.* is a loopback"):
        fetch(
            f"s3://{s3_bucket}/d/data.jsonl",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
        )
    assert not any((tmp_path / "c").rglob("data.jsonl"))


def test_boto3_pinned_client_still_works_when_allowed(s3_bucket: str, s3_endpoint: str, tmp_path: Path) -> None:
    import boto3

    from kubetune.trainer.storage.fetch import fetch

    boto3.client("s3", endpoint_url=s3_endpoint).put_object(Bucket=s3_bucket, Key="d/data.jsonl", Body=b"{}\n")
    path = fetch(
        f"s3://{s3_bucket}/d/data.jsonl", field="f", work_dir=tmp_path, cache_dir=tmp_path / "c", allow=["127.0.0.1"]
    )
    assert path.read_bytes() == b"{}\n"


def test_hub_client_connects_only_to_the_checked_address(
    tmp_path: Path, served: CountingServer, rebinding, monkeypatch: pytest.MonkeyPatch, default_hub_client: None
) -> None:
    import huggingface_hub.constants

    from kubetune.trainer.storage.fetch import fetch

    monkeypatch.setenv("HF_ENDPOINT", f"http://{REBIND}:{served.port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    rebinding("127.0.0.2")
    with pytest.raises(ConfigError, match="loopback"):
        fetch("hf://org/tiny", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path / "c", kind="model")
    assert served.hits == []


def test_hub_client_guard_covers_redirects(
    tmp_path: Path, served: CountingServer, rebinding, monkeypatch: pytest.MonkeyPatch, default_hub_client: None
) -> None:
    """The Hub answers a redirect (as it does to its CDN) to a name that resolves to loopback: no URL check runs on
    httpx's own redirects, so the pinned connection is what refuses it."""
    from huggingface_hub import get_session

    from kubetune.trainer.storage.guard import guard_hub

    root = tmp_path / "bounce"
    root.mkdir()
    bounce = CountingServer(root, host="127.0.0.1", redirects={"/x": f"http://{REBIND}:{served.port}/data.jsonl"})
    try:
        guard_hub(f"http://127.0.0.1:{bounce.port}", field="spec.model.source", allow=["127.0.0.1"])
        rebinding("127.0.0.2", first="127.0.0.2")
        with pytest.raises(ConfigError, match="loopback"):
            get_session().get(f"http://127.0.0.1:{bounce.port}/x")
    finally:
        bounce.close()
    assert bounce.hits == ["/x"] and served.hits == []
