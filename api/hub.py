"""The stream hub: one per API process, it hears every new entry of every stream that has
local readers on one Redis pub/sub connection and hands it to all of them.

Workers publish each append on the stream's live channel (`keys.live_channel`) in the same
script that writes it, so the hub's one connection carries what a blocking XREAD per reader
would, whatever the number of open streams. On a Redis Cluster the channels are shard
channels (SPUBLISH/SSUBSCRIBE), carried only by the node that holds the stream: the hub
then holds one connection per node it follows streams on, learns the slot map again
when a node fails or a slot moves, and moves each channel to its new node.

The stream stays the record: a reader that joins late, falls behind (more than
`QUEUE_LIMIT` entries waiting) or sees a gap in the positions reads the missing entries
from the stream itself (XREAD without BLOCK, on the shared pool) and goes on with what the
hub hands it, dropping what it already has. A reader subscribes before it reads the
stream, so nothing falls between the two.

If the pub/sub connection drops, the hub reconnects and every reader reads back what it
may have missed; if Redis cannot be reached, every reader ends with the error. A reader's
own reads that Redis does not answer in time (a stall) are tried again at its next tick:
whether Redis is gone is the hub's pings' call, not one slow read's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Iterable

from redis.asyncio import RedisCluster
from redis.asyncio.connection import AbstractConnection, Connection
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MovedError, RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import events as ev
from shared import keys
from shared.errors import ResumePointExpired, StreamNotFound
from shared.redis.clients import DataRedis, RedisOutage
from shared.redis.mux import NOT_ENOUGH_DATA, buffered_reply
from shared.store import Entry, StreamStore

log = logging.getLogger(__name__)

QUEUE_LIMIT = 256  # entries waiting for one reader before it reads the stream itself
CATCH_UP_PAGE = 256  # entries per read when catching up
PING_INTERVAL_S = 5.0  # the hub's connection is pinged this often, and must answer
HANDSHAKE_TIMEOUT_S = 5.0  # a new connection must be set up (connect, name) within this
READER_MARK_INTERVAL_S = 1.0
RECONNECT_BACKOFF_S = (0.05, 0.2, 0.5, 1.0, 2.0)
UNREADABLE_TOLD_EVERY_S = 60.0  # unreadable live messages are logged this often at most


def parse_live(data: bytes) -> list[Entry]:
    """A live-channel message (see append.lua): the position of its first event and the
    entry ids, space-separated, on the first line; then each event's JSON on a line."""
    head, _, body = data.partition(b"\n")
    ids = head.decode().split(" ")
    seq = int(ids[0])
    payloads = body.split(b"\n")
    if len(payloads) != len(ids) - 1:
        raise ValueError(f"{len(ids) - 1} entry ids for {len(payloads)} events")
    entries: list[Entry] = []
    append, plain, decode = entries.append, ev.match_plain_text, ev.decode
    for entry_id, payload in zip(ids[1:], payloads, strict=True):
        # `Entry.read`, inline (a message carries a batch of them); the tuple made without
        # the named tuple's own constructor, which is a Python call of its own.
        value = payload if plain(payload) else decode(payload)
        append(_new_tuple(Entry, (entry_id, seq, value)))
        seq += 1
    return entries


_new_tuple = tuple.__new__


class _Sub:
    """The streams this process listens to: its channel and its local readers."""

    __slots__ = ("channel", "confirmed", "link", "readers", "stream_id")

    def __init__(self, stream_id: str, channel: bytes) -> None:
        self.stream_id = stream_id
        self.channel = channel
        self.readers: list[Reader] = []  # most streams have one
        self.confirmed = False  # Redis has confirmed the subscription; messages flow
        self.link: _Link | None = None  # the connection it is subscribed on


