"""The URL guard reads a URL as the connecting client will, refuses every spelling of a blocked address, and says one line."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.trainer.errors import ConfigError
from kubetune.trainer.storage.guard import URLRefused, check_url, why_forbidden

from .conftest import CountingServer

BLOCKED_V4 = [
    "127.0.0.1",
    "127.1.2.3",
    "169.254.169.254",
    "169.254.0.1",
    "0.0.0.0",
    "100.100.100.200",
    "192.0.0.192",
    "168.63.129.16",
]
BLOCKED_V6 = ["::1", "fe80::1", "fd00:ec2::254", "fd20:ce::254", "::"]


def _pct(host: str) -> str:
    return "".join(f"%{ord(c):02x}" for c in host)


@pytest.mark.parametrize(
    "url",
    [
        "http://%31%32%37.0.0.1/x",  # percent-encoded loopback: urllib decodes it before connecting
        "http://%31%36%39.254.169.254/latest/meta-data/",
        f"http://{_pct('169.254.169.254')}/",
        f"http://{_pct('localhost')}/",
        "http://１２７.０.０.１/x",  # full-width digits and dots: IDNA 2003 (what getaddrinfo uses) maps them to ASCII
        "http://127.0.0.1./x",
        "http://localhost./x",
        "http://LOCALHOST../x",
        "http://metadata.google.internal./computeMetadata/v1/",
        "http://METADATA.GOOGLE.INTERNAL/",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[64:ff9b::169.254.169.254]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b:1:a9fe:a9:fe00::]/",  # NAT64 local-use /48 layout
        "http://[64:ff9b:1::a9fe:a9fe]/",  # /96 layout inside the local-use prefix
        "http://[::127.0.0.1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:0:a9fe:a9fe]/",
        "http://[2002:a9fe:a9fe::1]/",  # 6to4
        "http://0x7f.1/",
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://[fe80::1%25eth0]/",
    ],
    ids=repr,
)
def test_every_spelling_of_a_blocked_address_is_refused(url: str) -> None:
    with pytest.raises(URLRefused) as err:
        check_url(url, field="spec.datasets[0].source")
    assert str(err.value).startswith("spec.datasets[0].source: ") and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "url, expected",
    [
        ("http://evil.example:80@127.0.0.1/", "user-info"),
        ("http://127.0.0.1:80@evil.example/", "user-info"),
        ("http://a@b@127.0.0.1/", "user-info"),
        ("http://user:s3cr3t@[::1]:80/", "user-info"),
        ("http://host:abc/", "not a valid URL"),
        ("http://host:99999/", "not a valid URL"),
        ("http://[::1/", "not a valid URL"),
        ("http://exa\x00mple.com/", "control character"),
        ("http://example.com/\r\nHost: x", "control character"),
        ("http:///x", "no host"),
        ("ftp://example.com/x", "must be an http:// or https:// URL"),
        ("file:///etc/passwd", "must be an http:// or https:// URL"),
        ("http://%ff%fe/", "not UTF-8"),
        ("http://%2531%2532%2537.0.0.1/", "percent-encoded"),
        ("http://a\\b@127.0.0.1/", "user-info"),
        ("http://" + "a" * 64 + ".é.com/", "international domain name"),
    ],
    ids=repr,
)
def test_malformed_urls_are_one_clear_line(url: str, expected: str) -> None:
    with pytest.raises(URLRefused) as err:
        check_url(url, field="f")
    message = str(err.value)
    assert expected in message and "\n" not in message and "s3cr3t" not in message


@pytest.mark.parametrize(
    "url",
    [
        "https://8.8.8.8/x",
        "http://10.0.0.5:9000/b",
        "https://[2606:4700::1111]/",
        "https://[64:ff9b::808:808]/",
        "https://no-such-host.invalid/x",
        "https://ｅｘａｍｐｌｅ.invalid/x",
        "https://xn--bcher-kva.invalid/",
    ],
)
def test_public_private_and_unresolvable_hosts_pass(url: str) -> None:
    check_url(url, field="f")


# ------------------------------------------------------------------------------------------------ hypothesis

blocked = (
    st.sampled_from([ipaddress.ip_address(a) for a in BLOCKED_V4 + BLOCKED_V6])
    | st.builds(lambda n: ipaddress.IPv4Address((127 << 24) + n), st.integers(0, (1 << 24) - 1))
    | st.builds(lambda n: ipaddress.IPv4Address((169 << 24) + (254 << 16) + n), st.integers(0, (1 << 16) - 1))
)


def _spellings(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[str]:
    if isinstance(ip, ipaddress.IPv6Address):
        return [f"[{ip}]", f"[{ip.exploded}]", f"[{ip.exploded.upper()}]"]
    n = int(ip)
    six = [
        f"::ffff:{ip}",
        f"64:ff9b::{ip}",
        f"::{ip}" if n > 1 else f"::ffff:{ip}",
        f"2002:{n >> 16:x}:{n & 0xFFFF:x}::",
    ]
    return [
        str(ip),
        f"{ip}.",
        str(n),
        hex(n),
        ".".join(f"0{int(o):o}" for o in str(ip).split(".")),
        _pct(str(ip)),
        "".join(f"%{ord(c):02x}" if i % 2 else c for i, c in enumerate(str(ip))),
        *[f"[{s}]" for s in six],
    ]


@settings(max_examples=300, deadline=None)
@given(
    ip=blocked,
    pick=st.integers(0, 20),
    port=st.one_of(st.none(), st.integers(1, 65535)),
    scheme=st.sampled_from(["http", "https", "HTTP"]),
)
def test_any_url_whose_host_decodes_to_a_blocked_address_is_refused(ip, pick: int, port, scheme: str) -> None:
    spellings = _spellings(ip)
    host = spellings[pick % len(spellings)]
    url = f"{scheme}://{host}{'' if port is None else f':{port}'}/x"
    with pytest.raises(URLRefused):
        check_url(url, field="f")


@settings(max_examples=300, deadline=None)
@given(n=st.integers(0, (1 << 32) - 1))
def test_public_ipv4_passes_and_every_v6_form_agrees(n: int) -> None:
    ip = ipaddress.IPv4Address(n)
    for form in (f"::ffff:{ip}", f"64:ff9b::{ip}"):
        assert (why_forbidden(ipaddress.ip_address(form)) is None) == (why_forbidden(ip) is None), form
    if ip.is_global and not ip.is_multicast:  # public unicast: must pass (no false positives)
        check_url(f"https://{ip}/x", field="f")


# -------------------------------------------------------------------------------------- the connecting client


def test_percent_encoded_loopback_is_refused_directly_and_after_a_redirect(
    tmp_path: Path, served: CountingServer
) -> None:
    from kubetune.trainer.storage.fetch import fetch

    with pytest.raises(ConfigError, match="loopback"):
        fetch(
            f"http://%31%32%37.0.0.1:{served.port}/data.jsonl",
            field="spec.datasets[0].source",
            work_dir=tmp_path,
            cache_dir=tmp_path / "c",
        )
    assert served.hits == []
    root = tmp_path / "site2"
    root.mkdir()
    bounce = CountingServer(
        root, host="127.0.0.1", redirects={"/d.jsonl": f"http://%31%32%37.0.0.2:{served.port}/data.jsonl"}
    )
    try:
        with pytest.raises(ConfigError, match="redirect host .* loopback"):
            fetch(
                f"http://127.0.0.1:{bounce.port}/d.jsonl",
                field="spec.datasets[0].source",
                work_dir=tmp_path,
                cache_dir=tmp_path / "c",
                allow=["127.0.0.1"],
            )
    finally:
        bounce.close()
    assert served.hits == []


def test_data_check_guards_hf_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`kubetune data check --model hf://...` runs HF_ENDPOINT through the guard, as run and chat do."""
    from kubetune.cli import main

    registry = tmp_path / "dataset_info.json"
    registry.write_text('{"d": {"file_name": "d.jsonl"}}')
    (tmp_path / "d.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    for endpoint in ("http://169.254.169.254", "http://[64:ff9b::a9fe:a9fe]", "http://%31%32%37.0.0.1:9"):
        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        code = main(
            [
                "data",
                "check",
                "--dataset-info",
                str(registry),
                "--dataset",
                "d",
                "--stage",
                "sft",
                "--model",
                "hf://org/model",
                "--cache-dir",
                str(tmp_path / "c"),
            ]
        )
        err = capsys.readouterr().err
        assert code == 3 and "refused by the URL guard" in err and "Traceback" not in err, err
