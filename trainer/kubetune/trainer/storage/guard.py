"""The URL guard: refuse model, data and output hosts that point back into the node, on every client and hop.

A FineTuneJob names URLs that the trainer pod connects to. A URL (or an S3/Hub endpoint) that
resolves to loopback, link-local or a cloud metadata address could read the node's credentials,
so it is refused unless the host or address is in the allow list
(``TrainerConfig.runtime.allowPrivateUrls``; ``kubetune run --allow-private-url 127.0.0.1``).
Ordinary private ranges (10/8, 172.16/12, 192.168/16, fc00::/7) stay allowed: in-cluster MinIO
lives there.

Two halves, one policy:

- :func:`check_url` normalises a URL the way the connecting client will (one percent-decoding of
  the host as urllib does, IDNA 2003 as ``socket.getaddrinfo`` does, NFKC, trailing dots,
  brackets) and refuses what is malformed (control characters, user-info, a port that is not a
  number, no host) with one line, then checks the addresses the host resolves to *now*. It runs
  when a URL is first seen and on every redirect.
- :class:`Guard` pins each connection: whenever urllib, botocore (urllib3) or the Hub client
  (httpx2/httpcore2) opens a TCP connection, the host is resolved *once*, every answer is
  checked, and the socket is connected to a checked address, never to a second resolution. A
  name that answers a public address to the first look-up and 169.254.169.254 to the next
  (DNS rebinding) is refused at the connection. TLS still verifies the certificate against the
  host name.

Every address form that reaches a forbidden one is refused: IPv4-mapped (``::ffff:a.b.c.d``),
IPv4-compatible (``::a.b.c.d``), SIIT (``::ffff:0:a.b.c.d``), NAT64 (``64:ff9b::/96`` and the
local-use ``64:ff9b:1::/48`` at every RFC 6052 prefix length), 6to4 and Teredo; short and
numeric IPv4 spellings (``0x7f.1``, ``2130706433``) through ``inet_aton``, as the resolver reads them.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import socket
import unicodedata
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

from kubetune.api.redact import CREDENTIALS_HINT, redact
from kubetune.trainer.errors import ConfigError

METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata.goog",
        "metadata",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.azure.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean ...
        "fd00:ec2::254",  # AWS over IPv6
        "fd20:ce::254",  # GCP over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
        "168.63.129.16",  # Azure WireServer
    )
)
NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")
THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
SCHEMES = ("http", "https")

IP = ipaddress.IPv4Address | ipaddress.IPv6Address


class URLRefused(ConfigError):
    """The URL guard refused a URL, a redirect or a connection."""


# ------------------------------------------------------------------------------------------------ addresses


def _v4(data: bytes) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(bytes(data))


def embedded_ipv4(ip: IP) -> list[tuple[ipaddress.IPv4Address, str]]:
    """IPv4 addresses an IPv6 address carries (and the form's name), as translators and stacks read them."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    b = ip.packed
    out: list[tuple[ipaddress.IPv4Address, str]] = []
    if ip.ipv4_mapped is not None:
        out.append((ip.ipv4_mapped, "IPv4-mapped"))
    if b[:12] == bytes(12) and int(ip) > 1:
        out.append((_v4(b[12:]), "IPv4-compatible"))
    if b[:8] == bytes(8) and b[8:12] == b"\xff\xff\x00\x00":
        out.append((_v4(b[12:]), "IPv4-translated"))
    if ip in NAT64_WELL_KNOWN:
        out.append((_v4(b[12:]), "NAT64"))
    if ip in NAT64_LOCAL:  # RFC 6052 layouts for /48, /56, /64 and /96 prefixes (octet 8 is reserved)
        for data in (b[6:8] + b[9:11], b[7:8] + b[9:12], b[9:13], b[12:16]):
            out.append((_v4(data), "NAT64"))
    if ip.sixtofour is not None:
        out.append((ip.sixtofour, "6to4"))
    if ip.teredo is not None:
        out.append((ip.teredo[1], "Teredo"))
    return out


def _why_v4_or_v6(ip: IP) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "the unspecified address"
    if isinstance(ip, ipaddress.IPv4Address) and ip in THIS_NETWORK:
        return "in 0.0.0.0/8 (this host)"
    if ip.is_multicast:
        return "a multicast address"
    if isinstance(ip, ipaddress.IPv4Address) and (ip.is_reserved or ip == ipaddress.IPv4Address("255.255.255.255")):
        return "a reserved address"
    return None


def why_forbidden(ip: IP) -> str | None:
    """Why connecting to ``ip`` is refused (None when it is allowed)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%", 1)[0])
    reason = _why_v4_or_v6(ip)
    if reason:
        return reason
    for inner, form in embedded_ipv4(ip):
        reason = _why_v4_or_v6(inner)
        if reason:
            return f"{reason} ({form} form of {inner})"
    return None


def _literal(host: str) -> IP | None:
    """The address a host written as an address names: IPv4/IPv6 literals and inet_aton's short/numeric forms."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        pass
    if host and all(c in "0123456789abcdefxABCDEFX." for c in host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


# ---------------------------------------------------------------------------------------------- normalising


def _shown(url: str) -> str:
    text = redact(url)
    return repr(text if len(text) <= 200 else text[:197] + "...")


def normalise_host(raw: str, *, field: str, url: str = "") -> str:
    """The host name a client connects to: percent-decoded once, NFKC + IDNA 2003, lower case, no brackets or final dots."""
    where = f"{field}: {_shown(url or raw)}"
    try:
        host = unquote(raw, errors="strict") if "%" in raw else raw
    except UnicodeDecodeError:
        raise URLRefused(f"{where} has a percent-encoded host that is not UTF-8") from None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in host):
        raise URLRefused(f"{where} has a control character or a space in its host")
    if any(c in host for c in "@/\\?#"):
        raise URLRefused(f"{where} has a host with '@', '/', '\\', '?' or '#' in it")
    if "%" in host and ":" not in host:  # only an IPv6 zone id keeps a '%'
        raise URLRefused(f"{where} has a percent-encoded host even after decoding it")
    if ":" not in host:
        host = unicodedata.normalize("NFKC", host)
        try:
            host = host.encode("idna").decode("ascii") if not host.isascii() else host
        except UnicodeError:
            raise URLRefused(f"{where} has a host that is not a valid international domain name") from None
    host = host.lower().rstrip(".")
    if not host:
        raise URLRefused(f"{where} has no host")
    return host


@dataclass(frozen=True)
class CheckedURL:
    """A URL as the guard read it: the scheme, the host a client connects to, the port, and the checked addresses."""

    url: str
    scheme: str
    host: str
    port: int
    addresses: tuple[IP, ...] = ()


def split_url(url: str, *, field: str, schemes: Iterable[str] = SCHEMES) -> tuple[SplitResult, str, int]:
    """Parse ``url`` as urllib will; URLRefused with one line (never a traceback) when it is malformed."""
    if not isinstance(url, str):
        raise URLRefused(f"{field}: {url!r} is not a URL")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url) or " " in url.strip():
        raise URLRefused(f"{field}: {_shown(url)} contains a control character or a space; remove it")
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise URLRefused(f"{field}: {_shown(url)} is not a valid URL ({redact(exc)})") from None
    schemes = tuple(schemes)
    if parts.scheme.lower() not in schemes:
        raise URLRefused(f"{field}: {_shown(url)} must be an {' or '.join(s + '://' for s in schemes)} URL")
    if "@" in parts.netloc:
        raise URLRefused(f"{field}: {_shown(url)} has user-info (user:password@host) in it; {CREDENTIALS_HINT}")
    if "\\" in parts.netloc:
        raise URLRefused(f"{field}: {_shown(url)} has a backslash in its host")
    if not parts.hostname:
        raise URLRefused(f"{field}: {_shown(url)} has no host")
    host = normalise_host(parts.hostname, field=field, url=url)
    return parts, host, port or (443 if parts.scheme.lower() == "https" else 80)


