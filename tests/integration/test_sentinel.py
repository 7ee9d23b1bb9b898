"""Spool's Redis clients on a Sentinel-managed primary (real redis-server and Sentinel
processes): they find the primary, and follow a failover without being rebuilt, whether
the old primary died or was demoted to a replica."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.redis.clients import create_redis
from shared.settings import Settings
from tests.integration.test_hub import SETTINGS, Harness, collect, text_of, texts
from tests.redis_topology import SERVICE, SentinelSet

T = TypeVar("T")


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[SentinelSet]:
    # Not shorter: on a loaded machine, half a second without an answer can be a primary
    # starved of CPU rather than a dead one, and a failover the test did not ask for.
    topology = SentinelSet(tmp_path, replicas=1, sentinels=3, down_after_ms=1500).start()
    yield topology
    topology.stop()


@pytest.fixture
async def clients(sentinels: SentinelSet) -> AsyncIterator[tuple[Redis, Redis]]:
    settings = Settings.model_validate({**SETTINGS.model_dump(), "redis_url": sentinels.url})
    pooled, mux = create_redis(settings), create_redis(settings, multiplexed=True)
    yield pooled, mux
    await pooled.aclose()
    await mux.aclose()


async def eventually(action: Callable[[], Awaitable[T]], timeout_s: float = 20.0) -> T:
    """The first result of `action` that is not a Redis error (the failover window)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        try:
            return await action()
        except RedisError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_clients_find_the_primary_through_sentinel(
    sentinels: SentinelSet, clients: tuple[Redis, Redis]
) -> None:
    pooled, mux = clients
    await pooled.set("a", "1")
    await mux.set("b", "2")
    primary = sentinels.primary().client()
    assert primary.mget("a", "b") == [b"1", b"2"]
    # Replicated, so a failover keeps what was acknowledged before the last moment.
    sentinels.wait_replicated()
    assert sentinels.nodes[1].client().mget("a", "b") == [b"1", b"2"]


@pytest.mark.parametrize("how", ["killed", "demoted"])
async def test_clients_follow_a_failover(
    sentinels: SentinelSet, clients: tuple[Redis, Redis], how: str
) -> None:
    pooled, mux = clients
    await pooled.set("before", "1")
    await mux.incr("counter")
    old = sentinels.primary()
    # Replicated before the failover, however loaded the machine: Sentinel promotes a
    # replica as it is, so a write it has not received yet is rightly lost (and the count
    # below would start over).
    sentinels.wait_replicated()
    if how == "killed":
        old.kill()
    else:
        # A coordinated failover: the old primary lives on as a replica, so clients still
        # connected to it get READONLY for writes until they move.
        sentinels.sentinels[0].client().execute_command("SENTINEL", "FAILOVER", SERVICE)
    new = sentinels.wait_failover(old)
    assert new is not old
    if how == "demoted":
        # Until Sentinel has turned it into a replica, the old primary still takes writes,
        # which its resync then drops: the window README's Sentinel section describes.
        sentinels.wait_demoted(old)
    # The same clients, never rebuilt, now write to the new primary.
    assert await eventually(lambda: mux.incr("counter")) == 2
    assert await eventually(lambda: pooled.set("after", "1"))
    assert new.client().mget("before", "after", "counter") == [b"1", b"1", b"2"]


async def test_the_stream_hub_follows_a_failover(
    sentinels: SentinelSet, clients: tuple[Redis, Redis]
) -> None:
    _, mux = clients
    async with Harness(mux) as harness:
        first = await harness.new_stream()
        reader = harness.hub.open(first, "0-0", 1)
        waiting = asyncio.create_task(collect(harness.hub, reader))
        writer = harness.appender.writer(first, "attempt", 0)
        await writer.write(texts(3))
        await writer.flush()
        old = sentinels.primary()
        sentinels.wait_replicated()  # however loaded the machine
        old.kill()
        # The reader does not hang on a dead primary: it ends with the error its tail
        # turns into an event (its client resumes by Last-Event-ID).
        with pytest.raises((RedisError, OSError)):
            await asyncio.wait_for(waiting, 15)
        sentinels.wait_failover(old)
        # The same hub and appender serve streams on the new primary.
        sid = await eventually(harness.new_stream)
        task = asyncio.create_task(collect(harness.hub, harness.hub.open(sid, "0-0", 1)))
        writer = harness.appender.writer(sid, "attempt", 0)
        await writer.write(texts(5))
        await writer.flush()
        await harness.finish(sid, writer.held)
        assert text_of(await asyncio.wait_for(task, 15)) == [f"t{i}" for i in range(5)]
        # And the first stream, written before the failover, was replicated whole.
        held = await harness.store.read(first, "0-0", block_ms=None)
        assert text_of(held) == ["t0", "t1", "t2"]
