"""The stream store against a real redis-server: claims, fencing, cancel, resume points."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared import events as ev
from shared import keys
from shared.errors import FenceLost, InvalidResumeId, ResumePointExpired, StreamNotFound
from shared.queue import ArqJobQueue
from shared.reaper import Reaper
from shared.redis import lean
from shared.settings import Settings
from shared.store import Entry, Status, StreamStore
from shared.transcript import Transcript


def make_store(redis: Redis, **overrides: object) -> StreamStore:
    return StreamStore(redis, Settings.model_validate({"retention_s": 600, **overrides}))


async def append(store: StreamStore, sid: str, attempt: str, events: list[ev.Event]) -> list[str]:
    """Append as a worker does, counting what the stream already holds; returns the new ids."""
    held = int(await store.redis.hget(keys.job_key(sid), "appended") or 0)
    await store.append(sid, attempt, events, held=held)
    return [i for i, _ in (await store.read_all(sid))[-len(events) :]]


async def create(store: StreamStore, stream_id: str = "a" * 32) -> str:
    await store.create(
        stream_id,
        surface="openai.chat",
        model="demo",
        request={"x": 1},
        render={"id": "c"},
        owner="key_test",
    )
    return stream_id


async def test_create_and_get(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    record = await store.get(sid)
    assert record.status is Status.QUEUED
    assert record.request == {"x": 1} and record.render == {"id": "c"}
    assert 0 < await redis.ttl(keys.job_key(sid)) <= store.pending_ttl_s
    with pytest.raises(StreamNotFound):
        await store.get("b" * 32)


async def test_create_counts_who_listens_to_the_streams_channel(redis: Redis) -> None:
    store = make_store(redis)

    async def listeners(sid: str) -> int:
        return await store.create(
            sid, surface="openai.chat", model="demo", request={}, render={}, owner="k"
        )

    assert await listeners("c" * 32) == 0
    listener = redis.pubsub()
    await listener.subscribe(keys.live_channel("d" * 32))
    try:
        assert await listeners("d" * 32) == 1
        assert await listeners("e" * 32) == 0  # another stream's channel
    finally:
        await listener.aclose()


async def test_claim_is_exclusive_and_appends_are_fenced(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    first = await store.claim(sid, "attempt-1", "test-worker")
    assert first.outcome == "claimed"
    # A second attempt while the lease is live does not take over.
    assert (await store.claim(sid, "attempt-2", "test-worker")).outcome == "busy"
    ids = await append(store, sid, "attempt-1", [ev.Start(model="demo", provider="demo")])
    assert len(ids) == 1
    with pytest.raises(FenceLost):
        await append(store, sid, "attempt-2", [ev.TextDelta(text="intruder")])
    assert [e for _, e in await store.read_all(sid)] == [ev.Start(model="demo", provider="demo")]


async def test_expired_lease_after_output_is_claimed_as_lost(redis: Redis) -> None:
    store = make_store(redis, lease_s=0.05)
    sid = await create(store)
    await store.claim(sid, "attempt-1", "test-worker")
    await append(store, sid, "attempt-1", [ev.TextDelta(text="hi")])
    await redis.hset(keys.job_key(sid), "lease_until", 0)
    claim = await store.claim(sid, "attempt-2", "test-worker")
    assert claim.outcome == "lost"
    # The stale attempt is fenced out from here on.
    with pytest.raises(FenceLost):
        await append(store, sid, "attempt-1", [ev.TextDelta(text="late")])


async def test_expired_lease_before_output_is_claimed_cleanly(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "attempt-1", "test-worker")
    await redis.hset(keys.job_key(sid), "lease_until", 0)
    assert (await store.claim(sid, "attempt-2", "test-worker")).outcome == "claimed"


async def test_finish_sets_status_output_and_retention(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    await append(store, sid, "t", [ev.TextDelta(text="hello")])
    transcript = Transcript(text=["hello"], finish_reason="stop")
    await store.finish(sid, "t", status=Status.COMPLETED, terminal=ev.Finish(reason="stop"),
                       transcript=transcript)  # fmt: skip
    record = await store.get(sid)
    assert record.status is Status.COMPLETED and record.finished_at is not None
    assert record.output is not None and record.output["text"] == "hello"
    for key in (keys.job_key(sid), keys.stream_key(sid)):
        assert 0 < await redis.ttl(key) <= 600
    events = [e for _, e in await store.read_all(sid)]
    assert events[-1] == ev.Finish(reason="stop")
    assert (await store.claim(sid, "again", "test-worker")).outcome == "done"
    with pytest.raises(FenceLost):
        await store.finish(sid, "stale", status=Status.FAILED,
                           terminal=ev.Error(code="x", message="y"), transcript=Transcript())  # fmt: skip


async def test_cancel_queued_ends_the_stream_at_once(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    assert await store.request_cancel(sid) is Status.CANCELLED
    assert await store.request_cancel(sid) is Status.CANCELLED  # idempotent
    events = [e for _, e in await store.read_all(sid)]
    assert events == [ev.Finish(reason="cancelled")]
    assert (await store.claim(sid, "late-worker", "test-worker")).outcome == "done"


async def test_cancel_running_flags_the_worker(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    claim = await store.claim(sid, "t", "test-worker")
    assert not claim.cancel_requested
    assert await store.request_cancel(sid) is Status.RUNNING
    assert await store.cancel_requested(sid)
    assert await store.read_all(sid) == []
    with pytest.raises(StreamNotFound):
        await store.request_cancel("c" * 32)


async def test_release_hands_back_only_an_untouched_job(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    assert await store.release(sid, "t")
    assert (await store.get(sid)).status is Status.QUEUED
    await store.claim(sid, "u", "test-worker")
    await append(store, sid, "u", [ev.TextDelta(text="x")])
    assert not await store.release(sid, "u")


async def test_resume_points(redis: Redis) -> None:
    store = make_store(redis, stream_maxlen=100)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    ids: list[str] = []
    for i in range(500):
        ids += await append(store, sid, "t", [ev.TextDelta(text=str(i))])
    held = [i for i, _ in await store.read_all(sid)]
    assert len(held) < 500  # trimmed to about maxlen
    await store.resume_point(sid, held[0])
    await store.resume_point(sid, held[-1])
    with pytest.raises(ResumePointExpired):
        await store.resume_point(sid, ids[0])
    for bad in ("nonsense", "1-", "-1", "99999999999999-0", "1-0-0", "\uff11-0", "²-0"):
        with pytest.raises(InvalidResumeId):
            await store.resume_point(sid, bad)
    # An id inside the held range that is not an entry of this stream.
    ms, seq = held[-1].split("-")
    with pytest.raises(InvalidResumeId):
        await store.resume_point(sid, f"{ms}-{int(seq) + 1000}")


async def test_read_blocks_until_an_event_arrives(redis: Redis) -> None:
    import asyncio

    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    reader = asyncio.create_task(store.read(sid, "0-0", block_ms=5000))
    await asyncio.sleep(0.05)
    assert not reader.done()
    await append(store, sid, "t", [ev.TextDelta(text="wake")])
    entries = await asyncio.wait_for(reader, 2)
    assert [e.event for e in entries] == [ev.TextDelta(text="wake")]
    assert await store.read(sid, entries[-1].id, block_ms=10) == []


async def test_ids_before_an_untrimmed_stream_are_invalid_not_expired(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    await append(store, sid, "t", [ev.TextDelta(text="only")])
    for early in ("0-0", "1-1"):
        with pytest.raises(InvalidResumeId):
            await store.resume_point(sid, early)


async def test_an_expired_stream_is_410_not_404(redis: Redis) -> None:
    from shared.errors import StreamExpired

    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    await store.finish(sid, "t", status=Status.COMPLETED, terminal=ev.Finish(reason="stop"),
                       transcript=Transcript())  # fmt: skip
    await redis.delete(keys.job_key(sid), keys.stream_key(sid))  # what retention does
    with pytest.raises(StreamExpired) as expired:
        await store.get(sid)
    assert expired.value.status_code == 410
    with pytest.raises(StreamNotFound):
        await store.get("d" * 32)


async def test_entries_carry_their_position_and_trimming_is_detected(redis: Redis) -> None:
    store = make_store(redis, stream_maxlen=100)
    sid = await create(store)
    await store.claim(sid, "t", "w")
    assert await store.resume_point(sid, None) is None  # nothing trimmed: replay is fine
    for i in range(300):
        await append(store, sid, "t", [ev.TextDelta(text=str(i))])
    held = await store.read(sid, "0-0", block_ms=None, count=1000)
    assert [e.seq for e in held] == list(range(301 - len(held), 301))
    with pytest.raises(ResumePointExpired):
        await store.resume_point(sid, None)  # the start is gone: a replay would skip events
    point = await store.resume_point(sid, held[5].id)
    assert point is not None and point.seq == held[5].seq


async def test_appends_after_the_terminal_event_are_refused(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "w")
    await store.finish(sid, "t", status=Status.COMPLETED, terminal=ev.Finish(reason="stop"),
                       transcript=Transcript())  # fmt: skip
    with pytest.raises(FenceLost):
        await store.append(sid, "t", [ev.TextDelta(text="late")], held=1)


async def test_a_retried_append_is_not_written_twice(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "w")
    await store.append(sid, "t", [ev.TextDelta(text="once")], held=0)
    await store.append(sid, "t", [ev.TextDelta(text="once")], held=0)  # reply was "lost"
    assert [e for _, e in await store.read_all(sid)] == [ev.TextDelta(text="once")]


async def test_the_reaper_ends_a_cancelled_job_whose_worker_did_not_as_cancelled(
    redis: Redis,
) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "attempt-1", "test-worker")
    await append(store, sid, "attempt-1", [ev.TextDelta(text="partial")])
    assert await store.request_cancel(sid) is Status.RUNNING  # flagged; the worker is slow
    await redis.hset(keys.job_key(sid), "lease_until", 0)  # and its lease ran out
    reaper = Reaper(store, ArqJobQueue(redis), Settings())
    assert await reaper.settle(sid, await store.server_time_ms()) == 1
    record = await store.get(sid)
    assert record.status is Status.CANCELLED
    events = [e for _, e in await store.read_all(sid)]
    assert events[-1] == ev.Finish(reason="cancelled")
    assert (await store.transcript(record)).content == "partial"
    with pytest.raises(FenceLost):  # the slow worker can no longer write
        await append(store, sid, "attempt-1", [ev.TextDelta(text="late")])


async def test_a_redis_out_of_everyones_reach_is_not_taken_for_dead_workers(
    redis: Redis,
) -> None:
    settings = Settings.model_validate({"retention_s": 600, "lease_s": 2})
    store = StreamStore(redis, settings)
    reaper = Reaper(store, ArqJobQueue(redis), settings)
    sid = await create(store)
    assert (await store.claim(sid, "w1", "worker")).outcome == "claimed"
    await append(store, sid, "w1", [ev.TextDelta(text="hi")])
    assert await reaper.sweep() == 0  # stamps the clock; nothing is due

    # Redis froze for 5 s: no reaper could stamp, no worker could renew, the lease ran out.
    now = await store.server_time_ms()
    await redis.set(keys.REAPER_CLOCK_KEY, now - 5000)
    await redis.hset(keys.job_key(sid), "lease_until", now - 1)
    await redis.zadd(keys.LEASES_KEY, {sid: now - 1})
    assert await reaper.sweep() == 0  # held: the worker gets a lease period to renew
    assert await reaper.sweep() == 0  # every reaper holds, not only the first to notice
    assert (await store.get(sid)).status is Status.RUNNING
    (lease,) = await store.renew_leases([(sid, "w1")])
    assert lease.owned
    await redis.delete(keys.REAPER_HOLD_KEY)  # the hold has run its course
    assert await reaper.sweep() == 0  # renewed: alive
    assert (await store.get(sid)).status is Status.RUNNING

    # A worker that really stopped renewing, while Redis answered all along, is reaped.
    await redis.hset(keys.job_key(sid), "lease_until", now - 1)
    await redis.zadd(keys.LEASES_KEY, {sid: now - 1})
    assert await reaper.sweep() == 1
    events = await store.read_all(sid)
    assert isinstance(events[-1][1], ev.Error) and events[-1][1].code == "worker_lost"


async def test_a_gap_longer_than_any_lease_is_still_seen(redis: Redis) -> None:
    # The stamp must outlive the gap it reveals (Redis frozen for many leases).
    store = make_store(redis, lease_s=1)
    await store.reaper_clock(500, 1500)
    assert await redis.ttl(keys.REAPER_CLOCK_KEY) > 3600
    now = await store.server_time_ms()
    await redis.set(keys.REAPER_CLOCK_KEY, now - 60_000, ex=86400)
    _, held = await store.reaper_clock(500, 1500)
    assert held > now


async def test_a_look_that_reaches_redis_late_judges_leases_as_of_its_sweep(
    redis: Redis,
) -> None:
    """A reap sent just before Redis stalled runs after it: by then every lease has run out
    with nobody able to renew it. Judged as of the sweep's start, the job is alive."""
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "attempt-1", "test-worker")
    await append(store, sid, "attempt-1", [ev.TextDelta(text="partial")])
    now = await store.server_time_ms()
    # The lease ran out a second ago; the sweep that found the job began two seconds ago.
    await redis.hset(keys.job_key(sid), "lease_until", now - 1000)
    late = await store.reap(sid, "reaper", as_of_ms=now - 2000)
    assert late.outcome == "alive"
    due = await store.reap(sid, "reaper", as_of_ms=await store.server_time_ms())
    assert due.outcome == "lost"