# ---------------------------------------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Guard:
    """The policy for one field: which names/addresses the allow list lets through; resolves, checks and connects."""

    field: str
    allow: tuple[str, ...] = ()
    what: str = ""
    _allowed: frozenset[str] = dataclass_field(default=frozenset(), repr=False)

    @classmethod
    def of(cls, *, field: str, allow: Iterable[str] = (), what: str = "") -> Guard:
        allowed = set()
        for entry in allow:
            name = str(entry).strip().lower().strip("[]").rstrip(".")
            allowed.add(name)
            ip = _literal(name)
            if ip is not None:
                allowed.add(str(ip))
        return cls(field, tuple(allow), what, frozenset(allowed))

    def _refuse(self, host: str, shown_host: str, reason: str, ip: IP | None = None) -> URLRefused:
        label = f"{self.what} host {shown_host!r}" if self.what else f"host {shown_host!r}"
        resolved = "" if ip is None or str(ip) in (host, shown_host) else f" (resolves to {ip})"
        return URLRefused(
            f"{self.field}: {label}{resolved} is {reason}; refused by the URL guard; if this is "
            f"intended, allow it (runtime.allowPrivateUrls, `kubetune run --allow-private-url {host}`)"
        )

    def resolve(
        self, host: str, port: int, *, shown_host: str | None = None, url: str = "", strict: bool = True
    ) -> list[IP]:
        """Resolve ``host`` once and check every answer; the checked addresses (none when unresolvable and not strict).

        ``strict``: an unresolvable name raises ``socket.gaierror`` (the connection fails as it would have);
        otherwise it passes, and the connection itself reports it later.
        """
        shown_host = shown_host if shown_host is not None else host
        name = normalise_host(host, field=self.field, url=url)
        if name in self._allowed:
            return _resolve(name, port, strict=strict)
        if name in METADATA_HOSTS or name.split(".", 1)[0] == "metadata" and name.endswith(".internal"):
            raise self._refuse(name, shown_host, "a cloud metadata host")
        literal = _literal(name)
        addresses = [literal] if literal is not None else _resolve(name, port, strict=strict)
        for ip in addresses:
            reason = why_forbidden(ip)
            if reason and str(ip) not in self._allowed and str(ip).split("%", 1)[0] not in self._allowed:
                raise self._refuse(name, shown_host, reason, ip)
        return addresses

    def check_url(self, url: str, *, schemes: Iterable[str] = SCHEMES) -> CheckedURL:
        parts, host, port = split_url(url, field=self.field, schemes=schemes)
        addresses = self.resolve(host, port, shown_host=parts.hostname or host, url=url, strict=False)
        return CheckedURL(url, parts.scheme.lower(), host, port, tuple(addresses))

    def connect(
        self,
        host: str,
        port: int,
        timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
        source_address: tuple[str, int] | None = None,
    ) -> socket.socket:
        """A TCP connection to a checked address of ``host``: one resolution, every answer checked, no second look-up."""
        addresses = self.resolve(host, port, strict=True)
        last: OSError | None = None
        for ip in addresses:
            try:
                return socket.create_connection((str(ip), port), timeout, source_address)
            except OSError as exc:
                last = exc
        raise last or OSError(f"no address to connect to for {host}")

    # ------------------------------------------------------------------------------------------ clients

    def urllib_opener(self) -> urllib.request.OpenerDirector:
        """An opener whose every connection (redirects included) goes through :meth:`connect` and whose redirects are checked."""
        return urllib.request.build_opener(
            _PinnedHTTPHandler(self), _PinnedHTTPSHandler(self), _CheckedRedirects(self)
        )

    def pin_botocore(self, client: Any) -> Any:
        """Make a boto3/botocore client connect only through :meth:`connect` (its endpoint, virtual hosts, proxies)."""
        session = client._endpoint.http_session
        pools = session._pool_classes_by_scheme  # the dict its pool managers share (botocore.httpsession)
        pools.update({scheme: _pinned_pool(cls, self) for scheme, cls in list(pools.items())})
        for manager in [session._manager, *session._proxy_managers.values()]:
            manager.pool_classes_by_scheme = pools
            manager.clear()
        return client

    def hub_client_factory(self) -> Any:
        """A huggingface_hub client factory (``set_client_factory``) whose connections go through :meth:`connect`."""
        return functools.partial(_hub_client, self)


