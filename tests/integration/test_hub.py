"""The stream hub against a real redis-server: shared reads, late and slow readers,
trimming, a Redis restart under hundreds of waiting readers, and its connection count."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from api import hub as hub_module
from api.hub import Reader, StreamHub
from shared import events as ev
from shared import keys
from shared.errors import EventsLost, ResumePointExpired, StreamNotFound
from shared.redis.clients import DataRedis, create_redis
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings
from shared.store import Entry, Status, StreamStore
from shared.supervise import cancel_and_wait, supervise
from shared.transcript import Transcript
from worker.appender import Appender

SETTINGS = Settings.model_validate(
    {"retention_s": 600, "keepalive_interval_s": 0.2, "redis_retry_s": 0.5}
)


class Harness:
    """A hub and a worker-side appender on one Redis, as an API and a worker hold them."""

    def __init__(
        self, redis: DataRedis, settings: Settings = SETTINGS, control: Redis | None = None
    ) -> None:
        self.data = redis
        self.store = StreamStore(redis, settings, control)
        self.hub = StreamHub(redis, self.store, tick_s=settings.keepalive_interval_s)
        self.appender = Appender(self.store, settings)
        self.settings = settings

    async def __aenter__(self) -> Harness:
        self.tasks = [supervise("hub", self.hub.run), supervise("ticks", self.hub.tick_forever)]
        self.appender.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.appender.stop()
        for task in self.tasks:
            await cancel_and_wait(task)

    async def new_stream(self) -> str:
        stream_id = uuid.uuid4().hex
        await self.store.create(
            stream_id, surface="openai.chat", model="demo", request={}, render={}, owner="k"
        )
        claim = await self.store.claim(stream_id, "attempt", "worker")
        assert claim.outcome == "claimed"
        return stream_id

    async def write_texts(self, stream_id: str, count: int, batch: int) -> None:
        """Writes t0 … t<count - 1> to the stream, `batch` at a time, then ends it."""
        writer = self.appender.writer(stream_id, "attempt", 0)
        for i in range(0, count, batch):
            await writer.write(texts(min(batch, count - i), i))
            await asyncio.sleep(0)
        await writer.flush()
        await self.finish(stream_id, writer.held)

    async def finish(self, stream_id: str, held: int) -> None:
        await self.store.finish(
            stream_id,
            "attempt",
            status=Status.COMPLETED,
            terminal=ev.Finish(reason="stop"),
            transcript=Transcript(finish_reason="stop"),
        )


def texts(n: int, start: int = 0) -> list[ev.Event]:
    return [ev.TextDelta(text=f"t{i}") for i in range(start, start + n)]


async def collect(hub: StreamHub, reader: Reader) -> list[Entry]:
    """Everything the reader gets, to its terminal event."""
    got: list[Entry] = []
    async with contextlib.aclosing(hub.follow(reader)) as batches:
        async for batch in batches:
            got.extend(batch or [])
    return got


def count_reads(store: StreamStore, streams: list[str] | None = None) -> list[str]:
    """The positions readers read streams after through `store`, from now on (and in
    `streams`, the streams read)."""
    reads: list[str] = []
    read = store.read

    async def counting_read(stream_id: str, after: str, **kwargs: Any) -> list[Entry]:
        reads.append(after)
        if streams is not None:
            streams.append(stream_id)
        return await read(stream_id, after, **kwargs)

    store.read = counting_read  # type: ignore[method-assign]
    return reads


def text_of(entries: list[Entry]) -> list[str]:
    return [e.event.text for e in entries if isinstance(e.event, ev.TextDelta)]


async def wait_confirmed(reader: Reader) -> None:
    async with asyncio.timeout(5):
        while not reader.sub.confirmed:  # noqa: ASYNC110 (the hub offers nothing to wait on)
            await asyncio.sleep(0.01)


async def holding(reader: Reader, count: int) -> None:
    """Until the hub has handed the reader `count` entries it has not taken yet."""
    async with asyncio.timeout(5):
        while len(reader.queue) < count:  # noqa: ASYNC110 (the hub offers nothing to wait on)
            await asyncio.sleep(0.01)


async def connected(hub: StreamHub) -> StreamHub:
    """The hub once its connection is up (a reader opened before that reads its stream
    once the connection is made, as after any reconnect)."""
    first = hub.open(uuid.uuid4().hex, "0-0", 1)
    await wait_confirmed(first)
    first.close()
    return hub


async def create_and_claim(harness: Harness, sid: str) -> int:
    """A stream made as the API makes one; returns the listeners Redis counted."""
    listeners = await harness.store.create(
        sid, surface="openai.chat", model="demo", request={}, render={}, owner="k"
    )
    assert (await harness.store.claim(sid, "attempt", "worker")).outcome == "claimed"
    return listeners


@pytest.fixture
async def harness(redis: Redis) -> AsyncIterator[Harness]:
    async with Harness(redis) as h:
        yield h


async def test_many_readers_of_one_stream_get_identical_events(harness: Harness) -> None:
    sid = await harness.new_stream()
    readers = [harness.hub.open(sid, "0-0", 1) for _ in range(50)]
    results = [asyncio.create_task(collect(harness.hub, r)) for r in readers]
    assert harness.hub.streams == 1  # fifty readers, one subscription
    await harness.write_texts(sid, 301, 7)
    got = await asyncio.wait_for(asyncio.gather(*results), 10)
    expected = [f"t{i}" for i in range(301)]
    for entries in got:
        assert text_of(entries) == expected
        assert [e.seq for e in entries] == list(range(1, len(entries) + 1))
        assert entries == got[0]
        assert isinstance(entries[-1].event, ev.Finish)
    assert harness.hub.streams == 0  # the last reader gone, the channel is given up


async def test_readers_join_before_the_first_event_midstream_and_after_the_end(
    harness: Harness,
) -> None:
    sid = await harness.new_stream()
    early = asyncio.create_task(collect(harness.hub, harness.hub.open(sid, "0-0", 1)))
    writer = harness.appender.writer(sid, "attempt", 0)
    await writer.write(texts(40))
    await writer.flush()
    entries = await harness.store.read_range(sid, "-", "+")
    middle = entries[19]
    # Mid-stream: from the start (a full replay) and from the 20th event.
    replay = asyncio.create_task(collect(harness.hub, harness.hub.open(sid, "0-0", 1)))
    resumed = asyncio.create_task(
        collect(harness.hub, harness.hub.open(sid, middle.id, middle.seq + 1))
    )
    await writer.write(texts(40, 40))
    await writer.flush()
    await harness.finish(sid, writer.held)
    everything = [f"t{i}" for i in range(80)]
    assert text_of(await asyncio.wait_for(early, 10)) == everything
    assert text_of(await asyncio.wait_for(replay, 10)) == everything
    assert text_of(await asyncio.wait_for(resumed, 10)) == everything[20:]
    # After the end: the whole stream from the stream itself, terminal included.
    late = await asyncio.wait_for(collect(harness.hub, harness.hub.open(sid, "0-0", 1)), 10)
    assert text_of(late) == everything and isinstance(late[-1].event, ev.Finish)


async def test_a_new_reader_handed_its_first_events_does_not_read_the_stream(
    harness: Harness,
) -> None:
    """A new stream's first events often reach its reader on the live channel before the
    reader has read the stream once: they continue its position, so it skips that read.
    A reader whose handed entries start past its position still reads what it missed."""
    sid = await harness.new_stream()
    reader = harness.hub.open(sid, "0-0", 1)
    await wait_confirmed(reader)
    writer = harness.appender.writer(sid, "attempt", 0)
    await writer.write(texts(3))
    await writer.flush()
    await holding(reader, 3)
    late = harness.hub.open(sid, "0-0", 1)  # its live entries will start at the 4th
    reads = count_reads(harness.store)
    following = asyncio.create_task(collect(harness.hub, late))
    await writer.write(texts(2, 3))
    await writer.flush()
    await harness.finish(sid, writer.held)
    got = await asyncio.wait_for(collect(harness.hub, reader), 10)
    assert text_of(got) == [f"t{i}" for i in range(5)]
    assert [e.seq for e in got] == list(range(1, 7))
    assert text_of(await asyncio.wait_for(following, 10)) == [f"t{i}" for i in range(5)]
    assert reads == ["0-0"]  # the late reader's, none of the first one's


async def test_a_stream_created_while_the_hub_listens_is_never_read(harness: Harness) -> None:
    """The API opens a new stream's reader before it stores the job: when Redis counts
    the hub's subscription as the record is made, every event comes on the channel, and
    the reader reads nothing from the stream."""
    sid = uuid.uuid4().hex
    reader = (await connected(harness.hub)).open(sid, "0-0", 1)
    await wait_confirmed(reader)
    reads = count_reads(harness.store)
    assert await create_and_claim(harness, sid) == 1
    reader.heard_from_start()
    following = asyncio.create_task(collect(harness.hub, reader))
    await harness.write_texts(sid, 40, 4)
    got = await asyncio.wait_for(following, 10)
    assert text_of(got) == [f"t{i}" for i in range(40)]
    assert [e.seq for e in got] == list(range(1, 42))
    assert reads == []


async def test_a_stream_created_before_the_hub_listens_is_read(harness: Harness) -> None:
    """Nobody listened as the record was made (Redis counts none): the reader reads
    what was written before its subscription."""
    sid = uuid.uuid4().hex
    assert await create_and_claim(harness, sid) == 0
    writer = harness.appender.writer(sid, "attempt", 0)
    await writer.write(texts(3))
    await writer.flush()
    reads = count_reads(harness.store)
    reader = harness.hub.open(sid, "0-0", 1)
    following = asyncio.create_task(collect(harness.hub, reader))
    await wait_confirmed(reader)
    await writer.write(texts(2, 3))
    await writer.flush()
    await harness.finish(sid, writer.held)
    assert text_of(await asyncio.wait_for(following, 10)) == [f"t{i}" for i in range(5)]
    assert reads[0] == "0-0"


async def test_a_reconnect_before_the_creation_answers_keeps_the_read(
    harness: Harness, redis: Redis
) -> None:
    """The hub's connection drops after Redis counted its subscription: what was
    published meanwhile reached nobody, so the reader still reads the stream, though
    the creation's answer (which comes later) says the hub listened."""
    sid = uuid.uuid4().hex
    reader = (await connected(harness.hub)).open(sid, "0-0", 1)
    await wait_confirmed(reader)
    assert await create_and_claim(harness, sid) == 1
    assert reader.fresh
    link = reader.sub.link
    assert link is not None and link.task is not None
    await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
    writer = harness.appender.writer(sid, "attempt", 0)
    await writer.write(texts(3))  # published while the hub is not listening
    await writer.flush()
    async with asyncio.timeout(5):
        while reader.fresh:  # noqa: ASYNC110 (the link's reconnect marks its readers)
            await asyncio.sleep(0.01)
    reads = count_reads(harness.store)
    reader.heard_from_start()  # too late to count: the reader reads what it missed
    following = asyncio.create_task(collect(harness.hub, reader))
    await harness.finish(sid, writer.held)
    assert text_of(await asyncio.wait_for(following, 10)) == ["t0", "t1", "t2"]
    assert reads and reads[0] == "0-0"