class Reader:
    """One local reader of one stream: its position (the last entry id it has and the
    position of the next), the entries the hub handed it, and what woke it."""

    __slots__ = (
        "_last",
        "after",
        "catch_up",
        "drained",
        "error",
        "finished",
        "fresh",
        "gone",
        "hub",
        "next_seq",
        "queue",
        "stalled",
        "sub",
        "ticked",
        "waiter",
    )

    def __init__(self, hub: StreamHub, sub: _Sub, after: str, next_seq: int) -> None:
        self.hub = hub
        self.sub = sub
        self.after = after
        self.next_seq = next_seq
        self.queue: list[Entry] = []
        # Read the stream once subscribed: whatever was written before that is only there.
        self.catch_up = True
        self.fresh = True  # nothing since it opened has said it may have missed entries
        self.waiter: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        self.drained = False
        self.finished = False
        self.gone = False  # its client disconnected
        self.ticked = False
        self.stalled = False  # its last read timed out: the next waits for a tick
        self._last = asyncio.get_running_loop().time()  # when it last had something

    def push(self, entries: list[Entry]) -> None:
        self.stalled = False  # Redis is talking again: a read it owes may go now
        if len(self.queue) >= QUEUE_LIMIT:
            # Too far behind to keep holding entries for it: it reads them from the stream.
            self.queue = []
            self.must_read()
        else:
            self.queue.extend(entries)
        self.wake()

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def must_read(self) -> None:
        """It may have missed entries: it reads the stream before taking handed-over ones."""
        self.catch_up = True
        self.fresh = False

    def heard_from_start(self) -> None:
        """Its stream was created while the hub listened to it (Redis counted the
        subscription as the record was made): every entry comes on the channel, so the
        read it would make once subscribed finds nothing, and is not made. Unless
        something since it opened (a reconnect, a gap, a move, a read of its own) already
        asked for a read, or made one."""
        if self.fresh:
            self.catch_up = False

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.wake()

    def continued(self) -> bool:
        """Whether the entries the hub handed over include the next one this reader needs
        (a new stream's first events, published before its reader read the stream): then
        nothing before them is missing, and a gap after it is caught by `accept`."""
        queue = self.queue
        return bool(queue) and queue[0].seq <= self.next_seq <= queue[-1].seq

    def accept(self, entries: list[Entry]) -> list[Entry]:
        """The entries that continue this reader's position, in order, up to its terminal
        event; a gap in the positions means it missed some, which it then reads."""
        out = []
        for entry in entries:
            if entry.seq < self.next_seq:
                continue  # already had it (from its own read of the stream)
            if entry.seq > self.next_seq:
                self.must_read()
                break
            out.append(entry)
            self.next_seq += 1
            self.after = entry.id
            if entry.terminal:
                self.finished = True
                break
        if out:
            self._last = asyncio.get_running_loop().time()
        return out

    async def wait(self) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        try:
            await self.waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        self.hub._close(self)


