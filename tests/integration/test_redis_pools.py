"""Pooled Redis clients against a real redis-server: bounded, named, and idle connections
closed after a burst."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from shared.redis import clients as redis_module
from shared.redis.clients import client_name, create_redis
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings


async def test_a_burst_is_bounded_and_its_connections_are_closed_when_idle(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = client_name("test", "pool")
    url = redis_server.url.replace("/0", "/7")
    pool = create_redis(Settings(), url=url, max_connections=8, name=name)
    admin = Redis.from_url(url)

    async def held() -> int:
        return sum(1 for c in await admin.client_list() if c["name"] == name)

    try:
        # Twenty callers that each hold a connection for a moment (a blocking read).
        await asyncio.gather(*(pool.blpop([f"none-{n}"], timeout=0.2) for n in range(20)))
        assert await held() == 8  # the bound, not one per caller
        monkeypatch.setattr(redis_module, "POOL_IDLE_CLOSE_S", 0.2)
        await asyncio.sleep(0.3)
        await pool.ping()  # a release closes what sat idle too long, keeping one
        assert await held() == 1
        await asyncio.gather(*(pool.ping() for _ in range(3)))
        assert 1 <= await held() <= 3
    finally:
        await pool.aclose(close_connection_pool=True)
        await admin.aclose()