async def test_a_read_of_its_own_keeps_a_later_creation_answer_from_skipping_reads(
    harness: Harness,
) -> None:
    sid = await harness.new_stream()
    reads = count_reads(harness.store)
    reader = (await connected(harness.hub)).open(sid, "0-0", 1)
    following = asyncio.create_task(collect(harness.hub, reader))
    async with asyncio.timeout(5):
        while not reads:  # noqa: ASYNC110 (the hub offers nothing to wait on)
            await asyncio.sleep(0.01)
    assert not reader.fresh  # it read the stream once subscribed
    reader.must_read()
    reader.heard_from_start()  # an answer that comes too late to count
    assert reader.catch_up
    await harness.finish(sid, 0)
    await asyncio.wait_for(following, 10)


async def test_entries_held_from_before_a_reconnect_do_not_stand_for_a_read(
    redis: Redis,
) -> None:
    """A reader that holds entries handed over before the hub's connection dropped still
    reads the stream once it is back: what was published meanwhile reached nobody, and
    comes after what it holds (without waiting for its idle look, `tick_s` away)."""
    settings = SETTINGS.model_copy(update={"keepalive_interval_s": 60.0})
    async with Harness(redis, settings) as harness:
        sid = await harness.new_stream()
        reader = (await connected(harness.hub)).open(sid, "0-0", 1)
        await wait_confirmed(reader)
        writer = harness.appender.writer(sid, "attempt", 0)
        await writer.write(texts(3))
        await writer.flush()
        await holding(reader, 3)
        await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        await writer.write(texts(2, 3))  # published while the hub is not listening
        await writer.flush()
        await harness.finish(sid, writer.held)
        async with asyncio.timeout(5):
            while reader.fresh:  # noqa: ASYNC110 (the reconnect marks its readers)
                await asyncio.sleep(0.01)
        got = await asyncio.wait_for(collect(harness.hub, reader), 5)
        assert text_of(got) == [f"t{i}" for i in range(5)]
        assert isinstance(got[-1].event, ev.Finish)


