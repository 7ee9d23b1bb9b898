"""Where Spool's Redis is: a plain `redis://` URL, or a Sentinel-managed primary.

The Sentinel form names the Sentinels and the primary's service name; every connection
asks the Sentinels for the current primary when it connects, so a failover is followed
without a restart:

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
        [?sentinel_password=...&sentinel_username=...]

`user`/`password` authenticate to the Redis servers, `sentinel_*` to the Sentinels (which
often have no password, or a password of their own). Sentinel's default port is 26379.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
PLAIN_SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class SentinelAddress:
    """A primary found through Sentinel."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    def describe(self) -> str:
        """The address without its secrets, for logs."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"{SENTINEL_SCHEME}://{hosts}/{self.service}/{self.db}"


RedisAddress = str | SentinelAddress
"""A plain URL (as redis-py reads it) or a Sentinel address."""


def parse_redis_url(url: str) -> RedisAddress:
    """Read a Redis URL in any of Spool's forms; ValueError names what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"a Redis URL must start with a scheme such as redis://, not {url!r}")
    scheme = scheme.lower()
    if scheme in PLAIN_SCHEMES:
        return url
    if scheme != SENTINEL_SCHEME:
        known = ", ".join(f"{s}://" for s in (*PLAIN_SCHEMES, SENTINEL_SCHEME))
        raise ValueError(f"unknown Redis URL scheme {scheme}://; use one of {known}")
    return _parse_sentinel(rest)


def _parse_sentinel(rest: str) -> SentinelAddress:
    rest, _, query = rest.partition("?")
    location, _, path = rest.partition("/")
    userinfo, at, hosts = location.rpartition("@")
    if not at:
        userinfo, hosts = "", location
    username, password = _credentials(userinfo)
    sentinels = tuple(_host_port(part) for part in hosts.split(","))
    parts = [unquote(p) for p in path.split("/") if p]
    if not parts:
        raise ValueError("a redis+sentinel:// URL must name the primary's service: .../mymaster")
    if len(parts) > 2:
        raise ValueError("a redis+sentinel:// URL's path is /service or /service/db")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise ValueError(
                f"the database in a redis+sentinel:// URL must be a number, not {parts[1]!r}"
            )
        db = int(parts[1])
    options = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
    unknown = set(options) - {"sentinel_password", "sentinel_username"}
    if unknown:
        raise ValueError(f"unknown redis+sentinel:// option(s): {', '.join(sorted(unknown))}")
    return SentinelAddress(
        sentinels=sentinels,
        service=parts[0],
        db=db,
        username=username,
        password=password,
        sentinel_username=options.get("sentinel_username") or None,
        sentinel_password=options.get("sentinel_password") or None,
    )


def _credentials(userinfo: str) -> tuple[str | None, str | None]:
    if not userinfo:
        return None, None
    user, colon, password = userinfo.partition(":")
    if not colon:
        return None, unquote(user) or None  # `secret@host`: a password alone
    return unquote(user) or None, unquote(password) or None


def _host_port(part: str) -> tuple[str, int]:
    if not part:
        raise ValueError("a redis+sentinel:// URL must list at least one Sentinel host[:port]")
    if part.startswith("["):  # [IPv6]:port
        host, bracket, port = part[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"cannot read the Sentinel address {part!r}")
        port = port[1:]
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    if not host:
        raise ValueError(f"cannot read the Sentinel address {part!r}")
    if not port:
        return host, SENTINEL_PORT
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the Sentinel address {part!r} has no valid port")
    return host, int(port)