def _resolve(host: str, port: int, *, strict: bool) -> list[IP]:
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        if strict:
            raise
        return []  # unresolvable now: the connection (which checks again) fails with its own message
    out: list[IP] = []
    for info in infos:
        ip = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if ip not in out:
            out.append(ip)
    return out


def check_host(host: str, *, field: str, allow: Iterable[str] = (), port: int | None = None, what: str = "") -> None:
    """Raise URLRefused when ``host`` is (or now resolves to) a forbidden address and is not allowed."""
    Guard.of(field=field, allow=allow, what=what).resolve(host, port or 443, strict=False)


def check_url(
    url: str, *, field: str, allow: Iterable[str] = (), what: str = "", schemes: Iterable[str] = SCHEMES
) -> CheckedURL:
    """Normalise and guard an http(s) URL (a data file, an S3 endpoint, a Hub endpoint, a redirect)."""
    return Guard.of(field=field, allow=allow, what=what).check_url(url, schemes=schemes)


# -------------------------------------------------------------------------------------------------- urllib


class _PinnedHTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, guard: Guard, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._create_connection = lambda address, timeout, source=None: guard.connect(
            address[0], address[1], timeout, source
        )


class _PinnedHTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, guard: Guard, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._create_connection = lambda address, timeout, source=None: guard.connect(
            address[0], address[1], timeout, source
        )