@pytest.mark.parametrize(
    "message",
    [
        b"1796000000000-0 1 {}",  # the lines of an older version's messages
        b"1 1796000000000-0 1796000000000-1\n{}",  # fewer events than ids
        b"x 1796000000000-0\n{}",
        b"\xff\n{}",
    ],
)
async def test_a_live_message_not_in_the_format_makes_readers_read_the_stream(
    harness: Harness, redis: Redis, message: bytes
) -> None:
    sid = await harness.new_stream()
    writer = harness.appender.writer(sid, "attempt", 0)
    await writer.write(texts(2))
    await writer.flush()
    reader = harness.hub.open(sid, "0-0", 1)
    batches = harness.hub.follow(reader)
    first = await asyncio.wait_for(anext(batches), 5)
    assert first is not None and text_of(first) == ["t0", "t1"]
    reads = count_reads(harness.store)
    # Written to the stream without its live message, then a message nobody can read.
    await harness.store.redis.xadd(
        keys.stream_key(sid), {"e": ev.encode(ev.TextDelta(text="t2")), "n": 3}
    )
    await redis.hincrby(keys.job_key(sid), "appended", 1)
    await redis.publish(keys.live_channel(sid), message)
    await harness.finish(sid, 3)
    got: list[Entry] = []
    async with asyncio.timeout(10), contextlib.aclosing(batches):
        async for batch in batches:
            got.extend(batch or [])
    assert text_of(got) == ["t2"]
    assert [e.seq for e in got] == [3, 4]
    assert reads[:1] == [first[-1].id]


