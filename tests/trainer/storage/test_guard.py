"""The URL guard refuses loopback, link-local and metadata hosts unless allowed."""

from __future__ import annotations

import pytest

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.guard import check_host, check_url


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://127.0.0.1:9000/x", "loopback"),
        ("http://localhost/x", "loopback"),
        ("https://[::1]/x", "loopback"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://169.254.10.1/", "link-local"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fd00:ec2::254]/", "cloud metadata"),
        ("http://metadata.google.internal/computeMetadata/v1/", "cloud metadata"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
        ("http://0.0.0.0:80/", "unspecified"),
    ],
    ids=lambda v: v if "://" in v else "",
)
def test_forbidden_hosts_are_refused_with_the_field(url: str, reason: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_url(url, field="spec.datasets[0].source")
    msg = str(err.value)
    assert msg.startswith("spec.datasets[0].source:")
    assert reason in msg and "allowPrivateUrls" in msg


@pytest.mark.parametrize(
    "url", ["http://10.0.0.5:9000/b", "https://192.168.1.10/x", "https://8.8.8.8/x", "https://no-such-host.invalid/x"]
)
def test_ordinary_and_unresolvable_hosts_pass(url: str) -> None:
    check_url(url, field="f")


def test_allow_list_by_address_or_name() -> None:
    check_url("http://127.0.0.1:9000/", field="f", allow=["127.0.0.1"])
    check_url("http://localhost:9000/", field="f", allow=["127.0.0.1"])  # resolves to an allowed address
    check_host("metadata.google.internal", field="f", allow=["metadata.google.internal"])
    with pytest.raises(ConfigError, match="cloud metadata"):
        check_url("http://169.254.169.254/", field="f", allow=["127.0.0.1"])


def test_fetch_refuses_a_loopback_s3_endpoint(s3_endpoint: str, tmp_path) -> None:
    from kubetune.trainer.storage.fetch import fetch

    with pytest.raises(ConfigError, match=r"spec.model.source: S3 endpoint host '127.0.0.1' is a loopback"):
        fetch("s3://bucket/model/", field="spec.model.source", work_dir=tmp_path, cache_dir=tmp_path, kind="model")
    with pytest.raises(ConfigError, match="spec.datasets.0.source: host '127.0.0.1' is a loopback"):
        fetch("http://127.0.0.1:1/d.jsonl", field="spec.datasets.0.source", work_dir=tmp_path, cache_dir=tmp_path)


def test_publish_refuses_a_loopback_s3_endpoint(s3_endpoint: str, tmp_path) -> None:
    from kubetune.trainer.storage.publish import publish

    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ConfigError, match="spec.output.uri: S3 endpoint host '127.0.0.1' is a loopback"):
        publish(tmp_path, "s3://bucket/out")
