"""The URL guard: refuse model, data and output hosts that point back into the node.

A FineTuneJob names URLs that the trainer pod connects to. A URL (or an S3/Hub endpoint)
that resolves to loopback, link-local or a cloud metadata address could read the node's
credentials, so it is refused unless the host or address is in the allow list
(``TrainerConfig.runtime.allowPrivateUrls``; ``kubetune run --allow-private-url 127.0.0.1``).

Ordinary private ranges (10/8, 172.16/12, 192.168/16) stay allowed: in-cluster MinIO lives there.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

from kubetune.trainer.errors import ConfigError

METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata"})
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254"),
                                ipaddress.ip_address("100.100.100.200")})


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _unmapped(ip: IP) -> IP:
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _addresses(host: str, port: int | None) -> list[IP]:
    try:
        return [_unmapped(ipaddress.ip_address(host.strip("[]").split("%", 1)[0]))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError):
        return []  # unresolvable: the connection itself will fail with its own message
    return [_unmapped(ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])) for info in infos]


def why_forbidden(ip: IP) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    return None


def check_host(host: str, *, field: str, allow: Iterable[str] = (), port: int | None = None, what: str = "") -> None:
    """Raise ConfigError when ``host`` is (or resolves to) a forbidden address and is not allowed."""
    allowed = {a.strip().lower().strip("[]") for a in allow}
    name = host.strip().lower().rstrip(".").strip("[]")
    if name in allowed:
        return
    label = f"{what} host {host!r}" if what else f"host {host!r}"
    hint = (f"refused by the URL guard; if this is intended, allow it (runtime.allowPrivateUrls, "
            f"`kubetune run --allow-private-url {name}`)")
    if name in METADATA_HOSTS:
        raise ConfigError(f"{field}: {label} is a cloud metadata host; {hint}")
    for ip in _addresses(name, port):
        reason = why_forbidden(ip)
        if reason and str(ip) not in allowed:
            resolved = "" if str(ip) == name else f" (resolves to {ip})"
            raise ConfigError(f"{field}: {label}{resolved} is {reason}; {hint}")


def check_url(url: str, *, field: str, allow: Iterable[str] = (), what: str = "") -> None:
    """Guard an http(s) URL (a data file, an S3 endpoint, a Hub endpoint)."""
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(f"{field}: {url!r} has no host")
    check_host(parts.hostname, field=field, allow=allow, port=parts.port, what=what)