async def test_unreadable_live_messages_are_told_once_a_minute_at_most(
    harness: Harness, redis: Redis, caplog: pytest.LogCaptureFixture
) -> None:
    sid = await harness.new_stream()
    reader = harness.hub.open(sid, "0-0", 1)
    async with asyncio.timeout(5):
        while not reader.sub.confirmed:  # noqa: ASYNC110 (the hub offers nothing to wait on)
            await asyncio.sleep(0.01)
    with caplog.at_level("WARNING", logger="api.hub"):
        for _ in range(5):  # as a worker of another version writes every message
            await redis.publish(keys.live_channel(sid), b"1796000000000-0 1 {}")
        async with asyncio.timeout(5):
            while harness.hub._unreadable < 4:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    told = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(told) == 1 and told[0].startswith("1 unreadable live message(s)")
    reader.close()


def test_a_live_message_holds_its_batch_in_order() -> None:
    plain, other = ev.TextDelta(text="a b"), ev.TextDelta(text='say "hi"')
    message = b"7 1-0 1-1 2-0\n%s\n%s\n%s" % (
        ev.encode(plain),
        ev.encode(other),
        ev.encode(ev.Finish(reason="stop")),
    )
    entries = hub_module.parse_live(message)
    assert [(e.id, e.seq) for e in entries] == [("1-0", 7), ("1-1", 8), ("2-0", 9)]
    # A plain text stays as stored (rendered without decoding); the rest is decoded.
    assert entries[0].value == ev.encode(plain) and entries[0].event == plain
    assert entries[1:] == [Entry("1-1", 8, other), Entry("2-0", 9, ev.Finish(reason="stop"))]


