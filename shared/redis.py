"""Building Spool's Redis client from settings."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis_mux import MuxPool
from shared.settings import Settings

CONNECT_TIMEOUT_S = 2.0
REDIS_BLIP_ERRORS = (RedisConnectionError, RedisTimeoutError)
"""What a short Redis outage (a failover, a restart) raises: worth sending again."""


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