class StreamHub:
    """Listens for the streams this process's readers follow. `tick_s` is how long a
    reader may sit idle before it is woken for a keep-alive (and a look at the stream)."""

    def __init__(
        self, redis: DataRedis, store: StreamStore, *, tick_s: float, name: str | None = None
    ) -> None:
        self.redis = redis
        self.store = store
        self.tick_s = tick_s
        self.name = name  # the client name of its connections in Redis
        self.draining = False
        self.sharded = isinstance(redis, RedisCluster)
        self._subs: dict[bytes, _Sub] = {}
        self._links: dict[str, _Link] = {}
        self._link_tasks: set[asyncio.Task[None]] = set()
        self._unrouted: set[bytes] = set()  # channels whose node is not known yet
        self._recheck: set[bytes] = set()  # channels whose node may have changed
        self._running = False
        self._refreshing: asyncio.Task[None] | None = None
        self._unreadable = 0  # live messages not read since that was last told
        self._unreadable_told = -UNREADABLE_TOLD_EVERY_S

    @property
    def streams(self) -> int:
        return len(self._subs)

    # -- readers --------------------------------------------------------------------------

    def open(self, stream_id: str, after: str, next_seq: int) -> Reader:
        """Start listening for `stream_id` on behalf of a reader at `after` (an entry id,
        "0-0" for the start) whose next event is the `next_seq`th."""
        channel = keys.live_channel(stream_id).encode()
        sub = self._subs.get(channel)
        if sub is None:
            sub = self._subs[channel] = _Sub(stream_id, channel)
            self._route(sub)
        reader = Reader(self, sub, after, next_seq)
        reader.drained = self.draining
        sub.readers.append(reader)
        return reader

    def _close(self, reader: Reader) -> None:
        sub = reader.sub
        if reader in sub.readers:
            sub.readers.remove(reader)
        if not sub.readers and self._subs.get(sub.channel) is sub:
            del self._subs[sub.channel]
            self._unrouted.discard(sub.channel)
            if sub.link is not None:
                sub.link.unsubscribe(sub.channel)
                sub.link = None

    async def follow(
        self, reader: Reader, *, drainable: bool = True
    ) -> AsyncGenerator[list[Entry] | None, None]:
        """The reader's entries in order, in batches, up to and including the terminal
        event; None each time it sat idle for `tick_s` (the cue for a keep-alive). Stops
        early when the process drains, if `drainable`. Closes the reader at the end."""
        store = self.store
        stream_id = reader.sub.stream_id
        page: list[Entry] = []
        queued: list[Entry] = []
        try:
            while not reader.finished:
                if reader.error is not None:
                    raise reader.error
                if reader.gone or (reader.drained and drainable):
                    return
                if reader.catch_up and reader.fresh and reader.continued():
                    # What the hub handed over continues it: no read. (Only before anything
                    # said it may have missed entries: after a reconnect, say, the entries
                    # it holds may end where the ones it missed begin.)
                    reader.catch_up = False
                if reader.catch_up and reader.sub.confirmed and not reader.stalled:
                    reader.catch_up = reader.fresh = False
                    try:
                        page = await store.read(
                            stream_id, reader.after, block_ms=None, count=CATCH_UP_PAGE
                        )
                    except RedisTimeoutError:
                        # Redis is slow or stalled: read again at the next tick.
                        reader.catch_up = reader.stalled = True
                        continue
                    if len(page) == CATCH_UP_PAGE:
                        reader.catch_up = True  # more to read
                    if page and page[0].seq > reader.next_seq:
                        # Behind the stream's length cap, or Redis lost events in a failover.
                        raise ResumePointExpired("events of this stream are no longer held")
                    batch = reader.accept(page)
                elif reader.queue:
                    queued, reader.queue = reader.queue, []
                    batch = reader.accept(queued)
                elif reader.ticked:
                    reader.ticked = reader.stalled = False
                    try:
                        await self._look(reader)
                    except RedisTimeoutError:
                        reader.stalled = True  # Redis is slow or stalled: look next tick
                    else:
                        if reader.finished or reader.catch_up:
                            continue
                    yield None
                    continue
                else:
                    await reader.wait()
                    continue
                if batch:
                    yield batch
                # A reader waits with nothing of what it last read.
                batch = page = queued = []
        finally:
            reader.close()

    async def _look(self, reader: Reader) -> None:
        """An idle reader's look at its stream: it must still exist, and if entries came
        that the hub never handed over, read them."""
        stream_id = reader.sub.stream_id
        status, more = await self.store.idle_check(stream_id, reader.after)
        if status is None:
            raise StreamNotFound("the stream expired while it was being read")
        if more:
            reader.must_read()
        elif status.terminal and reader.sub.confirmed:
            # Ended, and its last event is behind this reader: nothing will ever come.
            reader.finished = True

    async def tick_forever(self) -> None:
        """Wake every reader that has had nothing for `tick_s` (for a keep-alive and a look
        at its stream): one sweep a fraction of `tick_s` apart, not a timer per reader."""
        loop = asyncio.get_running_loop()
        interval = min(max(self.tick_s / 4, 0.05), 2.0)
        while True:
            await asyncio.sleep(interval)
            if self._unrouted:
                self._refresh_soon()  # the cluster's slot map may be known by now
            due = loop.time() - self.tick_s
            for sub in list(self._subs.values()):
                for reader in sub.readers:
                    if reader._last <= due:
                        reader._last = loop.time()
                        reader.ticked = True
                        reader.wake()

    async def mark_readers_forever(self) -> None:
        """Note, about once a second and in one round trip, that this process's streams
        have readers (the abandoned-stream policy cancels streams nobody reads)."""
        while True:
            stream_ids = [sub.stream_id for sub in self._subs.values()]
            if stream_ids:
                await self.store.mark_readers(stream_ids)
            await asyncio.sleep(READER_MARK_INTERVAL_S)

    def drain(self) -> None:
        """The process is shutting down: readers stop at their next event boundary."""
        self.draining = True
        for sub in self._subs.values():
            for reader in sub.readers:
                reader.drained = True
                reader.wake()

    # -- the connections -----------------------------------------------------------------

    async def run(self) -> None:
        """Hold the pub/sub connections (one; with a Cluster, one per node that holds a
        followed stream), reconnecting as they drop; run supervised."""
        self._running = True
        try:
            if self.sharded:
                await self._refresh()
            else:
                self._start(self._link("redis"))
            await asyncio.Event().wait()
        finally:
            self._running = False
            for task in list(self._link_tasks):
                task.cancel()
            await asyncio.gather(*self._link_tasks, return_exceptions=True)

    def _route(self, sub: _Sub, name: str | None = None) -> None:
        """Subscribe `sub` on the connection to the node that holds its stream (`name`,
        when a node just said so)."""
        name = name or self._node_of(sub.channel)
        if name is None:
            self._unrouted.add(sub.channel)
            self._refresh_soon()
            return
        self._unrouted.discard(sub.channel)
        link = self._links.get(name) or self._link(name)
        if link.task is None and self._running:
            self._start(link)
        sub.link = link
        sub.confirmed = False
        for reader in sub.readers:
            reader.must_read()
        link.subscribe(sub.channel)

    def _node_of(self, channel: bytes) -> str | None:
        if not isinstance(self.redis, RedisCluster):
            return "redis"
        try:
            return str(self.redis.get_node_from_key(channel).name)
        except (RedisError, RedisClusterException, IndexError, KeyError, AttributeError):
            return None  # the slot map is not known (yet)

    def _link(self, name: str) -> _Link:
        link = self._links[name] = _Link(self, name)
        return link

    def _start(self, link: _Link) -> None:
        task = asyncio.create_task(link.run(), name=f"spool-hub-link-{link.name}")
        link.task = task
        self._link_tasks.add(task)
        task.add_done_callback(self._link_tasks.discard)

    def _refresh_soon(self, channels: Iterable[bytes] = ()) -> None:
        """Look again, soon, where `channels` (and any not routed yet) belong: on a
        cluster only (one Redis has one place for everything)."""
        if not self.sharded:
            return
        self._recheck.update(channels or self._unrouted)
        if self._running and (self._refreshing is None or self._refreshing.done()):
            self._refreshing = asyncio.create_task(self._refresh(), name="spool-hub-refresh")

    async def _refresh(self) -> None:
        """Move channels whose node may have changed (it failed, dropped them, or was
        never known) to the node that holds their slot now. A keyed command for each lets
        the cluster client learn a moved slot (MOVED) or a failed node (it then reads
        the slot map again) before the channel is routed by it."""
        assert isinstance(self.redis, RedisCluster)
        try:
            await self.redis.initialize()  # the first time only; shared with the commands
        except (RedisError, OSError) as exc:
            log.warning("stream hub cannot read the cluster's slot map: %s", exc)
            return
        # Channels whose node is still unknown afterwards wait for the next tick's look.
        while self._recheck:
            wanted, self._recheck = self._recheck | self._unrouted, set()
            subs = [self._subs[c] for c in wanted if c in self._subs]
            await asyncio.gather(
                *(self.redis.exists(keys.job_key(sub.stream_id)) for sub in subs),
                return_exceptions=True,
            )
            for sub in subs:
                if self._subs.get(sub.channel) is not sub:
                    continue  # its readers left meanwhile
                name = self._node_of(sub.channel)
                if name is None:
                    self._unrouted.add(sub.channel)  # the map is not known yet: the next
                    continue  # tick's look routes it
                if sub.link is None or name != sub.link.name:
                    if sub.link is not None:
                        sub.link.forget(sub.channel)
                    self._route(sub, name)

    async def _connect(self, link: _Link) -> AbstractConnection:
        # Reads wait as long as no message comes; pings tell a dead Redis from a quiet one.
        if isinstance(self.redis, RedisCluster):
            node = self.redis.get_node(node_name=link.name)
            if node is None:
                raise RedisConnectionError(f"{link.name} is no longer a node of the cluster")
            # A connection of its own, whatever the node's commands go over (see
            # shared.redis.mux.NodeMuxLease).
            kwargs = {k: v for k, v in node.connection_kwargs.items() if k != "muxes"}
            connection_class: type[AbstractConnection] = Connection
        else:
            kwargs = self.redis.connection_pool.connection_kwargs
            connection_class = self.redis.connection_pool.connection_class
        options = {**kwargs, "socket_timeout": None}
        if self.name is not None:
            options["client_name"] = self.name
        conn = connection_class(**options)
        # Reads on it never time out, so its setup is bounded here: a frozen Redis accepts
        # the TCP connection and then answers nothing.
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException as exc:
            await conn.disconnect(nowait=True)
            if isinstance(exc, TimeoutError):
                message = f"redis did not answer within {HANDSHAKE_TIMEOUT_S:g}s"
                raise RedisTimeoutError(message) from None
            raise
        return conn

    def _deliver(self, channel: bytes, data: bytes) -> None:
        sub = self._subs.get(channel)
        if sub is None:
            return
        try:
            entries = parse_live(data)
        except ValueError as exc:
            # Not what a worker of this version writes (one of another version, during a
            # rolling update, writes every message so): the stream itself says what was
            # appended. Told once a minute at most, with how many there were.
            self._unreadable += 1
            now = asyncio.get_running_loop().time()
            if now >= self._unreadable_told + UNREADABLE_TOLD_EVERY_S:
                log.warning(
                    "%d unreadable live message(s); readers read their streams instead "
                    "(the last on %r: %s)", self._unreadable, channel, exc,
                )  # fmt: skip
                self._unreadable, self._unreadable_told = 0, now
            for reader in sub.readers:
                reader.must_read()
                reader.wake()
            return
        for reader in sub.readers:
            reader.push(entries)

    def _confirmed(self, link: _Link, channel: bytes) -> None:
        sub = self._subs.get(channel)
        if sub is not None and sub.link is link and not sub.confirmed:
            sub.confirmed = True
            for reader in sub.readers:
                reader.stalled = False
                reader.wake()

    def _dropped(self, link: _Link, channel: bytes) -> None:
        """The node ended a subscription nobody asked to end (its slot moved away)."""
        sub = self._subs.get(channel)
        if sub is not None and sub.link is link:
            link.forget(channel)
            sub.link = None
            self._unrouted.add(channel)
            self._refresh_soon()

    def _moved(self, link: _Link, moved: MovedError) -> None:
        """A node refused a subscription: the slot is served by the node it names."""
        for channel in list(link.channels):
            if key_slot(channel) != moved.slot_id:
                continue
            link.forget(channel)
            sub = self._subs.get(channel)
            if sub is not None and sub.link is link:
                self._route(sub, f"{moved.host}:{moved.port}")
        self._refresh_soon()  # the client's own map learns it too

    def _fail(self, link: _Link, error: BaseException) -> None:
        """The link cannot reach its node: its readers end with the error (their clients
        resume, on whichever node then holds the stream)."""
        for channel in list(link.channels):
            sub = self._subs.get(channel)
            if sub is not None and sub.link is link:
                for reader in sub.readers:
                    reader.fail(error)
        self._refresh_soon(link.channels)


