"""Where Spool's Redis is: a plain `redis://` URL, a Sentinel-managed primary, or a Redis
Cluster.

The Sentinel form names the Sentinels and the primary's service name; every connection
asks the Sentinels for the current primary when it connects, so a failover is followed
without a restart:

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/service[/db]
        [?sentinel_password=...&sentinel_username=...]

`user`/`password` authenticate to the Redis servers, `sentinel_*` to the Sentinels (which
often have no password, or a password of their own). Sentinel's default port is 26379.

The Cluster form names some of the cluster's nodes (the client learns the rest):

    redis+cluster://[[user]:password@]host[:port][,host[:port]...]

Redis' default port is 6379. A cluster has no databases, so the form has no path.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qs, unquote

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
CLUSTER_SCHEME = "redis+cluster"
CLUSTER_PORT = 6379
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


@dataclass(frozen=True, slots=True)
class ClusterAddress:
    """A Redis Cluster, found through any of its nodes."""

    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        """The address without its secrets, for logs."""
        return f"{CLUSTER_SCHEME}://" + ",".join(f"{host}:{port}" for host, port in self.nodes)


RedisAddress = str | SentinelAddress | ClusterAddress
"""A plain URL (as redis-py reads it), a Sentinel address or a Cluster address."""


def parse_redis_url(url: str) -> RedisAddress:
    """Read a Redis URL in any of Spool's forms; ValueError names what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"a Redis URL must start with a scheme such as redis://, not {url!r}")
    scheme = scheme.lower()
    if scheme in PLAIN_SCHEMES:
        return url
    if scheme == CLUSTER_SCHEME:
        return _parse_cluster(rest)
    if scheme != SENTINEL_SCHEME:
        known = ", ".join(f"{s}://" for s in (*PLAIN_SCHEMES, SENTINEL_SCHEME, CLUSTER_SCHEME))
        raise ValueError(f"unknown Redis URL scheme {scheme}://; use one of {known}")
    return _parse_sentinel(rest)


def _parse_cluster(rest: str) -> ClusterAddress:
    location, _, path = rest.partition("/")
    if path.strip("/") or "?" in rest:
        raise ValueError("a redis+cluster:// URL names nodes only: a cluster has no database")
    username, password, nodes = _location(location, CLUSTER_PORT)
    return ClusterAddress(nodes=nodes, username=username, password=password)


def _location(
    location: str, default_port: int
) -> tuple[str | None, str | None, tuple[tuple[str, int], ...]]:
    userinfo, at, hosts = location.rpartition("@")
    if not at:
        userinfo, hosts = "", location
    username, password = _credentials(userinfo)
    return username, password, tuple(_host_port(part, default_port) for part in hosts.split(","))


def _parse_sentinel(rest: str) -> SentinelAddress:
    rest, _, query = rest.partition("?")
    location, _, path = rest.partition("/")
    username, password, sentinels = _location(location, SENTINEL_PORT)
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


def _host_port(part: str, default_port: int) -> tuple[str, int]:
    if not part:
        raise ValueError("the URL must list at least one host[:port]")
    if part.startswith("["):  # [IPv6]:port
        host, bracket, port = part[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            raise ValueError(f"cannot read the address {part!r}")
        port = port[1:]
    else:
        host, _, port = part.rpartition(":") if ":" in part else (part, "", "")
    if not host:
        raise ValueError(f"cannot read the address {part!r}")
    if not port:
        return host, default_port
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"the address {part!r} has no valid port")
    return host, int(port)
