"""Building Spool's Redis client from settings."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis.address import ClusterAddress, SentinelAddress, parse_redis_url
from shared.redis.mux import MuxPool, NodeMuxes, NodeMuxLease
from shared.settings import Settings

CONNECT_TIMEOUT_S = 2.0
POOL_WAIT_S = 5  # a caller waits this long for a free pooled connection, then fails
POOL_IDLE_CLOSE_S = 30.0  # a pooled connection unused this long is closed ...
POOL_IDLE_FLOOR = 1  # ... unless the pool would keep fewer idle ones than this
REDIS_BLIP_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)
"""What a short Redis outage (a failover, a restart, a frozen server, a cluster whose
master is being replaced or whose slot is moving, a server at `maxclients`, whose
"ERR max number of clients reached" redis-py raises as a ConnectionError) raises: worth
sending again."""

log = logging.getLogger(__name__)
T = TypeVar("T")

DataRedis = Redis | RedisCluster
"""What holds streams and job records: one Redis (or Sentinel's primary), or a Cluster."""


async def with_redis_retry(settings: Settings, action: Callable[[], Awaitable[T]]) -> T:
    """Ride out a short Redis outage (up to `redis_retry_s` from the first failure) instead
    of failing: for writes that are idempotent, such as a worker's fenced appends and
    finishes. The window starts when an attempt fails, not when the first was sent: a
    frozen Redis makes that attempt wait out the socket timeout first."""
    loop = asyncio.get_running_loop()
    deadline: float | None = None
    delay = 0.05
    while True:
        try:
            return await action()
        except REDIS_BLIP_ERRORS:
            if deadline is None:
                deadline = loop.time() + settings.redis_retry_s
            if loop.time() + delay > deadline:
                raise
            log.warning("redis unreachable; retrying a stream write in %.2fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def client_name(role: str, use: str) -> str:
    """The name a process's connections carry in Redis (CLIENT LIST), e.g.
    `spool-api-4242-mux`: which process holds them, and what for."""
    return f"spool-{role}-{os.getpid()}-{use}"


class RedisOutage:
    """How a background loop lives through Redis being out of reach (down, frozen, failing
    over, or full at `maxclients`): one warning when the outage starts and one line when it
    ends, not one per attempt, and a growing but bounded wait between attempts."""

    def __init__(self, what: str, backoff_s: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.0)):
        self.what = what
        self.backoff_s = backoff_s
        self.failures = 0
        self._since = 0.0

    def failed(self, error: BaseException) -> float:
        """Note a failed attempt; returns how long to wait before the next."""
        loop = asyncio.get_running_loop()
        if self.failures == 0:
            self._since = loop.time()
            log.warning("%s cannot reach redis (%s: %s); retrying until it can",
                        self.what, type(error).__name__, error)  # fmt: skip
        else:
            log.debug("%s still cannot reach redis: %s", self.what, error)
        delay = self.backoff_s[min(self.failures, len(self.backoff_s) - 1)]
        self.failures += 1
        return delay

    async def wait(self, error: BaseException) -> None:
        await asyncio.sleep(self.failed(error))

    def ok(self) -> None:
        """Note a successful attempt: ends the outage, if there was one."""
        if self.failures:
            took = asyncio.get_running_loop().time() - self._since
            log.warning("%s reached redis again after %.1fs", self.what, took)
            self.failures = 0


class _BoundedPool(BlockingConnectionPool):
    """At most `max_connections` connections; a caller waits (briefly) for a free one.
    redis-py never closes a pooled connection by itself, so a burst would leave its
    connections open for good: each release also closes those left unused for
    `POOL_IDLE_CLOSE_S`, keeping `POOL_IDLE_FLOOR` idle ones."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._released_at: dict[AbstractConnection, float] = {}

    async def release(self, connection: AbstractConnection) -> None:
        now = asyncio.get_running_loop().time()
        self._released_at[connection] = now
        await super().release(connection)
        # The pool hands out the most recently released first, so the oldest lead the list.
        idle = self._available_connections
        stale = []
        while len(idle) > POOL_IDLE_FLOOR and self._released_at.get(idle[0], now) < (
            now - POOL_IDLE_CLOSE_S
        ):
            stale.append(idle.pop(0))
        for conn in stale:
            self._released_at.pop(conn, None)
            try:
                await conn.disconnect(nowait=True)
            except Exception as exc:  # already broken: nothing left to close
                log.debug("closing an idle redis connection failed: %s", exc)

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:
            self._released_at.clear()


class _BlockingSentinelPool(SentinelConnectionPool, _BoundedPool):
    """A bounded pool whose connections go to the primary Sentinel names at connect time;
    callers wait (briefly) for a free connection, as with the plain pool."""


class _SentinelMuxPool(MuxPool, SentinelConnectionPool):
    """The multiplexed connection (see `shared.redis.mux`), to the primary Sentinel names;
    it asks again whenever it reconnects (a failover breaks it, or demotes its server, whose
    READONLY answers then count as a broken connection)."""


def create_redis(
    settings: Settings,
    *,
    url: str | None = None,
    max_connections: int | None = None,
    multiplexed: bool = False,
    name: str | None = None,
    command_timeout: float | None = None,
) -> Redis:
    """A pooled client, holding at most `redis_max_connections` (or `max_connections`);
    pool exhaustion waits briefly and then fails as a connection error (the API answers
    503). With `multiplexed`, every command goes over one shared connection instead (see
    `shared.redis.mux`): no blocking commands and no WATCH through such a client, and
    with `command_timeout` no caller waits longer than that for its replies. The URL
    may name a Sentinel-managed primary (see `shared.redis.address`). `name` is the
    connections' client name in Redis (see `client_name`)."""
    redis_url = url or settings.redis_url
    if not redis_url:
        raise ValueError("no Redis URL: set REDIS_URL, or run `spool dev` for an embedded Redis")
    socket = _socket_options(settings, name)
    limits = {
        "max_connections": max_connections or settings.redis_max_connections,
        "timeout": POOL_WAIT_S,
    }
    mux = {"command_timeout": command_timeout}
    address = parse_redis_url(redis_url)
    pool: ConnectionPool
    if isinstance(address, ClusterAddress):
        raise ValueError("a Redis Cluster holds streams only (see create_data_redis)")
    if isinstance(address, SentinelAddress):
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            address.sentinels,
            sentinel_kwargs={
                "username": address.sentinel_username,
                "password": address.sentinel_password,
                **socket,
            },
        )
        target = {
            "service_name": address.service,
            "sentinel_manager": sentinel,
            "db": address.db,
            "username": address.username,
            "password": address.password,
            **socket,
        }
        if multiplexed:
            pool = _SentinelMuxPool(**target, **mux)
        else:
            pool = _BlockingSentinelPool(**target, **limits)  # type: ignore[no-untyped-call]
    elif multiplexed:
        pool = MuxPool.from_url(address, **socket, **mux)
    else:
        pool = _BoundedPool.from_url(address, **limits, **socket)
    return Redis(connection_pool=pool)


