"""The short way to Redis for the commands every job sends (its scripts, its record's
pipelines, the queue's transactions): packed and written straight to the process's
multiplexed connection, their replies read as Redis sent them.

redis-py's client wraps each command in steps the multiplexed connection does not need
(a lease, a retry wrapper, a reply callback per command, a pipeline's bookkeeping): they
cost more CPU than writing the command and reading its reply. A client that does not
send through a `MuxPool` (a Redis Cluster client, a test's fake) takes redis-py's way,
with the replies its callbacks make; callers here use replies that need none (script
results) or none at all.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol, cast

from redis.asyncio import Redis, RedisCluster
from redis.asyncio import client as redis_client
from redis.asyncio.client import Pipeline
from redis.client import EMPTY_RESPONSE
from redis.commands.core import AsyncScript
from redis.exceptions import ExecAbortError, NoScriptError, ResponseError, WatchError
from redis.typing import EncodableT, KeyT

from shared.redis.mux import Mux, MuxLease, MuxPool


def mux_of(client: Any) -> Mux | None:
    """The multiplexed connection `client` (a client or a pipeline) sends through, if any."""
    pool = getattr(client, "connection_pool", None)
    return pool.mux if isinstance(pool, MuxPool) else None


class CommandSink(Protocol):
    """What gathers commands for one round trip: a redis-py pipeline, or `Commands`."""

    def execute_command(self, *args: Any, **options: Any) -> Any: ...


class Commands(list[tuple[Any, ...]]):
    """Commands gathered as a pipeline gathers them (raw arguments, `execute_command`),
    for `send`: without a pipeline object and its bookkeeping."""

    def execute_command(self, *args: Any, **options: Any) -> None:
        self.append(args)


async def pipelined(client: Redis | RedisCluster, fill: Callable[[Any], object]) -> list[Any]:
    """The commands `fill` gives (raw arguments, through `execute_command`) in one round
    trip: written straight to the client's multiplexed connection, with raw replies;
    else in a redis-py pipeline. An error reply is raised, the first of them."""
    mux = mux_of(client)
    if mux is not None:
        commands = Commands()
        fill(commands)
        return await send(mux, commands)
    async with client.pipeline(transaction=False) as pipe:
        fill(pipe)
        return await pipe.execute()


async def send(mux: Mux, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """`commands` written together; their replies in order. An error reply is raised once
    every reply has been read (the first of them), as a pipeline raises it."""
    replies = await _replies(mux, commands)
    for reply in replies:
        if isinstance(reply, ResponseError):
            raise reply
    return replies


async def _replies(mux: Mux, commands: Sequence[Sequence[Any]]) -> list[Any]:
    """`commands` written together; their replies in order, error replies among them."""
    lease = MuxLease(mux)
    try:
        await lease.send_packed_command(lease.pack_commands(commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await lease.read_response())
            except ResponseError as exc:
                replies.append(exc)
    except BaseException:
        await lease.disconnect()  # replies still due are dropped as they come
        raise
    return replies


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


class LeanPipeline(Pipeline):
    """redis-py's pipeline, run the short way when its client sends through a `MuxPool`:
    the same replies (through the client's reply callbacks), the same errors, MULTI/EXEC
    transactions included. A pipeline that WATCHes, began MULTI by hand, or holds scripts
    or commands redis-py answers itself runs as redis-py runs it."""

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        mux = mux_of(self)
        stack = self.command_stack
        if (
            mux is None
            or not stack
            or self.watching
            or self.explicit_transaction
            or self.scripts
            or any(EMPTY_RESPONSE in options for _, options in stack)
        ):
            return await super().execute(raise_on_error)
        try:
            commands = [args for args, _ in stack]
            if self.is_transaction:
                response = await self._transaction(mux, commands)
            else:
                response = await _replies(mux, commands)
            if raise_on_error:
                self.raise_first_error(stack, response)
            return await _called_back(self.response_callbacks, stack, response)
        finally:
            await self.reset()  # type: ignore[no-untyped-call]

    async def _transaction(self, mux: Mux, commands: list[Any]) -> list[Any]:
        """MULTI, the commands, EXEC: EXEC's replies, with the errors of commands Redis
        refused to queue in their places (as redis-py's transaction gives them)."""
        replies = await _replies(mux, [("MULTI",), *commands, ("EXEC",)])
        errors: list[tuple[int, ResponseError]] = []
        if isinstance(replies[0], ResponseError):
            errors.append((0, replies[0]))
        for i, reply in enumerate(replies[1:-1]):
            if isinstance(reply, ResponseError):
                self.annotate_exception(reply, i + 1, commands[i])
                errors.append((i, reply))
        executed = replies[-1]
        if isinstance(executed, ExecAbortError):
            if errors:
                raise errors[0][1] from executed
            raise executed
        if isinstance(executed, ResponseError):
            raise executed
        self.watching = False
        if executed is None:
            raise WatchError("Watched variable changed.")
        response = list(executed)
        for i, error in errors:
            response.insert(i, error)
        if len(response) != len(commands):
            raise ResponseError("Wrong number of response items from pipeline execution")
        return response


async def _called_back(
    callbacks: Mapping[Any, Any], stack: Sequence[tuple[Any, Any]], response: list[Any]
) -> list[Any]:
    """Each reply through the client's callback for its command (errors as they are)."""
    out = []
    for reply, (args, options) in zip(response, stack, strict=True):
        if not isinstance(reply, Exception):
            name = args[0]
            if name in callbacks:
                options.pop("keys", None)
                reply = callbacks[name](reply, **options)
                if inspect.isawaitable(reply):
                    reply = await reply
        out.append(reply)
    return out


def pipeline(client: Redis, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
    """`client.pipeline(...)`, as a `LeanPipeline`."""
    return LeanPipeline(client.connection_pool, client.response_callbacks, transaction, shard_hint)


class LeanRedis(redis_client.Redis):
    """A client whose pipelines are `LeanPipeline`s."""

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return pipeline(self, transaction, shard_hint)
