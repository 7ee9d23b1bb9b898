"""Building Spool's Redis client from settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis, RedisCluster
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.connection import ConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_address import ClusterAddress, SentinelAddress, parse_redis_url
from shared.redis_mux import MuxPool, NodeMuxes, NodeMuxLease
from shared.settings import Settings

CONNECT_TIMEOUT_S = 2.0
REDIS_BLIP_ERRORS = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)
"""What a short Redis outage (a failover, a restart, a cluster whose master is being
replaced or whose slot is moving) raises: worth sending again."""

log = logging.getLogger(__name__)
T = TypeVar("T")

DataRedis = Redis | RedisCluster
"""What holds streams and job records: one Redis (or Sentinel's primary), or a Cluster."""


async def with_redis_retry(settings: Settings, action: Callable[[], Awaitable[T]]) -> T:
    """Ride out a short Redis outage (up to `redis_retry_s`) instead of failing: for
    writes that are idempotent, such as a worker's fenced appends and finishes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.redis_retry_s
    delay = 0.05
    while True:
        try:
            return await action()
        except REDIS_BLIP_ERRORS:
            if loop.time() + delay > deadline:
                raise
            log.warning("redis unreachable; retrying a stream write in %.2fs", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """A bounded pool whose connections go to the primary Sentinel names at connect time;
    callers wait (briefly) for a free connection, as with the plain pool."""


class _SentinelMuxPool(MuxPool, SentinelConnectionPool):
    """The multiplexed connection (see `shared.redis_mux`), to the primary Sentinel names;
    it asks again whenever it reconnects (a failover breaks it, or demotes its server, whose
    READONLY answers then count as a broken connection)."""


def create_redis(
    settings: Settings,
    *,
    url: str | None = None,
    max_connections: int | None = None,
    multiplexed: bool = False,
) -> Redis:
    """A pooled client, holding at most `redis_max_connections` (or `max_connections`);
    pool exhaustion waits briefly and then fails as a connection error (the API answers
    503). With `multiplexed`, every command goes over one shared connection instead (see
    `shared.redis_mux`): no blocking commands and no WATCH through such a client. The URL
    may name a Sentinel-managed primary (see `shared.redis_address`)."""
    redis_url = url or settings.redis_url
    if not redis_url:
        raise ValueError("no Redis URL: set REDIS_URL, or run `spool dev` for an embedded Redis")
    socket = _socket_options(settings)
    limits = {"max_connections": max_connections or settings.redis_max_connections, "timeout": 5}
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
            pool = _SentinelMuxPool(**target)
        else:
            pool = _BlockingSentinelPool(**target, **limits)  # type: ignore[no-untyped-call]
    elif multiplexed:
        pool = MuxPool.from_url(address, **socket)
    else:
        pool = BlockingConnectionPool.from_url(address, **limits, **socket)
    return Redis(connection_pool=pool)


def create_data_redis(settings: Settings, *, multiplexed: bool = False) -> DataRedis:
    """The client for streams and job records (REDIS_URL): as `create_redis` for one
    Redis or Sentinel; for a Redis Cluster, a cluster client that routes each command by
    its key's slot, follows MOVED/ASK and learns a failed-over master's replacement. With
    `multiplexed`, it holds one multiplexed connection per node; else up to
    `redis_max_connections` per node."""
    if not settings.redis_url:
        raise ValueError("no Redis URL: set REDIS_URL, or run `spool dev` for an embedded Redis")
    address = parse_redis_url(settings.redis_url)
    if not isinstance(address, ClusterAddress):
        return create_redis(settings, multiplexed=multiplexed)
    client: RedisCluster = RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in address.nodes],
        username=address.username,
        password=address.password,
        max_connections=2**31 if multiplexed else settings.redis_max_connections,
        **_socket_options(settings),
    )
    if multiplexed:
        # Each node's "connections" become leases on one multiplexed connection to it
        # (nodes are made from these arguments when the client learns the slot map).
        client.connection_kwargs["connection_class"] = NodeMuxLease
        client.connection_kwargs["muxes"] = NodeMuxes()
    return client


def create_control_redis(
    settings: Settings, *, max_connections: int | None = None, multiplexed: bool = False
) -> Redis:
    """The client for the queue, the job indexes, API keys and limits: SPOOL_QUEUE_URL,
    or REDIS_URL when that is one Redis (see `Settings.queue_url`)."""
    return create_redis(
        settings,
        url=settings.control_url,
        max_connections=max_connections,
        multiplexed=multiplexed,
    )


def _socket_options(settings: Settings) -> dict[str, Any]:
    # Blocking stream reads wait up to one keep-alive interval; the socket timeout must
    # outlast them, yet still notice a Redis that stopped answering.
    return {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": settings.keepalive_interval_s + 10.0,
        "socket_keepalive": True,
    }


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