class _PinnedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, guard: Guard):
        super().__init__()
        self.guard = guard

    def http_open(self, req: Any) -> Any:
        return self.do_open(functools.partial(_PinnedHTTPConnection, guard=self.guard), req)


class _PinnedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, guard: Guard):
        super().__init__()
        self.guard = guard

    def https_open(self, req: Any) -> Any:
        return self.do_open(functools.partial(_PinnedHTTPSConnection, guard=self.guard), req, context=self._context)


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to an http(s) URL that passes the guard (user-info, control characters, addresses)."""

    def __init__(self, guard: Guard):
        self.guard = Guard.of(field=guard.field, allow=guard.allow, what="redirect")

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.guard.check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


# -------------------------------------------------------------------------------------------------- botocore


@functools.cache
def _pinned_connection_class(base: type) -> type:
    from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError

    class Pinned(base):  # type: ignore[misc, valid-type]
        kubetune_guard: Guard

        def _new_conn(self) -> socket.socket:
            try:
                sock = self.kubetune_guard.connect(self._dns_host, self.port, self.timeout, self.source_address)
            except socket.gaierror as exc:
                raise NameResolutionError(self.host, self, exc) from exc
            except TimeoutError as exc:
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc
            except URLRefused:
                raise
            except OSError as exc:
                raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
            for option in self.socket_options or []:
                sock.setsockopt(*option)
            return sock

    Pinned.__name__ = f"Pinned{base.__name__}"
    return Pinned


def _pinned_pool(pool_cls: type, guard: Guard) -> type:
    base = getattr(pool_cls, "kubetune_base", pool_cls)
    connection = type(
        f"Guarded{base.ConnectionCls.__name__}",
        (_pinned_connection_class(base.ConnectionCls),),
        {"kubetune_guard": guard},
    )
    return type(f"Guarded{base.__name__}", (base,), {"ConnectionCls": connection, "kubetune_base": base})


# ------------------------------------------------------------------------------------------ huggingface_hub


class _PinnedBackend:
    """An httpcore2 network backend that connects through :meth:`Guard.connect` (TLS keeps the host name)."""

    def __init__(self, guard: Guard):
        from httpcore2._backends.sync import SyncBackend

        self.guard, self.inner = guard, SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> Any:
        from httpcore2 import ConnectError, ConnectTimeout
        from httpcore2._backends.sync import SyncStream

        try:
            sock = self.guard.connect(host, port, timeout, None if local_address is None else (local_address, 0))
        except URLRefused:
            raise
        except TimeoutError as exc:
            raise ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise ConnectError(str(exc)) from exc
        for option in socket_options or []:
            sock.setsockopt(*option)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return SyncStream(sock)

    def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.connect_unix_socket(*args, **kwargs)

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def _hub_client(guard: Guard) -> Any:
    import httpx2
    from huggingface_hub.utils._http import hf_request_event_hook

    transport = httpx2.HTTPTransport()
    transport._pool._network_backend = _PinnedBackend(guard)  # httpcore2.ConnectionPool: every new connection

    def xet_endpoint_checked(response: Any) -> None:
        cas = response.headers.get("X-Xet-Cas-Url")
        if cas:  # hf_xet connects on its own; at least its endpoint passes the guard
            Guard.of(field=guard.field, allow=guard.allow, what="Xet storage").check_url(cas)

    return httpx2.Client(
        event_hooks={"request": [hf_request_event_hook], "response": [xet_endpoint_checked]},
        follow_redirects=True,
        timeout=None,
        transport=transport,
    )


def guard_hub(endpoint: str, *, field: str, allow: Iterable[str] = (), what: str = "Hugging Face Hub") -> CheckedURL:
    """Check a Hub endpoint and make huggingface_hub connect only to checked addresses from now on."""
    guard = Guard.of(field=field, allow=allow, what=what)
    checked = guard.check_url(endpoint)
    from huggingface_hub import set_client_factory

    set_client_factory(guard.hub_client_factory())
    return checked