def create_data_redis(
    settings: Settings,
    *,
    multiplexed: bool = False,
    name: str | None = None,
    command_timeout: float | None = None,
) -> DataRedis:
    """The client for streams and job records (REDIS_URL): as `create_redis` for one
    Redis or Sentinel; for a Redis Cluster, a cluster client that routes each command by
    its key's slot, follows MOVED/ASK and learns a failed-over master's replacement. With
    `multiplexed`, it holds one multiplexed connection per node; else up to
    `redis_max_connections` per node."""
    if not settings.redis_url:
        raise ValueError("no Redis URL: set REDIS_URL, or run `spool dev` for an embedded Redis")
    address = parse_redis_url(settings.redis_url)
    if not isinstance(address, ClusterAddress):
        return create_redis(
            settings, multiplexed=multiplexed, name=name, command_timeout=command_timeout
        )
    client: RedisCluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        username=address.username,
        password=address.password,
        max_connections=2**31 if multiplexed else settings.redis_max_connections,
        **_socket_options(settings, name),
    )
    if multiplexed:
        # Each node's "connections" become leases on one multiplexed connection to it
        # (nodes are made from these arguments when the client learns the slot map).
        client.connection_kwargs["connection_class"] = NodeMuxLease
        client.connection_kwargs["muxes"] = NodeMuxes(command_timeout)
    return client


def create_control_redis(
    settings: Settings,
    *,
    max_connections: int | None = None,
    multiplexed: bool = False,
    name: str | None = None,
    command_timeout: float | None = None,
) -> Redis:
    """The client for the queue, the job indexes, API keys and limits: SPOOL_QUEUE_URL,
    or REDIS_URL when that is one Redis (see `Settings.queue_url`)."""
    return create_redis(
        settings,
        url=settings.control_url,
        max_connections=max_connections,
        multiplexed=multiplexed,
        name=name,
        command_timeout=command_timeout,
    )


def _socket_options(settings: Settings, name: str | None = None) -> dict[str, Any]:
    # Blocking stream reads wait up to one keep-alive interval; the socket timeout must
    # outlast them, yet still notice a Redis that stopped answering.
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": settings.keepalive_interval_s + 10.0,
        "socket_keepalive": True,
    }
    if name is not None:
        options["client_name"] = name
    return options


async def ping(redis: DataRedis) -> None:
    """Raise unless the data Redis answers: for a Cluster, every master."""
    if isinstance(redis, RedisCluster):
        await redis.ping(target_nodes=RedisCluster.PRIMARIES)
    else:
        await redis.ping()


async def close_data_redis(redis: DataRedis) -> None:
    """Close the streams' client, and a cluster client's multiplexed node connections."""
    await redis.aclose()
    if isinstance(redis, RedisCluster):
        muxes = redis.connection_kwargs.get("muxes")
        if isinstance(muxes, NodeMuxes):
            await muxes.close()