async def test_a_reader_slower_than_the_stream_catches_up_without_gaps(
    harness: Harness,
) -> None:
    sid = await harness.new_stream()
    reader = harness.hub.open(sid, "0-0", 1)
    follow = harness.hub.follow(reader)
    got: list[Entry] = []
    writer = harness.appender.writer(sid, "attempt", 0)
    total = hub_module.QUEUE_LIMIT * 6 // 10 * 10
    async with contextlib.aclosing(follow):
        await writer.write(texts(10))
        got.extend(await anext(follow) or [])
        for i in range(10, total, 10):
            await writer.write(texts(10, i))
            await writer.flush()
        # Far more arrived than the hub holds for one reader: it let them go, and the
        # reader is to read them from the stream.
        await asyncio.sleep(0.05)
        assert reader.catch_up and len(reader.queue) <= hub_module.QUEUE_LIMIT + 10
        await harness.finish(sid, writer.held)
        async for batch in follow:
            got.extend(batch or [])
    assert text_of(got) == [f"t{i}" for i in range(total)]
    assert [e.seq for e in got] == list(range(1, total + 2))


async def test_a_stream_trimmed_under_a_slow_reader_is_an_error(redis: Redis) -> None:
    settings = Settings.model_validate({**SETTINGS.model_dump(), "stream_maxlen": 100})
    async with Harness(redis, settings) as harness:
        sid = await harness.new_stream()
        reader = harness.hub.open(sid, "0-0", 1)
        follow = harness.hub.follow(reader)
        writer = harness.appender.writer(sid, "attempt", 0)
        async with contextlib.aclosing(follow):
            # The reader reads nothing while 2,000 events go by a stream capped at 100.
            for i in range(0, 2000, 50):
                await writer.write(texts(50, i))
                await writer.flush()
            with pytest.raises(ResumePointExpired):
                async for _ in follow:
                    pass


async def test_a_redis_restart_ends_every_waiting_reader(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    redis = create_redis(SETTINGS, url=server.url)
    try:
        async with Harness(redis) as harness:
            streams = [await harness.new_stream() for _ in range(30)]
            readers = [harness.hub.open(sid, "0-0", 1) for sid in streams for _ in range(10)]
            tasks = [asyncio.create_task(collect(harness.hub, r)) for r in readers]
            writer = harness.appender.writer(streams[0], "attempt", 0)
            await writer.write(texts(3))
            await writer.flush()
            await asyncio.sleep(0.3)  # subscribed and waiting
            server.stop()
            outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 15)
            # Not one reader hangs: each ends with the error its tail turns into an event.
            assert all(isinstance(o, RedisError | OSError) for o in outcomes), outcomes
            assert harness.hub.streams == 0
            server.start()
            # Once Redis is back, the same hub serves new readers.
            sid = await harness.new_stream()
            task = asyncio.create_task(collect(harness.hub, harness.hub.open(sid, "0-0", 1)))
            writer = harness.appender.writer(sid, "attempt", 0)
            await writer.write(texts(5))
            await writer.flush()
            await harness.finish(sid, writer.held)
            assert text_of(await asyncio.wait_for(task, 15)) == [f"t{i}" for i in range(5)]
    finally:
        await redis.aclose()
        server.stop()


async def test_bursts_of_streams_keep_the_connection_count_constant(
    redis_server: EmbeddedRedis,
) -> None:
    # Readers wait for streams that are never written: no tick comes to look at them.
    settings = Settings.model_validate({**SETTINGS.model_dump(), "keepalive_interval_s": 60})
    redis = create_redis(settings, url=redis_server.url.replace("/0", "/1"))

    async def clients() -> int:
        # Other suites' processes come and go on the same server, on other databases.
        return sum(1 for c in await redis.client_list() if c.get("db") == "1")

    try:
        async with Harness(redis, settings) as harness:
            before = await clients()
            for _ in range(3):
                streams = [uuid.uuid4().hex for _ in range(1000)]
                readers = [harness.hub.open(sid, "0-0", 1) for sid in streams]
                follows = [asyncio.create_task(collect(harness.hub, r)) for r in readers]
                await asyncio.sleep(0.5)  # all subscribed, each has read its stream once
                assert harness.hub.streams == 1000
                counts = await redis.pubsub_numsub(*(f"spool:{{{s}}}:live" for s in streams[:5]))
                assert [n for _, n in counts] == [1] * 5
                assert await clients() - before <= settings.redis_max_connections
                for reader in readers:
                    reader.gone = True
                    reader.wake()
                await asyncio.wait_for(asyncio.gather(*follows), 10)
                assert harness.hub.streams == 0
            await asyncio.sleep(0.2)
            # Every channel is given up in Redis too.
            assert await redis.pubsub_numsub(*(f"spool:{{{s}}}:live" for s in streams[:5])) == [
                (f"spool:{{{s}}}:live".encode(), 0) for s in streams[:5]
            ]
            assert await clients() - before <= settings.redis_max_connections
    finally:
        await redis.aclose()


