"""Streams on a Redis Cluster (real redis-server processes: three masters, each with a
replica), the queue's data on a Redis of its own: every script stays within one slot,
the stream hub follows streams on every node through shard channels, the streams spread
over the masters, and a killed master's replica takes over."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from redis.asyncio import Redis, RedisCluster
from redis.exceptions import RedisError

from shared import events as ev
from shared import keys
from shared.redis.clients import close_data_redis, create_data_redis
from shared.settings import Settings
from shared.store import RenderState, Status
from tests.integration.test_hub import Harness, collect, text_of, texts, wait_confirmed
from tests.redis_topology import ClusterSet

SETTINGS = {"retention_s": 600, "keepalive_interval_s": 0.2, "redis_retry_s": 15, "lease_s": 5}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    topology = ClusterSet(tmp_path_factory.mktemp("cluster")).start()
    yield topology
    topology.stop()


@pytest.fixture
async def on_cluster(cluster: ClusterSet, redis: Redis) -> AsyncIterator[Harness]:
    settings = Settings.model_validate(
        {**SETTINGS, "redis_url": cluster.url, "queue_url": "redis://127.0.0.1:1/0"}
    )
    data = create_data_redis(settings, multiplexed=True)
    assert isinstance(data, RedisCluster)
    async with Harness(data, settings, redis) as harness:
        yield harness
    await close_data_redis(data)


async def test_streams_on_every_node_reach_their_readers(
    on_cluster: Harness, cluster: ClusterSet, redis: Redis
) -> None:
    h = on_cluster
    before = cluster.command_counts()
    streams = [await h.new_stream() for _ in range(30)]
    owners = [cluster.master_of(keys.job_key(sid)) for sid in streams]
    assert len({o.port for o in owners}) == 3, "thirty streams land on every master"
    readers = [h.hub.open(sid, "0-0", 1) for sid in streams]
    tasks = [asyncio.create_task(collect(h.hub, r)) for r in readers]
    writers = [h.appender.writer(sid, "attempt", 0) for sid in streams]
    for round_ in range(4):
        for writer in writers:
            await writer.write(texts(5, start=5 * round_))
    for sid, writer in zip(streams, writers, strict=True):
        await writer.flush()
        await h.finish(sid, writer.held)
    got = await asyncio.wait_for(asyncio.gather(*tasks), 20)
    assert all(text_of(g) == [f"t{i}" for i in range(20)] for g in got)
    # One pub/sub link per master, each carrying its own streams' messages only.
    assert len(h.hub._links) == 3
    # Each master did the work of its own streams: a create, a claim, four appends and
    # a finish each, at least.
    after = cluster.command_counts()
    for node in {o.port for o in owners}:
        name = f"127.0.0.1:{node}"
        mine = sum(1 for o in owners if o.port == node)
        assert after[name] - before.get(name, 0) >= 7 * mine, (name, mine, before, after)
    # The indexes live on the queue's Redis and were kept in step.
    assert await redis.zcard(keys.LEASES_KEY) == 0
    assert await redis.zcard(keys.QUEUED_KEY) == 0


async def test_a_reader_opened_before_the_slot_map_is_read_is_routed_after(
    on_cluster: Harness,
) -> None:
    """A new client knows no slots until its first command: a reader opened before then
    (the API opens a new stream's reader before it stores the job) waits for the map
    instead of failing."""
    h = on_cluster
    sid = uuid.uuid4().hex
    reader = h.hub.open(sid, "0-0", 1)
    following = asyncio.create_task(collect(h.hub, reader))
    await h.store.create(sid, surface="openai.chat", model="demo", request={}, render={}, owner="k")
    assert (await h.store.claim(sid, "attempt", "worker")).outcome == "claimed"
    writer = h.appender.writer(sid, "attempt", 0)
    await writer.write(texts(2))
    await writer.flush()
    await h.finish(sid, writer.held)
    assert text_of(await asyncio.wait_for(following, 10)) == ["t0", "t1"]


async def test_a_stream_created_while_the_hub_listens_is_heard_whole(
    on_cluster: Harness, cluster: ClusterSet
) -> None:
    """The creation counts the hub's shard-channel subscription on the stream's node."""
    h = on_cluster
    sid = uuid.uuid4().hex
    # The hub connected to the stream's node already (a reader opened before the
    # connection is made reads its stream once it is, as after any reconnect).
    node = cluster.master_of(keys.job_key(sid)).port
    neighbour = next(
        other
        for other in (uuid.uuid4().hex for _ in range(1000))
        if cluster.master_of(keys.job_key(other)).port == node
    )
    await wait_confirmed(h.hub.open(neighbour, "0-0", 1))
    reader = h.hub.open(sid, "0-0", 1)
    await wait_confirmed(reader)
    listeners = await h.store.create(
        sid, surface="openai.chat", model="demo", request={}, render={}, owner="k"
    )
    assert listeners == 1
    reader.heard_from_start()
    assert not reader.catch_up
    assert (await h.store.claim(sid, "attempt", "worker")).outcome == "claimed"
    following = asyncio.create_task(collect(h.hub, reader))
    writer = h.appender.writer(sid, "attempt", 0)
    await writer.write(texts(4))
    await writer.flush()
    await h.finish(sid, writer.held)
    assert text_of(await asyncio.wait_for(following, 10)) == ["t0", "t1", "t2", "t3"]


async def test_a_cancel_and_a_reap_on_the_cluster(on_cluster: Harness, redis: Redis) -> None:
    h = on_cluster
    queued = uuid.uuid4().hex
    await h.store.create(
        queued, surface="openai.chat", model="demo", request={}, render={}, owner="k"
    )
    assert await redis.zscore(keys.QUEUED_KEY, queued) is not None
    assert await h.store.request_cancel(queued) is Status.CANCELLED
    assert await redis.zscore(keys.QUEUED_KEY, queued) is None
    events = await h.store.read_all(queued)
    assert isinstance(events[-1][1], ev.Finish) and events[-1][1].reason == "cancelled"

    running = await h.new_stream()
    assert await redis.zscore(keys.LEASES_KEY, running) is not None
    writer = h.appender.writer(running, "attempt", 0)
    await writer.write(texts(2))
    await writer.flush()
    # Its worker vanishes: once the lease ran out, the reaper takes the stream over.
    await h.data.hset(keys.job_key(running), "lease_until", 1)
    reaped = await h.store.reap(running, "reaper", await h.store.server_time_ms())
    assert (reaped.outcome, reaped.appended) == ("lost", 2)
    assert await redis.zscore(keys.LEASES_KEY, running) is not None  # the reaper's lease


async def test_a_stream_whose_slot_moves_keeps_its_readers(
    on_cluster: Harness, cluster: ClusterSet
) -> None:
    h = on_cluster
    sid = await h.new_stream()
    waiting = asyncio.create_task(collect(h.hub, h.hub.open(sid, "0-0", 1)))
    writer = h.appender.writer(sid, "attempt", 0)
    await writer.write(texts(3))
    await writer.flush()
    await asyncio.sleep(0.3)  # subscribed on the stream's master
    source = cluster.master_of(keys.job_key(sid))
    target = next(m for m in cluster.masters_now() if m is not source)
    cluster.move_slot(keys.job_key(sid), target)
    # The old master ends the shard channel's subscription; the hub finds where the slot
    # went (nothing else has told this process's cluster client yet) and follows it.
    sub = h.hub._subs[keys.live_channel(sid).encode()]
    for _ in range(100):
        if sub.link is not None and sub.link.name == f"127.0.0.1:{target.port}" and sub.confirmed:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"the subscription stayed on {sub.link and sub.link.name}")
    await writer.write(texts(3, start=3))
    await writer.flush()
    await h.finish(sid, writer.held)
    assert text_of(await asyncio.wait_for(waiting, 20)) == [f"t{i}" for i in range(6)]
    # New readers of the moved stream are routed to its new master at once.
    again = h.hub.open(sid, "0-0", 1)
    assert again.sub.link is not None and again.sub.link.name == f"127.0.0.1:{target.port}"
    assert text_of(await asyncio.wait_for(collect(h.hub, again), 20)) == [f"t{i}" for i in range(6)]


async def test_a_killed_master_is_replaced_and_its_streams_go_on(
    on_cluster: Harness, cluster: ClusterSet
) -> None:
    h = on_cluster
    sid = await h.new_stream()
    writer = h.appender.writer(sid, "attempt", 0)
    await writer.write(texts(3))
    await writer.flush()
    first = h.hub.open(sid, "0-0", 1)
    waiting = asyncio.create_task(collect(h.hub, first))
    await asyncio.sleep(0.3)  # subscribed on the stream's master
    master = cluster.master_of(keys.job_key(sid))
    cluster.wait_replicated(master)
    master.kill()
    # The reader on the dead master ends with the error (its client resumes) ...
    with pytest.raises((RedisError, OSError)):
        await asyncio.wait_for(waiting, 20)
    # ... while the worker's writes wait out the failover and land on the new master.
    await writer.write(texts(3, start=3))
    await writer.flush()
    cluster.wait_failover(master)
    again = asyncio.create_task(collect(h.hub, h.hub.open(sid, "0-0", 1)))
    await writer.write(texts(2, start=6))
    await writer.flush()
    await h.finish(sid, writer.held)
    assert text_of(await asyncio.wait_for(again, 20)) == [f"t{i}" for i in range(8)]
    assert cluster.master_of(keys.job_key(sid)) is not master


async def test_one_connection_per_node_however_many_commands(
    on_cluster: Harness, cluster: ClusterSet
) -> None:
    h = on_cluster
    watchers = {n.port: n.client() for n in cluster.nodes if n.alive}

    def clients() -> dict[int, int]:
        return {port: int(c.info("clients")["connected_clients"]) for port, c in watchers.items()}

    streams = [await h.new_stream() for _ in range(3)]
    before = clients()
    # Hundreds of commands in flight at once, on every master.
    await asyncio.gather(*(h.store.status(sid) for sid in streams * 100))
    await asyncio.gather(*(h.data.set(f"k{i}", i) for i in range(300)))
    after = clients()
    # A node the client had not used yet gains its one multiplexed connection; none
    # gains more, however many commands were in flight.
    assert all(after[port] - before[port] <= 1 for port in after), (before, after)


async def test_renderer_snapshots_are_kept_and_read_in_their_streams_slot(
    on_cluster: Harness,
) -> None:
    h = on_cluster
    sid = await h.new_stream()
    writer = h.appender.writer(sid, "attempt", 0)
    await writer.write(texts(10))
    await writer.flush()
    entries = await h.store.read_range(sid, "-", "+")
    kept = RenderState(4, entries[3].id, b'["a b", 1]')
    await h.store.save_render_states(sid, "test.1", [kept], 256)
    snapshot, after = await h.store.read_to_resume(sid, "test.1", entries[8])
    assert snapshot == kept
    assert [e.seq for e in after] == [5, 6, 7, 8, 9]