async def test_a_follow_token_lives_its_whole_lifetime(redis: Redis) -> None:
    """A token asked for 1 s lasts 1 s from its minting, to the microsecond, not until the
    end of the Redis clock's current second."""
    store = make_store(redis)
    sid = await create(store)
    seconds, micros = await redis.time()
    minted_at = seconds + micros / 1_000_000
    assert await store.mint_follow_token(sid, "digest", most=5, longest_s=600, lifetime_s=1) == 1
    stored = await redis.hget(keys.follow_tokens_key(sid), "digest")
    assert stored is not None
    assert minted_at + 1 <= float(stored) < minted_at + 1.1
    assert await store.follow_token_valid(sid, "digest")


async def live_messages(redis: Redis, sid: str) -> tuple[object, list[bytes]]:
    """Subscribes to the stream's live channel; the list fills as messages come."""
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.live_channel(sid))
    await pubsub.get_message(timeout=1)  # the confirmation
    return pubsub, []


def live_message(entries: list[Entry]) -> bytes:
    """The live message of `entries` (consecutive), as append.lua writes it."""
    ids = b" ".join(e.id.encode() for e in entries)
    return b"%d %s\n%s" % (entries[0].seq, ids, b"\n".join(ev.encode(e.event) for e in entries))


async def drain(pubsub: object, into: list[bytes]) -> list[bytes]:
    while (message := await pubsub.get_message(timeout=0.2)) is not None:  # type: ignore[attr-defined]
        into.append(message["data"])
    return into


