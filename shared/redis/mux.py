"""One Redis connection shared by every coroutine of a process: commands issued in the same
turn of the event loop go out in one write, and replies are handed back in order.

redis-py's pools give each command in flight a connection of its own, so their number
grows with the load (or, bounded, callers queue for them, each held through every delay
of a busy event loop). `MuxPool` is a drop-in pool for `redis.asyncio.Redis` whose
connections are leases on one multiplexed connection: plain commands, pipelines and
MULTI/EXEC transactions all work, since a caller's commands are written together and in
order. Blocking commands (XREAD BLOCK, BLPOP, SUBSCRIBE) and WATCH would stall or break the
shared connection and must not be sent through it.

With a `command_timeout`, a caller waits that long for its replies at most (a Redis that
stalls answers an API request with an error, not a hang). The connection is not torn down
for it: a late reply is read and dropped in its turn, and only the socket's own timeout
tells a dead connection from a slow one. Once a caller has timed out, Redis (which
answers in order) is taken for stalled, and new commands fail at once instead of queueing
behind it, until the next reply comes.

After a failed connect, the next try waits a short, growing while (at most 0.5 s), and the
commands that come meanwhile wait for it instead of each trying again: a Redis refusing
clients is not hammered with connects, and one that is back is used at the next try.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from redis._parsers.hiredis import NOT_ENOUGH_DATA as NOT_ENOUGH_DATA
from redis._parsers.hiredis import _AsyncHiredisParser
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.redis.resp import Packer

_NO_RETRY = Retry(NoBackoff(), 0)
CONNECT_BACKOFF_S = (0.05, 0.1, 0.2, 0.5)  # after 1, 2, 3, more failed connects in a row


class _Packed(list[bytes]):
    """Packed commands that know how many replies they will get."""

    replies = 1


class Mux:
    """The shared connection: an outbox flushed once per loop turn, and a reader that
    resolves the callers' futures in the order their commands were written."""

    def __init__(
        self,
        make_connection: Callable[[], AbstractConnection],
        command_timeout: float | None = None,
    ) -> None:
        self._make_connection = make_connection
        self.command_timeout = command_timeout
        self._conn: AbstractConnection | None = None
        self._packer: Packer | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._outbox: list[tuple[list[bytes], list[asyncio.Future[Any]]]] = []
        self._waiting: deque[asyncio.Future[Any]] = deque()
        self._flush_scheduled = False
        self._replies_due = asyncio.Event()
        self._closed = False
        self._connect_failures = 0
        self._connect_error: Exception | None = None
        self._retry_connect_at = 0.0
        self._stalled = False  # a caller timed out, and no reply has come since

    @property
    def stalled(self) -> bool:
        return self._stalled

    def timed_out(self) -> None:
        """A caller's `command_timeout` ran out: until Redis answers again (or the
        connection is made anew), new commands fail at once."""
        self._stalled = bool(self._waiting) or self._connecting is not None

    @property
    def connection(self) -> AbstractConnection:
        """The connection as redis-py builds it (for packing commands)."""
        if self._conn is None:
            self._conn = self._make_connection()
        return self._conn

    @property
    def packer(self) -> Packer:
        """Packs commands with the connection's string encoding."""
        if self._packer is None:
            encoder = self.connection.encoder
            self._packer = Packer(encoder.encoding, encoder.encoding_errors)
        return self._packer

    def submit(self, chunks: list[bytes], replies: int) -> list[asyncio.Future[Any]]:
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in range(replies)]
        self._outbox.append((chunks, futures))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return futures

    def _flush(self) -> None:
        self._flush_scheduled = False
        if not self._outbox:
            return
        conn = self.connection
        if not conn.is_connected or self._reader is None or self._reader.done():
            if self._connecting is not None:
                return
            loop = asyncio.get_running_loop()
            if self._connect_error is not None and loop.time() < self._retry_connect_at:
                # The last connect failed a moment ago: these commands go with the next
                # try, a short while away, not with one of their own.
                self._flush_scheduled = True
                loop.call_at(self._retry_connect_at, self._flush)
                return
            self._connecting = asyncio.ensure_future(self._connect())
            return
        outbox, self._outbox = self._outbox, []
        chunks: list[bytes] = []
        for packed, futures in outbox:
            chunks += packed
            self._waiting.extend(futures)
        try:
            conn._writer.writelines(chunks)  # type: ignore[union-attr]
        except Exception as exc:
            self._broken(RedisConnectionError(f"writing to redis failed: {exc}"))
            return
        self._replies_due.set()

    async def _connect(self) -> None:
        try:
            conn = self.connection
            await conn.disconnect()
            await conn.connect()  # type: ignore[no-untyped-call]
        except Exception as exc:
            error = _as_connection_error(exc)
            delay = CONNECT_BACKOFF_S[min(self._connect_failures, len(CONNECT_BACKOFF_S) - 1)]
            self._connect_failures += 1
            self._connect_error = error
            self._retry_connect_at = asyncio.get_running_loop().time() + delay
            self._fail_outbox(error)
            return
        finally:
            self._connecting = None
            self._stalled = False
        self._connect_failures = 0
        self._connect_error = None
        self._reader = asyncio.ensure_future(self._read_replies(conn))
        self._flush()

    def _fail_outbox(self, error: Exception) -> None:
        outbox, self._outbox = self._outbox, []
        for _, futures in outbox:
            for future in futures:
                if not future.done():
                    future.set_exception(error)

    async def _read_replies(self, conn: AbstractConnection) -> None:
        # A reader whose connection broke is let go (see `_broken`): only the current one
        # may break the connection, so a stale one never fails its successor's commands.
        me = asyncio.current_task()
        while True:
            if not self._waiting:
                self._replies_due.clear()
                await self._replies_due.wait()
                continue
            try:
                reply: Any = buffered_reply(conn)
                if reply is NOT_ENOUGH_DATA:
                    reply = await conn.read_response(disconnect_on_error=False)
                elif isinstance(reply, RedisConnectionError):
                    raise reply
            except ResponseError as exc:
                reply = exc
            except asyncio.CancelledError:
                if self._reader is me:
                    self._broken(RedisConnectionError("the connection to redis was closed"))
                raise
            except Exception as exc:
                if self._reader is me:
                    self._broken(_as_connection_error(exc))
                return
            self._stalled = False
            future = self._waiting.popleft()
            if future.done():
                continue  # its caller gave up; the reply is still consumed in order
            if isinstance(reply, ResponseError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def _broken(self, error: Exception) -> None:
        """Every command in flight fails; the next one reconnects. The connection's reader
        goes too (when a write failed, it may be idle, and must not read from the next
        connection beside the next reader)."""
        self._stalled = False
        reader, self._reader = self._reader, None
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
        waiting, self._waiting = self._waiting, deque()
        for future in waiting:
            if not future.done():
                future.set_exception(error)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                transport = getattr(self._conn._writer, "transport", None)
                if transport is not None:
                    transport.abort()
            self._conn._reader = None
            self._conn._writer = None
        if self._outbox and not self._closed and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def close(self) -> None:
        self._closed = True
        for task in (self._reader, self._connecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        # Whatever was still to be sent or answered never will be: its callers learn so.
        closed = RedisConnectionError("the connection to redis was closed")
        outbox, self._outbox = self._outbox, []
        waiting, self._waiting = list(self._waiting), deque()
        for future in [*waiting, *(f for _, futures in outbox for f in futures)]:
            if not future.done():
                future.set_exception(closed)
        if self._conn is not None:
            await self._conn.disconnect()


def buffered_reply(conn: AbstractConnection) -> Any:
    """The next reply, when the connection has already read it off the socket (a read
    brings many, under load); else `NOT_ENOUGH_DATA`, and it must be awaited. redis-py's
    own read wraps every reply, buffered or not, in a timeout (a timer set and cancelled):
    more than the rest of handing the reply over."""
    parser = conn._parser
    if type(parser) is not _AsyncHiredisParser or not parser._connected:
        return NOT_ENOUGH_DATA
    reader: Any = parser._reader
    return NOT_ENOUGH_DATA if reader is None else reader.gets()


def _as_connection_error(exc: BaseException) -> Exception:
    if isinstance(exc, RedisConnectionError):
        return exc
    return RedisConnectionError(f"redis connection failed: {exc}")


class MuxLease:
    """What `MuxPool.get_connection` hands a caller: the connection interface redis-py's
    client and pipelines use, over the shared connection. Cheap; one per command."""

    retry = _NO_RETRY
    retry_on_error: list[type[Exception]] | None = None
    is_connected = True

    def __init__(self, mux: Mux) -> None:
        self._mux = mux
        self._replies: deque[asyncio.Future[Any]] = deque()
        self._deadline: float | None = None  # when its caller stops waiting for replies

    @property
    def mux(self) -> Mux:
        return self._mux

    def pack_command(self, *args: Any) -> list[bytes]:
        return [self.mux.packer.command(args)]

    def pack_commands(self, commands: Iterable[Iterable[Any]]) -> _Packed:
        data, count = self.mux.packer.commands(commands)
        packed = _Packed((data,))
        packed.replies = count
        return packed

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        chunks: list[bytes] = [command] if isinstance(command, bytes) else list(command)
        replies = command.replies if isinstance(command, _Packed) else 1
        mux = self.mux
        if mux.stalled:
            raise RedisTimeoutError(
                f"redis has not answered for over {mux.command_timeout:g}s (stalled)"
            )
        if mux.command_timeout is not None and not self._replies:
            # One bound for what the caller sends before reading (a whole pipeline); a
            # lease the cluster client reuses starts a new one with its next command.
            self._deadline = asyncio.get_running_loop().time() + mux.command_timeout
        self._replies.extend(mux.submit(chunks, replies))

    async def send_command(self, *args: Any, **kwargs: Any) -> None:
        await self.send_packed_command(self.pack_command(*args))

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        future = self._replies.popleft()
        if self._deadline is None or future.done():
            return await future
        # A timer that fails the reply's future at the deadline (the mux still reads the
        # reply in its turn, and drops it): a third of what `asyncio.wait_for` costs.
        expiry = asyncio.get_running_loop().call_at(self._deadline, self._expire, future)
        try:
            return await future
        finally:
            expiry.cancel()

    def _expire(self, future: asyncio.Future[Any]) -> None:
        if not future.done():
            self.mux.timed_out()
            future.set_exception(
                RedisTimeoutError(f"redis did not answer within {self.mux.command_timeout:g}s")
            )

    async def connect(self) -> None:
        return None

    async def disconnect(self, nowait: bool = False) -> None:
        # Replies nobody will read (a pipeline that failed halfway) are dropped when they come.
        for future in self._replies:
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # seen: not reported as an error nobody retrieved
        self._replies.clear()


class MuxPool(ConnectionPool):
    """A connection pool for `redis.asyncio.Redis` that multiplexes one connection (see
    the module's docstring). `connection_class` and `connection_kwargs` stay available for
    components that need a connection of their own (the stream hub's pub/sub)."""

    def __init__(self, *, command_timeout: float | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.mux = Mux(self.make_connection, command_timeout)

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        return MuxLease(self.mux)

    async def release(self, connection: Any) -> None:
        return None

    async def disconnect(self, inuse_connections: bool = True) -> None:
        # The one connection is always in use; only closing the client (the default) ends
        # it. Sentinel's pool asks for idle connections to go when the primary moves: the
        # shared connection is already reconnecting to the new one then.
        if inuse_connections:
            await self.mux.close()


class NodeMuxes:
    """The multiplexed connections of a Redis Cluster client, one per node: what
    `NodeMuxLease` (the cluster client's connection class) shares."""

    def __init__(self, command_timeout: float | None = None) -> None:
        self._muxes: dict[tuple[str, int], Mux] = {}
        self.command_timeout = command_timeout

    def get(self, kwargs: dict[str, Any]) -> Mux:
        key = (str(kwargs["host"]), int(kwargs["port"]))
        mux = self._muxes.get(key)
        if mux is None:
            mux = self._muxes[key] = Mux(lambda: Connection(**kwargs), self.command_timeout)
        return mux

    async def close(self) -> None:
        muxes, self._muxes = list(self._muxes.values()), {}
        for mux in muxes:
            await mux.close()


class NodeMuxLease(MuxLease):
    """A redis-py cluster node's "connection": a lease on the node's one multiplexed
    connection, so however many commands are in flight, each node gets one socket. The
    node makes these with its connection arguments, which carry the `NodeMuxes`.

    The client disconnects its nodes whenever it learns the slot map again, while new
    node objects for the same addresses already send commands: a lease's disconnect
    leaves the shared connection alone (a broken one reconnects by itself), and
    `NodeMuxes.close` ends them all when the client is done."""

    def __init__(self, *, muxes: NodeMuxes, **kwargs: Any) -> None:
        kwargs.pop("connection_pool", None)
        self._muxes = muxes
        self._kwargs = kwargs
        self.host, self.port = kwargs["host"], kwargs["port"]
        super().__init__(muxes.get(kwargs))

    @property
    def mux(self) -> Mux:
        return self._muxes.get(self._kwargs)