async def test_an_idle_reader_gets_keepalives_and_learns_when_its_stream_is_gone(
    harness: Harness,
) -> None:
    sid = await harness.new_stream()
    reader = harness.hub.open(sid, "0-0", 1)
    follow = harness.hub.follow(reader)
    async with contextlib.aclosing(follow):
        # Nothing is written: the reader is woken for a keep-alive, one tick at a time.
        assert await asyncio.wait_for(anext(follow), 2) is None
        assert await asyncio.wait_for(anext(follow), 2) is None
        await harness.store.redis.delete(keys.job_key(sid))  # the stream expires
        with pytest.raises(StreamNotFound):
            await asyncio.wait_for(anext(follow), 2)
    assert harness.hub.streams == 0


@pytest.mark.parametrize("with_reader", [False, True])
async def test_the_hub_keeps_its_connection_through_quiet_times(
    redis: Redis, monkeypatch: pytest.MonkeyPatch, with_reader: bool
) -> None:
    # Pings are answered in both of Redis' modes: a plain PONG while the hub listens to
    # nothing, a pub/sub pong while it does. Either way the connection is kept.
    monkeypatch.setattr(hub_module, "PING_INTERVAL_S", 0.1)
    connects = 0
    real_connect = StreamHub._connect

    async def counting(self: StreamHub, link: object) -> object:
        nonlocal connects
        connects += 1
        return await real_connect(self, link)  # type: ignore[arg-type]

    monkeypatch.setattr(StreamHub, "_connect", counting)
    async with Harness(redis) as harness:
        reader = harness.hub.open(await harness.new_stream(), "0-0", 1) if with_reader else None
        await asyncio.sleep(1.0)  # ten pings; three unanswered ones would drop it
        assert connects == 1
        if reader is not None:
            reader.close()


async def test_events_lost_by_redis_end_the_stream_visibly(harness: Harness, redis: Redis) -> None:
    # A failover to a replica that had not received the last two appends: Redis holds
    # three of the five events the worker wrote (and readers saw).
    sid = await harness.new_stream()
    live = harness.hub.open(sid, "0-0", 1)
    seen: list[Entry] = []
    writer = harness.appender.writer(sid, "attempt", 0)
    await writer.write(texts(5))
    await writer.flush()
    async with contextlib.aclosing(harness.hub.follow(live)) as batches:
        async for batch in batches:
            seen.extend(batch or [])
            if len(seen) == 5:
                break
    stream = keys.stream_key(sid)
    for entry in seen[3:]:
        await redis.xdel(stream, entry.id)
    await redis.hset(keys.job_key(sid), "appended", 3)

    # The worker's next append writes nothing and says what was lost ...
    await writer.write(texts(1, start=5))
    with pytest.raises(EventsLost, match="lost the last 2 event"):
        await writer.flush()
    assert await redis.xlen(stream) == 3
    # ... and the run ends with an error placed after everything it wrote.
    await harness.store.finish(
        sid,
        "attempt",
        status=Status.FAILED,
        terminal=ev.Error(code="events_lost", message="lost"),
        transcript=Transcript(),
        held=writer.held,
    )
    # A reader that saw all five gets the error next, from its last id (gone from Redis).
    after_all = await collect(harness.hub, harness.hub.open(sid, seen[-1].id, 6))
    assert [(e.seq, type(e.event)) for e in after_all] == [(6, ev.Error)]
    # A reader from the start meets the gap in the positions: an error, never a silent
    # jump from the third event to the end.
    with pytest.raises(ResumePointExpired):
        await collect(harness.hub, harness.hub.open(sid, "0-0", 1))
    with pytest.raises(ResumePointExpired):
        await harness.store.resume_point(sid, None)
    # Resuming from an event Redis lost is a 410 (no longer held), not a 400.
    with pytest.raises(ResumePointExpired, match="no longer held"):
        await harness.store.resume_point(sid, seen[-1].id)
    assert (await harness.store.resume_point(sid, seen[2].id)) == seen[2]
