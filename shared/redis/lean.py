"""The short way to Redis for the commands every job sends (its scripts, its record's
pipelines): packed and written straight to the process's multiplexed connection, their
replies read as Redis sent them.

redis-py's client wraps each command in steps the multiplexed connection does not need
(a lease, a retry wrapper, a reply callback per command, a pipeline's bookkeeping): they
cost more CPU than writing the command and reading its reply. A client that does not
send through a `MuxPool` (a Redis Cluster client, a test's fake) takes redis-py's way,
with the replies its callbacks make; callers here use replies that need none (script
results) or none at all.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.typing import EncodableT, KeyT

from shared.redis.mux import Mux, MuxLease, MuxPool


def mux_of(client: Any) -> Mux | None:
    """The multiplexed connection `client` (a client or a pipeline) sends through, if any."""
    pool = getattr(client, "connection_pool", None)
    return pool.mux if isinstance(pool, MuxPool) else None


async def send(mux: Mux, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """`commands` written together; their replies in order. An error reply is raised once
    every reply has been read (the first of them), as a pipeline raises it."""
    lease = MuxLease(mux)
    try:
        await lease.send_packed_command(lease.pack_commands(commands))
        replies: list[Any] = []
        error: Exception | None = None
        for _ in commands:
            try:
                replies.append(await lease.read_response())
            except ResponseError as exc:
                error = error or exc
                replies.append(exc)
    except BaseException:
        await lease.disconnect()  # replies still due are dropped as they come
        raise
    if error is not None:
        raise error
    return replies


async def execute(pipe: Pipeline | ClusterPipeline) -> list[Any]:
    """Run a non-transactional pipeline's commands: the short way when its client has one
    (raw replies), else as `pipe.execute()` does (replies through redis-py's callbacks)."""
    mux = mux_of(pipe)
    if (
        mux is None
        or not isinstance(pipe, Pipeline)
        or pipe.is_transaction
        or pipe.explicit_transaction
        or pipe.scripts
    ):
        return await pipe.execute()
    commands = [args for args, _ in pipe.command_stack]
    pipe.command_stack = []
    return await send(mux, commands)


class Script(AsyncScript):
    """A Lua script, run by EVALSHA the short way when the client has one (by EVAL when
    Redis has lost it, which loads it again), else as redis-py runs it."""

    def __init__(self, client: Redis | RedisCluster, source: str) -> None:
        # redis-py's scripts run on a cluster client too, though not typed so.
        super().__init__(cast(Redis, client), source)

    async def __call__(
        self,
        keys: Sequence[KeyT] | None = None,
        args: Iterable[EncodableT] | None = None,
        client: Redis | None = None,
    ) -> Any:
        target = client if client is not None else self.registered_client
        mux = mux_of(target) if not isinstance(target, Pipeline) else None
        if mux is None:
            return await super().__call__(keys, args, client)
        keys, args = keys or (), tuple(args or ())
        try:
            (reply,) = await send(mux, [("EVALSHA", self.sha, len(keys), *keys, *args)])
        except NoScriptError:
            (reply,) = await send(mux, [("EVAL", self.script, len(keys), *keys, *args)])
        return reply
