"""Outbound requests may not reach private, loopback, link-local or otherwise reserved
addresses unless the operator allow-lists them, so a model table entry or a task's
callback URL cannot be turned against the network Spool runs in.

The guard is an httpx transport: every request a worker makes goes through it, and the
address is checked after resolution, on the address actually connected to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import httpx

from shared.errors import SpoolError, UpstreamError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Allowlist:
    """Hosts and CIDRs (comma-separated, as in `upstream_allowlist`) that may be internal."""

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

    def allows(self, host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return host.lower() in self.hosts or any(address in n for n in self.networks)


def is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Anything not globally routable: private, loopback, link-local, carrier-grade NAT
    (where some clouds keep their metadata service), reserved, multicast."""
    return not address.is_global or address.is_multicast


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


async def check_host(host: str, port: int, allowlist: Allowlist, setting: str) -> None:
    """Resolve `host`; raise unless every address it has is global or allow-listed (in the
    setting named `setting`)."""
    try:
        # An address needs no lookup (which would cost a trip to the resolver's threads).
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise HostUnresolvable(f"cannot resolve the host {host!r}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    for address in addresses:
        if is_internal(address) and not allowlist.allows(host, address):
            raise AddressRefused(
                f"the host {host!r} resolves to an internal address; "
                f"allow-list it in {setting} if that is intended"
            )


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