class _Link:
    """The pub/sub connection to one Redis node and the channels subscribed on it. It
    (un)subscribes as readers come and go, a burst in one command, pings every
    `PING_INTERVAL_S`, and reconnects when the connection drops."""

    def __init__(self, hub: StreamHub, name: str) -> None:
        self.hub = hub
        self.name = name
        self.task: asyncio.Task[None] | None = None
        self.channels: set[bytes] = set()
        self._to_subscribe: set[bytes] = set()
        self._to_unsubscribe: set[bytes] = set()
        self._unconfirmed: dict[bytes, int] = {}  # (un)subscribes sent and not yet answered
        self._dirty = asyncio.Event()
        self._pong = 0.0
        sharded = hub.sharded
        self._subscribe = "SSUBSCRIBE" if sharded else "SUBSCRIBE"
        self._unsubscribe = "SUNSUBSCRIBE" if sharded else "UNSUBSCRIBE"

    def subscribe(self, channel: bytes) -> None:
        self.channels.add(channel)
        self._to_unsubscribe.discard(channel)
        self._to_subscribe.add(channel)
        self._dirty.set()

    def unsubscribe(self, channel: bytes) -> None:
        self.channels.discard(channel)
        self._to_subscribe.discard(channel)
        self._to_unsubscribe.add(channel)
        self._dirty.set()

    def forget(self, channel: bytes) -> None:
        """The channel moved to another node: nothing to send here."""
        self.channels.discard(channel)
        self._to_subscribe.discard(channel)
        self._unconfirmed.pop(channel, None)

    async def run(self) -> None:
        """Connect, serve, and connect again, whatever goes wrong (Redis down, frozen or
        refusing clients at `maxclients`): the link ends only with the hub."""
        loop = asyncio.get_running_loop()
        outage = RedisOutage(f"stream hub ({self.name})", RECONNECT_BACKOFF_S)
        while True:
            try:
                conn = await self.hub._connect(self)
            except Exception as exc:
                # Readers would wait on a link that cannot hear: they end with the error.
                self.hub._fail(self, exc)
                if self.hub.sharded and not self.channels:
                    # A node with nothing to listen to is not waited for: a new reader
                    # starts a new link.
                    self.hub._links.pop(self.name, None)
                    return
                await outage.wait(exc)
                continue
            outage.ok()
            started = loop.time()
            try:
                await self._serve(conn)
            except (RedisError, OSError) as exc:
                log.warning("stream hub lost its connection to %s (%s); reconnecting",
                            self.name, exc)  # fmt: skip
            except Exception:
                log.exception("stream hub connection to %s failed; reconnecting", self.name)
            finally:
                await conn.disconnect(nowait=True)
            self.hub._refresh_soon(self.channels)
            if loop.time() - started < PING_INTERVAL_S:
                # Dropped as soon as it was made: not a reconnect loop at full speed.
                await asyncio.sleep(RECONNECT_BACKOFF_S[-1])

    async def _serve(self, conn: AbstractConnection) -> None:
        # A new connection: every channel is subscribed again, and every reader reads back
        # what it may have missed once that is confirmed.
        self._unconfirmed.clear()
        self._to_unsubscribe.clear()
        self._to_subscribe = set(self.channels)
        for channel in self.channels:
            sub = self.hub._subs.get(channel)
            if sub is not None:
                sub.confirmed = False
                for reader in sub.readers:
                    reader.must_read()
        self._dirty.set()
        self._pong = asyncio.get_running_loop().time()
        writer = asyncio.create_task(self._write_loop(conn), name="spool-hub-writer")
        listener = asyncio.create_task(self._read_loop(conn), name="spool-hub-listener")
        try:
            done, _ = await asyncio.wait({writer, listener}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in (writer, listener):
                task.cancel()
            await asyncio.gather(writer, listener, return_exceptions=True)

    async def _write_loop(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        next_ping = loop.time() + PING_INTERVAL_S
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_ping - loop.time())):
                    await self._dirty.wait()
            now = loop.time()
            if now >= next_ping:
                # Pinged however busy the hub is, so a quiet Redis is told from a dead one.
                if now - self._pong > 3 * PING_INTERVAL_S:
                    raise RedisConnectionError("redis stopped answering the hub's pings")
                await conn.send_packed_command(conn.pack_command("PING"), check_health=False)
                next_ping = now + PING_INTERVAL_S
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            commands: list[list[bytes | str]] = []
            if self._to_unsubscribe:
                gone, self._to_unsubscribe = list(self._to_unsubscribe), set()
                commands += self._commands(self._unsubscribe, gone)
            if self._to_subscribe:
                new, self._to_subscribe = list(self._to_subscribe), set()
                commands += self._commands(self._subscribe, new)
            if commands:
                await conn.send_packed_command(conn.pack_commands(commands), check_health=False)

    def _commands(self, command: str, channels: list[bytes]) -> list[list[bytes | str]]:
        for channel in channels:
            self._unconfirmed[channel] = self._unconfirmed.get(channel, 0) + 1
        if self.hub.sharded:
            # Shard channels of one command must share a slot: one command each.
            return [[command, channel] for channel in channels]
        return [[command, *channels]]

    async def _read_loop(self, conn: AbstractConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                reply = buffered_reply(conn)  # many messages come in one read, under load
                if reply is NOT_ENOUGH_DATA:
                    reply = await conn.read_response(disconnect_on_error=False)
                elif isinstance(reply, Exception):
                    raise reply
            except MovedError as moved:  # a subscription sent to a node that lost the slot
                self.hub._moved(self, moved)
                continue
            if reply == b"PONG":  # a ping while subscribed to nothing gets a plain reply
                self._pong = loop.time()
                continue
            kind = reply[0]
            if kind in (b"message", b"smessage"):
                self.hub._deliver(reply[1], reply[2])
            elif kind in (b"subscribe", b"ssubscribe"):
                if self._answered(reply[1]):
                    self.hub._confirmed(self, reply[1])
            elif kind in (b"unsubscribe", b"sunsubscribe"):
                if reply[1] in self._unconfirmed:
                    self._answered(reply[1])
                elif reply[1] in self.channels:
                    self.hub._dropped(self, reply[1])
            elif kind == b"pong":
                self._pong = loop.time()

    def _answered(self, channel: bytes) -> bool:
        """Count an answer to a (un)subscribe; True once the last one sent is answered and
        the channel is still wanted here."""
        left = self._unconfirmed.get(channel, 0) - 1
        if left > 0:
            self._unconfirmed[channel] = left
            return False
        self._unconfirmed.pop(channel, None)
        return channel in self.channels and channel not in self._to_subscribe
