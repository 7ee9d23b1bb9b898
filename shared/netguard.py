"""Outbound requests may not reach private, loopback, link-local or otherwise reserved
addresses unless the operator allow-lists them, so a model table entry or a task's
callback URL cannot be turned against the network Spool runs in.

The guard is an httpx transport: every request a worker makes goes through it, and the
address is checked after resolution, on the address actually connected to.

IPv6 addresses that carry an IPv4 address (IPv4-mapped and -compatible, NAT64, 6to4,
Teredo) lead to that IPv4 host through the kernel or a translator, so they are judged by
the IPv4 address they carry, not by the IPv6 prefix.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx

from shared.errors import SpoolError, UpstreamError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated IPv4-compatible (RFC 4291)
_V4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # RFC 4291
_V4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
_NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
_NAT64_LOCAL = ipaddress.IPv6Network("64:ff9b:1::/48")  # RFC 8215
_SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056
_TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380
_LAST_32 = 0xFFFFFFFF


def embedded_ipv4(address: Address) -> tuple[ipaddress.IPv4Address, ...] | None:
    """The IPv4 address(es) an IPv6 address leads to, or None when it carries none.

    A local-use NAT64 address (64:ff9b:1::/48) is read with the RFC 6052 layout of a /48
    prefix (bits 48-63 and 72-87); one that does not follow it (a non-zero u-octet or
    suffix, as a translator with a longer prefix inside the /48 would use) gives an empty
    tuple: it carries an IPv4 address Spool cannot read, so it is internal.
    """
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    value = int(address)
    if address in _V4_MAPPED or address in _V4_TRANSLATED or address in _NAT64_WELL_KNOWN:
        return (ipaddress.IPv4Address(value & _LAST_32),)
    if address in _V4_COMPATIBLE:
        # "::" and "::1" are the unspecified and loopback addresses, not IPv4 ones.
        return (ipaddress.IPv4Address(value),) if value > 1 else None
    if address in _NAT64_LOCAL:
        u_octet = (value >> 56) & 0xFF
        suffix = value & ((1 << 40) - 1)
        if u_octet or suffix:
            return ()
        high = (value >> 64) & 0xFFFF
        low = (value >> 40) & 0xFFFF
        return (ipaddress.IPv4Address(high << 16 | low),)
    if address in _SIX_TO_FOUR:
        return (ipaddress.IPv4Address((value >> 80) & _LAST_32),)
    if address in _TEREDO:
        server = ipaddress.IPv4Address((value >> 64) & _LAST_32)
        client = ipaddress.IPv4Address((value & _LAST_32) ^ _LAST_32)
        return (server, client)
    return None


class Allowlist:
    """Hosts and CIDRs (comma-separated, as in `upstream_allowlist`) that may be internal.

    An IPv6 address that carries IPv4 addresses (see `embedded_ipv4`) is allowed when it is
    listed itself, or when every internal IPv4 address it carries is: allow-listing
    127.0.0.0/8 allows ::ffff:127.0.0.1 and 64:ff9b::7f00:1 too, since they reach the same
    hosts. A Teredo address whose server is listed but whose client is another internal
    address stays refused.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self.hosts: set[str] = set()
        self.networks: list[Network] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hosts.add(entry)

    @classmethod
    def parse(cls, text: str) -> Allowlist:
        return cls(text.split(","))

    def allows(self, host: str, address: Address) -> bool:
        if host.lower() in self.hosts or self._listed(address):
            return True
        embedded = embedded_ipv4(address)
        if not embedded:
            return False
        return all(self._listed(inner) or not _not_global(inner) for inner in embedded)

    def _listed(self, address: Address) -> bool:
        return any(address in network for network in self.networks)


def _not_global(address: Address) -> bool:
    return not address.is_global or address.is_multicast


def is_internal(address: Address) -> bool:
    """Anything not globally routable: private, loopback, link-local, carrier-grade NAT
    (where some clouds keep their metadata service), reserved, multicast.

    An IPv6 address carrying IPv4 addresses is internal when any of them is (a NAT64 or
    6to4 address of a public IPv4 host is as reachable as the host itself), or when it
    carries one that cannot be read."""
    embedded = embedded_ipv4(address)
    if embedded is None:
        return _not_global(address)
    return not embedded or any(_not_global(inner) for inner in embedded)


class AddressRefused(SpoolError):
    """The host resolves to an internal address that is not allow-listed."""

    status_code = 400
    code = "address_forbidden"
    type = "invalid_request_error"


class HostUnresolvable(SpoolError):
    """The host cannot be resolved."""

    status_code = 400
    code = "host_unresolvable"
    type = "invalid_request_error"


@functools.lru_cache(maxsize=1024)
def _literal_allowed(host: str, allowlist: Allowlist) -> bool | None:
    """Whether `host`, when it is an IP address, may be reached (None when it is a name).
    An address needs no lookup, and its verdict never changes: a worker asks for the same
    few on every request."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return not is_internal(address) or allowlist.allows(host, address)


async def check_host(host: str, port: int, allowlist: Allowlist, setting: str) -> None:
    """Resolve `host`; raise unless every address it has is global or allow-listed (in the
    setting named `setting`)."""
    allowed = _literal_allowed(host, allowlist)
    if allowed is None:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise HostUnresolvable(f"cannot resolve the host {host!r}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        allowed = all(not is_internal(a) or allowlist.allows(host, a) for a in addresses)
    if not allowed:
        raise AddressRefused(
            f"the host {host!r} resolves to an internal address; "
            f"allow-list it in {setting} if that is intended"
        )


class UrlRefused(Exception):
    """Why a URL may not be used; its callers name the URL (`f"{what} {reason}"`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def check_url(url: str, allowlist: Allowlist, setting: str) -> None:
    """An http(s) URL without credentials, to a host that passes `check_host`; else
    UrlRefused saying why."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("is not a valid URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UrlRefused("is not an http or https URL")
    if parts.username or parts.password:
        raise UrlRefused("may not carry credentials")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        await check_host(parts.hostname, port, allowlist, setting)
    except (AddressRefused, HostUnresolvable) as exc:
        raise UrlRefused(f"was refused: {exc.message}") from None


class GuardedTransport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        allowlist: Allowlist,
        inner: httpx.AsyncBaseTransport | None = None,
        setting: str = "upstream_allowlist",
    ) -> None:
        self.allowlist = allowlist
        self.inner = inner or httpx.AsyncHTTPTransport()
        self.setting = setting

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        try:
            await check_host(request.url.host, port, self.allowlist, self.setting)
        except HostUnresolvable as exc:
            raise UpstreamError(exc.message, retryable=True, code="upstream_connect_error") from exc
        except AddressRefused as exc:
            raise UpstreamError(exc.message, code="upstream_forbidden") from exc
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()