async def test_finish_writes_the_attempts_last_events_before_the_terminal(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    record = (await store.claim(sid, "t", "test-worker")).record
    await append(store, sid, "t", [ev.Start(model="demo", provider="demo")])
    pubsub, messages = await live_messages(redis, sid)
    last = [ev.TextDelta(text="b"), ev.TextDelta(text="c")]
    transcript = Transcript(text=["bc"], finish_reason="stop")
    for _ in range(2):  # the second is a retry after a lost reply: it changes nothing
        await store.finish(sid, "t", status=Status.COMPLETED, terminal=ev.Finish(reason="stop"),
                           transcript=transcript, held=1, events=last, record=record)  # fmt: skip
    entries = await store.read_range(sid, "-", "+")
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert [e.event for e in entries[1:]] == [*last, ev.Finish(reason="stop")]
    # One message carries them all to the readers, as the stream holds them.
    (message,) = await drain(pubsub, messages)
    assert message == live_message(entries[1:])
    await pubsub.aclose()  # type: ignore[attr-defined]


async def test_an_append_publishes_its_batch_as_the_stream_holds_it(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    pubsub, messages = await live_messages(redis, sid)
    first = [ev.Start(model="demo", provider="demo"), ev.TextDelta(text="a")]
    await append(store, sid, "t", first)
    await append(store, sid, "t", [ev.TextDelta(text='say "b"'), ev.TextDelta(text="c")])
    await store.append(sid, "t", [], held=4)  # nothing to write: nothing published
    entries = await store.read_range(sid, "-", "+")
    assert [e.seq for e in entries] == [1, 2, 3, 4]
    assert await drain(pubsub, messages) == [live_message(entries[:2]), live_message(entries[2:])]
    await pubsub.aclose()  # type: ignore[attr-defined]


async def test_a_queued_jobs_cancel_publishes_its_finish_as_an_append_would(
    redis: Redis,
) -> None:
    store = make_store(redis)
    sid = await create(store)
    pubsub, messages = await live_messages(redis, sid)
    await store.request_cancel(sid)
    entries = await store.read_range(sid, "-", "+")
    assert [e.event for e in entries] == [ev.Finish(reason="cancelled")]
    assert await drain(pubsub, messages) == [live_message(entries)]
    await pubsub.aclose()  # type: ignore[attr-defined]


async def test_finish_after_redis_lost_events_drops_the_unwritten_ones(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    await append(store, sid, "t", [ev.Start(model="demo", provider="demo")])
    # The attempt had 3 events acknowledged; Redis (a failover) kept 1 of them.
    await store.finish(sid, "t", status=Status.FAILED, terminal=ev.Error(code="x", message="y"),
                       transcript=Transcript(), held=3, events=[ev.TextDelta(text="z")])  # fmt: skip
    entries = await store.read_range(sid, "-", "+")
    assert [e.seq for e in entries] == [1, 4]  # the gap shows; the terminal comes after it
    assert entries[-1].event == ev.Error(code="x", message="y")


async def owned_slot(redis: Redis, sid: str, owner: str) -> None:
    """The job's concurrency slots and token reservation, as admission leaves them."""
    await redis.zadd(keys.GLOBAL_CONCURRENCY_KEY, {sid: 1})
    await redis.zadd(keys.concurrency_key(owner), {sid: 1})
    await redis.hset(keys.reservations_key(owner), sid, 100)
    await redis.hset(keys.usage_key(owner), "reserved", 100)


async def script_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha", "eval"))


async def test_on_one_redis_the_finish_settles_the_job_in_the_same_script(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    record = (await store.claim(sid, "t", "test-worker")).record
    assert record is not None and record.owner == "key_test"
    await owned_slot(redis, sid, "key_test")
    usage = ev.Usage(input_tokens=3, output_tokens=5)
    transcript = Transcript(text=["hi"], finish_reason="stop", usage=usage)
    before = await script_calls(redis)
    await store.finish(sid, "t", status=Status.COMPLETED, terminal=ev.Finish(reason="stop"),
                       transcript=transcript, events=[ev.TextDelta(text="hi")], record=record)  # fmt: skip
    assert await script_calls(redis) == before + 1
    assert await redis.zscore(keys.GLOBAL_CONCURRENCY_KEY, sid) is None
    assert await redis.zscore(keys.concurrency_key("key_test"), sid) is None
    assert await redis.hgetall(keys.usage_key("key_test")) == {b"reserved": b"0", b"total": b"8"}
    assert await redis.zscore(keys.LEASES_KEY, sid) is None


async def test_a_fenced_out_finish_settles_nothing(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    record = (await store.claim(sid, "t", "test-worker")).record
    await owned_slot(redis, sid, "key_test")
    with pytest.raises(FenceLost):
        await store.finish(sid, "stale", status=Status.COMPLETED,
                           terminal=ev.Finish(reason="stop"), transcript=Transcript(),
                           events=[ev.TextDelta(text="no")], record=record)  # fmt: skip
    assert await redis.zscore(keys.concurrency_key("key_test"), sid) == 1
    assert await redis.hget(keys.usage_key("key_test"), "reserved") == b"100"
    assert [e.seq for e in await store.read_range(sid, "-", "+")] == []


async def test_a_read_through_the_multiplexed_client_gives_what_redis_py_gives(
    mux: Redis, redis_server: object
) -> None:
    short = make_store(mux)
    plain_client = Redis.from_url(redis_server.url.replace("/0", "/6"))  # type: ignore[attr-defined]
    plain = make_store(plain_client)
    sid = await create(short)
    await short.claim(sid, "t", "test-worker")
    events: list[ev.Event] = [
        ev.Start(model="demo", provider="demo"),
        ev.TextDelta(text="plain"),
        ev.TextDelta(text='a "quoted" one'),
        ev.Usage(input_tokens=1, output_tokens=2),
    ]
    await append(short, sid, "t", events)
    try:
        assert lean.mux_of(short.redis) is not None and lean.mux_of(plain.redis) is None
        for after, count in [("0-0", 256), ("0-0", 2), ((await short.read_all(sid))[1][0], 256)]:
            ours = await short.read(sid, after, block_ms=None, count=count)
            assert ours == await plain.read(sid, after, block_ms=None, count=count)
            assert ours
        assert [e.event for e in await short.read(sid, "0-0", block_ms=None)] == events
        assert await short.read("f" * 32, "0-0", block_ms=None) == []
    finally:
        await plain_client.aclose()


async def test_finish_takes_events_redis_holds_beyond_the_attempts_count_as_written(
    redis: Redis,
) -> None:
    store = make_store(redis)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    await append(store, sid, "t", [ev.TextDelta(text="once")])
    # The attempt counts none written: the one Redis holds is that batch, not written again.
    await store.finish(sid, "t", status=Status.COMPLETED, terminal=ev.Finish(reason="stop"),
                       transcript=Transcript(), held=0, events=[ev.TextDelta(text="once")])  # fmt: skip
    entries = await store.read_range(sid, "-", "+")
    assert [(e.seq, e.event) for e in entries] == [
        (1, ev.TextDelta(text="once")),
        (2, ev.Finish(reason="stop")),
    ]


async def test_a_batch_longer_than_the_cap_is_trimmed_too(redis: Redis) -> None:
    store = make_store(redis, stream_maxlen=100)
    sid = await create(store)
    await store.claim(sid, "t", "test-worker")
    await append(store, sid, "t", [ev.TextDelta(text=str(i)) for i in range(1000)])
    held = await store.read_all(sid)
    assert 100 <= len(held) < 1000  # trimmed to about the cap, the newest kept
    assert held[-1][1] == ev.TextDelta(text="999")


async def test_a_claim_after_redis_lost_its_scripts_loads_them_again(redis: Redis) -> None:
    store = make_store(redis)
    sid = await create(store)
    await redis.script_flush()  # a restart, or a replica promoted: the cache is gone
    claim = await store.claim(sid, "t", "test-worker")
    assert claim.outcome == "claimed" and claim.record is not None
    assert await redis.zscore(keys.LEASES_KEY, sid) is not None
    assert await redis.zscore(keys.QUEUED_KEY, sid) is None
    assert await redis.script_exists(store._claim.sha) == [True]  # loaded again
    assert (await store.claim(sid, "u", "other-worker")).outcome == "busy"
