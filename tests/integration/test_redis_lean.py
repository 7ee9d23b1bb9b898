"""The short way to Redis (scripts and record pipelines written straight to the multiplexed
connection) against a real redis-server: the same effects and replies as redis-py's way,
errors after every reply is read, a lost script cache, a stalled Redis, and the clients
that must keep redis-py's way."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
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


def commands(*commands: tuple[object, ...]) -> Callable[[lean.CommandSink], None]:
    def fill(pipe: lean.CommandSink) -> None:
        for command in commands:
            pipe.execute_command(*command)

    return fill


async def test_gathered_commands_run_the_short_way_with_raw_replies(mux: Redis) -> None:
    assert lean.mux_of(mux) is not None
    seen = sent_commands(mux)
    replies = await lean.pipelined(
        mux, commands(("SET", "a", "1"), ("INCRBY", "n", 5), ("ZADD", "z", 2, "m"), ("GET", "a"))
    )
    assert replies == [b"OK", 5, 1, b"1"]  # as Redis sent them: no callbacks
    assert seen == []  # none through redis-py's client
    assert await mux.zscore("z", "m") == 2.0


async def test_an_error_reply_is_raised_after_every_reply_is_read(mux: Redis) -> None:
    with pytest.raises(ResponseError, match="not an integer"):
        await lean.pipelined(
            mux, commands(("SET", "s", "x"), ("INCRBY", "s", 1), ("SET", "after", "written"))
        )
    # The commands after the error ran, and the connection is in step: the next reply is
    # the next command's.
    assert await mux.get("after") == b"written"
    assert await mux.incrby("fresh", 2) == 2


def gathered(pipe: lean.CommandSink) -> None:
    pipe.execute_command("SET", "job", "j", "PX", 60_000, "NX")
    pipe.execute_command("ZADD", "q", "NX", 5, "m")
    pipe.execute_command("EVAL", INCR_SCRIPT, 1, "n", 3)
    pipe.execute_command("INCRBY", "job", 1)  # not an integer
    pipe.execute_command("PUBLISH", "ch", "m")


@pytest.mark.parametrize("way", ["multiplexed", "pooled"])
async def test_gathered_commands_run_in_one_round_trip_either_way(
    way: str, mux: Redis, redis_server: EmbeddedRedis
) -> None:
    client = mux if way == "multiplexed" else Redis.from_url(redis_server.url.replace("/0", "/6"))
    try:
        with pytest.raises(ResponseError, match="not an integer"):
            await lean.pipelined(client, gathered)
        # Every command ran, the failed one aside, and the connection is in step.
        assert await client.pttl("job") > 59_000
        assert await client.zscore("q", "m") == 5.0
        assert await client.get("n") == b"3"
        await client.delete("job")
        replies = await lean.pipelined(
            client, lambda pipe: [pipe.execute_command("INCRBY", "n", 2)]
        )
        assert replies == [5]
    finally:
        if client is not mux:
            await client.aclose()


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
            with pytest.raises(RedisTimeoutError, match="stalled"):
                await lean.pipelined(client, commands(("INCRBY", "n", 1)))
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
        # Through a redis-py pipeline, its reply callbacks applied.
        assert await lean.pipelined(pooled, commands(("SET", "a", "1"))) == [True]
    finally:
        await pooled.aclose()


def test_the_projects_scripts_are_registered_the_short_way() -> None:
    assert isinstance(scripts.register(fakeredis.FakeAsyncRedis(), "append"), lean.Script)


# -- LeanPipeline: redis-py's pipelines (arq's transactions), the short way ----------------


def redis_py_runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each pipeline redis-py's own way runs from now on."""
    runs: list[str] = []
    for name in ("_execute_transaction", "_execute_pipeline"):
        original = getattr(Pipeline, name)

        def recording(self: Pipeline, *args: Any, _o: Any = original, _n: str = name) -> Any:
            runs.append(_n)
            return _o(self, *args)

        monkeypatch.setattr(Pipeline, name, recording)
    return runs


def lean_client(mux: Redis) -> lean.LeanRedis:
    return lean.LeanRedis(connection_pool=mux.connection_pool)


async def outcome(client: Redis, transaction: bool, build: Any, raise_on_error: bool) -> Any:
    """What a pipeline built by `build` gives: its replies, or the error it raised."""
    try:
        async with client.pipeline(transaction=transaction) as pipe:
            build(pipe)
            replies = await pipe.execute(raise_on_error=raise_on_error)
    except Exception as exc:
        return (type(exc), str(exc))
    return [(type(r), str(r)) if isinstance(r, Exception) else r for r in replies]


def fine(pipe: Any) -> None:
    pipe.set("k", "v")
    pipe.get("k")
    pipe.incr("n")
    pipe.expire("n", 100)  # a callback makes it a bool
    pipe.zadd("z", {"a": 1, "b": 2})
    pipe.zrange("z", 0, -1, withscores=True)  # one makes pairs of these
    pipe.delete("nothing")


def failing_in_exec(pipe: Any) -> None:
    pipe.set("s", "x")
    pipe.incr("s")  # queued, then fails when EXEC runs it
    pipe.get("s")


def refused_when_queued(pipe: Any) -> None:
    pipe.set("q", "1")
    pipe.execute_command("SET", "q")  # wrong arity: refused at once, EXEC aborts
    pipe.get("q")


@pytest.mark.parametrize("transaction", [True, False])
@pytest.mark.parametrize("raise_on_error", [True, False])
@pytest.mark.parametrize("build", [fine, failing_in_exec, refused_when_queued])
async def test_a_lean_pipeline_gives_what_redis_py_gives(
    mux: Redis,
    monkeypatch: pytest.MonkeyPatch,
    transaction: bool,
    raise_on_error: bool,
    build: Any,
) -> None:
    short = lean_client(mux)
    await mux.flushdb()
    theirs = await outcome(mux, transaction, build, raise_on_error)
    state = sorted(await mux.keys("*"))
    await mux.flushdb()
    runs = redis_py_runs(monkeypatch)
    ours = await outcome(short, transaction, build, raise_on_error)
    assert ours == theirs
    assert sorted(await mux.keys("*")) == state
    assert runs == []  # nothing went redis-py's way


async def test_a_lean_pipeline_without_a_mux_runs_redis_pys_way(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    pooled = create_redis(SETTINGS, url=redis_server.url.replace("/0", "/6"))
    client = lean.LeanRedis(connection_pool=pooled.connection_pool)
    runs = redis_py_runs(monkeypatch)
    try:
        await pooled.flushdb()
        ours = await outcome(client, True, fine, True)
        await pooled.flushdb()
        assert ours == await outcome(pooled, True, fine, True)
        assert runs == ["_execute_transaction", "_execute_transaction"]
    finally:
        await pooled.aclose(close_connection_pool=True)


async def test_arqs_client_takes_the_short_way(mux: Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    from shared.queue import _arq

    client = _arq(mux)
    runs = redis_py_runs(monkeypatch)
    async with client.pipeline(transaction=True) as pipe:
        pipe.get("arq:job:x")
        pipe.incr("arq:retry:x")
        pipe.expire("arq:retry:x", 88400)
        assert await pipe.execute() == [None, 1, True]
    assert runs == []
