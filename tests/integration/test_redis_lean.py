"""The short way to Redis (scripts and record pipelines written straight to the multiplexed
connection) against a real redis-server: the same effects and replies as redis-py's way,
errors after every reply is read, a lost script cache, a stalled Redis, and the clients
that must keep redis-py's way."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import scripts
from shared.redis import lean
from shared.redis.clients import create_redis
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings

SETTINGS = Settings()
INCR_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


def sent_commands(client: Redis) -> list[bytes]:
    """Records what the client's redis-py way sends from now on (nothing, the short way)."""
    seen: list[bytes] = []
    original = client.execute_command

    async def recording(*args: object, **options: object) -> object:
        seen.append(str(args[0]).encode())
        return await original(*args, **options)

    client.execute_command = recording  # type: ignore[method-assign]
    return seen


async def test_a_pipeline_runs_the_short_way_with_raw_replies(mux: Redis) -> None:
    assert lean.mux_of(mux) is not None
    async with mux.pipeline(transaction=False) as pipe:
        pipe.set("a", "1")
        pipe.incrby("n", 5)
        pipe.zadd("z", {"m": 2})
        pipe.get("a")
        replies = await lean.execute(pipe)
    assert replies == [b"OK", 5, 1, b"1"]  # as Redis sent them: no callbacks
    assert await mux.zscore("z", "m") == 2.0
    async with mux.pipeline(transaction=False) as pipe:
        pipe.get("a")
        assert await pipe.execute() == [b"1"]  # the pipeline is usable afterwards


async def test_an_error_reply_is_raised_after_every_reply_is_read(mux: Redis) -> None:
    async with mux.pipeline(transaction=False) as pipe:
        pipe.set("s", "x")
        pipe.incrby("s", 1)  # not an integer
        pipe.set("after", "written")
        with pytest.raises(ResponseError, match="not an integer"):
            await lean.execute(pipe)
    # The commands after the error ran, and the connection is in step: the next reply is
    # the next command's.
    assert await mux.get("after") == b"written"
    assert await mux.incrby("fresh", 2) == 2


async def test_transactions_keep_redis_pys_way(mux: Redis) -> None:
    async with mux.pipeline(transaction=True) as pipe:
        pipe.set("t", "1")
        pipe.get("t")
        assert await lean.execute(pipe) == [True, b"1"]  # callbacks applied: redis-py ran it


async def test_a_script_runs_the_short_way_and_reloads_a_lost_cache(mux: Redis) -> None:
    script = lean.Script(mux, INCR_SCRIPT)
    seen = sent_commands(mux)
    assert await script(keys=["c"], args=[2]) == 2
    await mux.script_flush()  # a restart, or a replica promoted: the cache is gone
    seen.clear()
    assert await script(keys=["c"], args=[3]) == 5
    assert seen == []  # EVALSHA, then EVAL: neither through redis-py's client
    assert await mux.script_exists(script.sha) == [True]  # EVAL loaded it again


async def test_a_scripts_error_is_raised_as_redis_py_raises_it(mux: Redis) -> None:
    script = lean.Script(mux, "return redis.error_reply('SPOOL refused')")
    with pytest.raises(ResponseError, match="SPOOL refused"):
        await script()
    assert await mux.ping()


async def test_many_callers_at_once_get_their_own_replies(mux: Redis) -> None:
    script = lean.Script(mux, INCR_SCRIPT)
    results = await asyncio.gather(*(script(keys=[f"k{i % 7}"], args=[1]) for i in range(700)))
    assert sorted(results) == sorted(n for _ in range(7) for n in range(1, 101))


async def test_a_stalled_redis_times_the_short_way_out(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    assert server.process is not None
    client = create_redis(SETTINGS, url=server.url, multiplexed=True, command_timeout=0.3)
    script = lean.Script(client, INCR_SCRIPT)
    try:
        assert await script(keys=["n"], args=[1]) == 1
        server.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(RedisTimeoutError):
                await script(keys=["n"], args=[1])
            async with client.pipeline(transaction=False) as pipe:
                pipe.incrby("n", 1)
                with pytest.raises(RedisTimeoutError, match="stalled"):
                    await lean.execute(pipe)
        finally:
            server.process.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.2)  # the late reply is read and dropped in its turn
        assert await script(keys=["n"], args=[10]) == 12  # the timed-out call ran; in step
    finally:
        await client.aclose(close_connection_pool=True)
        server.stop()


async def test_other_clients_keep_redis_pys_way(redis_server: EmbeddedRedis) -> None:
    pooled = Redis.from_url(redis_server.url.replace("/0", "/7"))  # redis-py's own pool
    try:
        assert lean.mux_of(pooled) is None
        assert await lean.Script(pooled, INCR_SCRIPT)(keys=["f"], args=[4]) == 4
        async with pooled.pipeline(transaction=False) as pipe:
            pipe.set("a", "1")
            assert await lean.execute(pipe) == [True]  # through redis-py's callbacks
    finally:
        await pooled.aclose()


def test_the_projects_scripts_are_registered_the_short_way() -> None:
    assert isinstance(scripts.register(fakeredis.FakeAsyncRedis(), "append"), lean.Script)
