"""A worker's idempotent writes ride out a Redis outage for `redis_retry_s` counted from
the first failure, however long that first attempt waited to fail."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from shared.redis.clients import with_redis_retry
from shared.settings import Settings


async def test_the_window_starts_when_an_attempt_fails() -> None:
    settings = Settings(redis_retry_s=0.3)
    attempts = 0

    async def write() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await asyncio.sleep(0.5)  # a frozen Redis: the socket timeout runs out first
            raise RedisConnectionError("Timeout reading from redis")
        if attempts == 2:
            raise RedisConnectionError("Connection refused")
        return "written"

    assert await with_redis_retry(settings, write) == "written"
    assert attempts == 3


async def test_an_outage_longer_than_the_window_fails() -> None:
    settings = Settings(redis_retry_s=0.2)
    attempts = 0

    async def write() -> None:
        nonlocal attempts
        attempts += 1
        raise RedisConnectionError("Connection refused")

    with pytest.raises(RedisConnectionError):
        await with_redis_retry(settings, write)
    assert 2 <= attempts <= 6
