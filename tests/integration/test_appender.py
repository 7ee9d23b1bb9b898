"""Batched appends against a real redis-server: order and positions under many concurrent
writers, a lost reply that is not written twice, and a stale attempt fenced out."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from shared import events as ev
from shared import keys
from shared.errors import FenceLost
from shared.settings import Settings
from shared.store import AppendBatch, StreamStore
from worker.appender import Appender

SETTINGS = Settings.model_validate({"retention_s": 600, "redis_retry_s": 2})


class CountingStore(StreamStore):
    """Counts round trips; can lose the reply of the next one (written, then an error)."""

    round_trips = 0
    appends = 0
    lose_next_reply = False

    async def append_batches(self, batches: list[AppendBatch]) -> list[int | None]:
        assert all(batch.events for batch in batches), "an append with nothing in it"
        assert len({b.stream_id for b in batches}) == len(batches), "a stream twice in a pipeline"
        self.round_trips += 1
        self.appends += len(batches)
        outcome = await super().append_batches(batches)
        if self.lose_next_reply:
            self.lose_next_reply = False
            raise RedisConnectionError("connection reset while reading the reply")
        return outcome


@pytest.fixture
async def setup(redis: Redis) -> AsyncIterator[tuple[CountingStore, Appender]]:
    store = CountingStore(redis, SETTINGS)
    appender = Appender(store, SETTINGS)
    appender.start()
    yield store, appender
    await appender.stop()


async def new_job(store: StreamStore, attempt: str = "a1") -> str:
    stream_id = uuid.uuid4().hex
    await store.create(
        stream_id, surface="openai.chat", model="demo", request={}, render={}, owner="k"
    )
    assert (await store.claim(stream_id, attempt, "w")).outcome == "claimed"
    return stream_id


async def test_many_jobs_at_once_keep_order_and_positions_in_few_round_trips(
    setup: tuple[CountingStore, Appender],
) -> None:
    store, appender = setup
    streams = [await new_job(store) for _ in range(100)]
    per_stream = 200

    async def produce(stream_id: str) -> None:
        writer = appender.writer(stream_id, "a1", 0)
        for i in range(per_stream):
            await writer.write([ev.TextDelta(text=f"{stream_id[:4]}-{i}")])
            if i % 3 == 2:
                await asyncio.sleep(0)  # runs interleave, a few events per upstream read
        await writer.flush()
        assert writer.held == per_stream

    await asyncio.gather(*(produce(s) for s in streams))
    for stream_id in streams:
        entries = await store.read_range(stream_id, "-", "+")
        assert [e.seq for e in entries] == list(range(1, per_stream + 1))
        assert (
            [e.event.text for e in entries]
            == [  # type: ignore[union-attr]
                f"{stream_id[:4]}-{i}" for i in range(per_stream)
            ]
        )
        assert int(await store.redis.hget(keys.job_key(stream_id), "appended")) == per_stream
    # 20,000 events from 100 streams, written a few per turn: pipelines carry many
    # appends, and appends many events (how many depends on the machine's round trips).
    assert store.round_trips < 100 * per_stream / 20
    assert store.appends < 100 * per_stream / 5


async def test_a_batch_whose_reply_was_lost_is_not_written_twice(
    setup: tuple[CountingStore, Appender],
) -> None:
    store, appender = setup
    stream_id = await new_job(store)
    writer = appender.writer(stream_id, "a1", 0)
    await writer.write([ev.TextDelta(text="one"), ev.TextDelta(text="two")])
    await writer.flush()
    store.lose_next_reply = True
    await writer.write([ev.TextDelta(text="three"), ev.TextDelta(text="four")])
    await writer.flush()  # sent again after the lost reply
    await writer.write([ev.TextDelta(text="five")])
    await writer.flush()
    entries = await store.read_range(stream_id, "-", "+")
    assert [e.event.text for e in entries] == ["one", "two", "three", "four", "five"]  # type: ignore[union-attr]
    assert [e.seq for e in entries] == [1, 2, 3, 4, 5]


async def test_a_stale_attempt_cannot_append_any_part_of_a_batch(
    setup: tuple[CountingStore, Appender],
) -> None:
    store, appender = setup
    stream_id = await new_job(store)
    stale = appender.writer(stream_id, "a1", 0)
    await stale.write([ev.TextDelta(text="mine")])
    await stale.flush()
    # Another attempt takes the job over (the lease ran out and it was claimed again).
    await store.redis.hset(keys.job_key(stream_id), "attempt", "a2")
    await stale.write([ev.TextDelta(text=f"stale-{i}") for i in range(50)])
    with pytest.raises(FenceLost):
        await stale.flush()
    with pytest.raises(FenceLost):
        await stale.write([ev.TextDelta(text="again")])
    with pytest.raises(FenceLost):
        await stale.write([])  # nothing to write still says what happened
    with pytest.raises(FenceLost):
        stale.hand([ev.TextDelta(text="again")])  # the run's short path says it too
    entries = await store.read_range(stream_id, "-", "+")
    assert [e.event.text for e in entries] == ["mine"]  # type: ignore[union-attr]
    # The new attempt writes on from what the stream holds.
    fresh = appender.writer(stream_id, "a2", 1)
    await fresh.write([ev.TextDelta(text="theirs")])
    await fresh.flush()
    assert [e.seq for e in await store.read_range(stream_id, "-", "+")] == [1, 2]


async def test_a_lost_script_cache_is_loaded_again(
    setup: tuple[CountingStore, Appender], redis: Redis
) -> None:
    # A restarted Redis, or a replica promoted in a failover, holds no scripts.
    store, appender = setup
    stream_id = await new_job(store)
    writer = appender.writer(stream_id, "a1", 0)
    await writer.write([ev.TextDelta(text="before")])
    await writer.flush()
    await redis.script_flush()
    await writer.write([ev.TextDelta(text="after")])
    await writer.flush()
    texts = [e.text for _, e in await store.read_all(stream_id) if isinstance(e, ev.TextDelta)]
    assert texts == ["before", "after"]


async def test_closing_waits_for_the_append_in_flight_and_hands_back_the_rest(
    setup: tuple[CountingStore, Appender],
) -> None:
    store, appender = setup
    stream_id = await new_job(store)
    writer = appender.writer(stream_id, "a1", 0)
    assert writer.hand([ev.TextDelta(text="first")])  # the stream's first: sent at once
    await asyncio.sleep(0)  # the appender takes it: in flight
    writer.hand([ev.TextDelta(text="second")])
    writer.hand([ev.TextDelta(text="third")])
    rest = await writer.close()
    assert [e.text for e in rest if isinstance(e, ev.TextDelta)] == ["second", "third"]
    assert writer.held == 1
    await asyncio.sleep(0.05)  # nothing more goes out for it
    assert store.appends == 1
    assert [e.seq for e in await store.read_range(stream_id, "-", "+")] == [1]


async def test_closing_a_writer_still_queued_takes_it_out_of_the_queue(
    setup: tuple[CountingStore, Appender],
) -> None:
    store, appender = setup
    stream_id = await new_job(store)
    writer = appender.writer(stream_id, "a1", 0)
    writer.hand([ev.TextDelta(text="only")])  # queued; the appender has not run yet
    assert await writer.close() == [ev.TextDelta(text="only")]
    await asyncio.sleep(0.05)
    assert store.appends == 0
    assert await store.read_range(stream_id, "-", "+") == []


async def test_closing_raises_what_an_append_ran_into(
    setup: tuple[CountingStore, Appender],
) -> None:
    store, appender = setup
    stream_id = await new_job(store)
    writer = appender.writer(stream_id, "stale", 0)  # not the attempt that claimed it
    writer.hand([ev.TextDelta(text="x")])
    await asyncio.sleep(0)  # in flight
    writer.hand([ev.TextDelta(text="y")])
    with pytest.raises(FenceLost):
        await writer.close()
