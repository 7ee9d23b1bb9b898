"""Building Spool's Redis client from settings."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_mux import MuxPool
from shared.settings import Settings

CONNECT_TIMEOUT_S = 2.0
REDIS_BLIP_ERRORS = (RedisConnectionError, RedisTimeoutError)
"""What a short Redis outage (a failover, a restart) raises: worth sending again."""

log = logging.getLogger(__name__)
T = TypeVar("T")


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
    `shared.redis_mux`): no blocking commands and no WATCH through such a client."""
    redis_url = url or settings.redis_url
    if not redis_url:
        raise ValueError("no Redis URL: set REDIS_URL, or run `spool dev` for an embedded Redis")
    # Blocking stream reads wait up to one keep-alive interval; the socket timeout must
    # outlast them, yet still notice a Redis that stopped answering.
    socket_timeout = settings.keepalive_interval_s + 10.0
    if multiplexed:
        mux = MuxPool.from_url(
            redis_url,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=socket_timeout,
            socket_keepalive=True,
        )
        return Redis(connection_pool=mux)
    pool = BlockingConnectionPool.from_url(
        redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=5,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=socket_timeout,
        socket_keepalive=True,
    )
    return Redis(connection_pool=pool)
