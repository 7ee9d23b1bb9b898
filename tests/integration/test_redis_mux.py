"""The multiplexed Redis client against a real redis-server: many callers on one
connection, pipelines, transactions, errors, scripts, cancelled callers and restarts."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis.clients import create_redis
from shared.redis.embedded import EmbeddedRedis
from shared.redis.mux import MuxPool
from shared.settings import Settings

SETTINGS = Settings()


def writes(client: Redis) -> list[int]:
    """Counts the writes the shared connection makes from now on."""
    pool = client.connection_pool
    assert isinstance(pool, MuxPool)
    writer = pool.mux.connection._writer
    assert writer is not None
    counted = [0]
    original = writer.writelines

    def counting(chunks: list[bytes]) -> None:
        counted[0] += 1
        original(chunks)

    writer.writelines = counting  # type: ignore[method-assign]
    return counted


async def test_many_callers_share_one_connection_and_one_write_per_turn(mux: Redis) -> None:
    await mux.ping()  # connected

    async def clients_on_this_database() -> int:
        # Other suites' processes come and go on the same server, on other databases.
        return sum(1 for c in await mux.client_list() if c.get("db") == "6")

    counted = writes(mux)
    assert await clients_on_this_database() == 1
    counted[0] = 0
    results = await asyncio.gather(*(mux.incrby(f"k{i % 10}", i) for i in range(1000)))
    assert counted[0] <= 2  # issued in the same turn: one write (the list is one more)
    assert sorted(results)[-1] == max(sum(j for j in range(1000) if j % 10 == i) for i in range(10))
    for i in range(10):
        assert int(await mux.get(f"k{i}")) == sum(j for j in range(1000) if j % 10 == i)
    assert await clients_on_this_database() == 1  # no new connections for the load


async def test_pipelines_and_transactions_keep_their_replies_together(mux: Redis) -> None:
    async def pipeline(n: int) -> list[object]:
        async with mux.pipeline(transaction=n % 2 == 0) as pipe:
            pipe.set(f"p{n}", n)
            pipe.incr(f"p{n}")
            pipe.get(f"p{n}")
            return await pipe.execute()  # type: ignore[no-any-return]

    replies = await asyncio.gather(*(pipeline(n) for n in range(200)))
    assert replies == [[True, n + 1, str(n + 1).encode()] for n in range(200)]


async def test_an_error_reply_fails_only_its_own_command(mux: Redis) -> None:
    await mux.set("text", "x")

    async def bad() -> object:
        return await mux.incr("text")

    results = await asyncio.gather(mux.set("a", 1), bad(), mux.get("a"), return_exceptions=True)
    assert results[0] is True and results[2] == b"1"
    assert isinstance(results[1], ResponseError)
    async with mux.pipeline(transaction=False) as pipe:
        pipe.incr("text")
        pipe.get("text")
        first, second = await pipe.execute(raise_on_error=False)
    assert isinstance(first, ResponseError) and second == b"x"


async def test_scripts_load_themselves_after_a_flush(mux: Redis) -> None:
    script = mux.register_script("return redis.call('INCR', KEYS[1])")
    assert await script(keys=["s"]) == 1
    await mux.script_flush()
    assert await script(keys=["s"]) == 2  # NOSCRIPT, loaded again, run


async def test_a_caller_that_gives_up_does_not_shift_the_replies(mux: Redis) -> None:
    await mux.set("slow", "v")
    lua = "local t = redis.call('TIME'); while redis.call('TIME')[1] - t[1] < 1 do end return 1"
    busy = asyncio.ensure_future(mux.eval(lua, 0))  # holds Redis for about a second
    await asyncio.sleep(0)
    gave_up = asyncio.ensure_future(mux.get("slow"))
    kept = asyncio.ensure_future(mux.set("after", "ok"))
    await asyncio.sleep(0.1)
    gave_up.cancel()
    assert await busy == 1
    assert await kept is True
    assert await mux.get("after") == b"ok"


async def test_a_failed_write_leaves_one_reader_on_the_next_connection(mux: Redis) -> None:
    await mux.ping()  # connected, its reader idle
    pool = mux.connection_pool
    assert isinstance(pool, MuxPool)
    writer = pool.mux.connection._writer
    assert writer is not None

    def failing(chunks: list[bytes]) -> None:
        raise OSError("the socket went away")

    writer.writelines = failing  # type: ignore[method-assign]
    with pytest.raises(RedisConnectionError, match="writing to redis failed"):
        await mux.set("k", "v")
    # The next commands reconnect; with two readers on the new connection, replies would
    # go to the wrong callers (or be lost): each must get its own.
    for _ in range(20):
        values = await asyncio.gather(*(mux.incrby(f"n{i}", i) for i in range(50)))
        assert values[1:] == [i * values[1] for i in range(1, 50)]
    readers = [
        t for t in asyncio.all_tasks() if "_read_replies" in repr(t.get_coro()) and not t.done()
    ]
    assert len(readers) == 1


async def test_a_redis_restart_fails_what_was_in_flight_then_reconnects(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=True)
    server.start()
    client = create_redis(SETTINGS, url=server.url, multiplexed=True)
    try:
        await client.set("kept", "1")
        server.stop()
        with pytest.raises(RedisConnectionError):
            await client.get("kept")
        server.start()
        for _ in range(50):  # the next commands reconnect
            try:
                assert await client.get("kept") == b"1"
                break
            except RedisConnectionError:
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("never reconnected")
    finally:
        await client.aclose(close_connection_pool=True)
        server.stop()


async def test_a_stalled_redis_times_callers_out_without_a_new_connection(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    assert server.process is not None
    client = create_redis(SETTINGS, url=server.url, multiplexed=True, command_timeout=0.5)
    try:
        await client.set("k", "before")
        connection_id = await client.client_id()
        server.process.send_signal(signal.SIGSTOP)
        try:
            loop = asyncio.get_running_loop()
            started = loop.time()
            outcomes = await asyncio.gather(
                client.get("k"),
                client.set("k", "during"),
                client.pipeline(transaction=True).incr("n").incr("n").execute(),
                return_exceptions=True,
            )
            took = loop.time() - started
            assert all(isinstance(o, RedisTimeoutError) for o in outcomes), outcomes
            assert 0.4 < took < 1.5
            # Redis is known to be stalled now: a new command fails at once.
            started = loop.time()
            with pytest.raises(RedisTimeoutError, match="stalled"):
                await client.exists("k")
            assert loop.time() - started < 0.1
        finally:
            server.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.2)  # Redis answers what it owes; the stall is over
        # The late replies are read and dropped in their turn: nothing is shifted, and the
        # connection is the one from before the stall.
        assert await client.get("k") == b"during"
        assert await client.incr("n") == 3
        assert await client.client_id() == connection_id
    finally:
        await client.aclose(close_connection_pool=True)
        server.stop()


async def test_a_full_redis_is_not_hammered_and_is_reached_once_it_has_room(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    admin = Redis.from_url(server.url)
    client = create_redis(SETTINGS, url=server.url, multiplexed=True, name="mux-under-test")
    try:
        await admin.config_set("maxclients", 4)  # this client and the three below
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(3)]
        with pytest.raises(RedisConnectionError):
            await client.ping()
        rejected = int((await admin.info("stats"))["rejected_connections"])
        outcomes = await asyncio.gather(*(client.ping() for _ in range(20)), return_exceptions=True)
        assert all(isinstance(o, RedisConnectionError) for o in outcomes)
        # Commands right after a refused connect wait for the next try together.
        rejected = int((await admin.info("stats"))["rejected_connections"]) - rejected
        assert rejected == 1
        for _, writer in held:
            writer.close()
        for _ in range(100):  # the next command after the back-off connects
            try:
                assert await client.ping() is True
                break
            except RedisConnectionError:
                await asyncio.sleep(0.05)
        else:
            raise AssertionError("never reconnected")
        names = [c["name"] for c in await admin.client_list()]
        assert names.count("mux-under-test") == 1
    finally:
        await client.aclose(close_connection_pool=True)
        await admin.aclose()
        server.stop()


async def test_replies_already_read_are_handed_over_without_awaiting_the_socket(
    mux: Redis,
) -> None:
    """A read brings many replies at once under load: they are handed over as they sit
    in the buffer, in order, and only an empty buffer is waited on."""
    await mux.ping()
    pool = mux.connection_pool
    assert isinstance(pool, MuxPool)
    conn = pool.mux.connection
    awaited = [0]
    original = conn.read_response

    async def counting(*args: Any, **kwargs: Any) -> Any:
        awaited[0] += 1
        return await original(*args, **kwargs)

    conn.read_response = counting  # type: ignore[method-assign]
    results = await asyncio.gather(*(mux.incrby(f"b{i % 10}", 1) for i in range(1000)))
    assert sorted(results) == sorted(n for _ in range(10) for n in range(1, 101))
    assert awaited[0] < 100, awaited[0]
    with pytest.raises(ResponseError):  # an error reply from the buffer is still an error
        await asyncio.gather(mux.set("s", "x"), mux.incr("s"), mux.get("s"))
    assert await mux.get("s") == b"x"


async def test_a_garbled_reply_in_the_buffer_fails_its_caller_and_reconnects(mux: Redis) -> None:
    """Bytes that are not the protocol, already read, break the connection as a garbled
    read would: the caller gets an error (no hang) and the next command reconnects."""
    await mux.ping()
    pool = mux.connection_pool
    assert isinstance(pool, MuxPool)
    pool.mux.connection._parser._reader.feed(b"?not redis\r\n")  # type: ignore[union-attr]
    with pytest.raises(RedisConnectionError):
        await asyncio.wait_for(mux.get("k"), 5)
    assert await mux.set("k", "v")
    assert await mux.get("k") == b"v"
