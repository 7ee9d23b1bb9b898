"""The stream store: job records and their Redis Streams of canonical events.

Writes from workers are fenced: a worker claims a job with a fresh attempt token, and every
append checks, atomically in a Lua script, that the record still names that token. A stale
attempt (arq re-ran the job, or the worker's lease ran out) can never append.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import orjson
from redis.asyncio import Redis, RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from shared import events as ev
from shared import keys, scripts
from shared.errors import (
    FenceLost,
    InvalidRequest,
    InvalidResumeId,
    ResumePointExpired,
    StreamExpired,
    StreamNotFound,
)
from shared.limits import settle, settling, usage_model
from shared.redis import lean
from shared.redis.clients import DataRedis
from shared.settings import Settings
from shared.transcript import Transcript

log = logging.getLogger(__name__)

ENTRY_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
MAX_ID_PART = 2**64 - 1


class Status(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (Status.COMPLETED, Status.FAILED, Status.CANCELLED)


@dataclass(frozen=True, slots=True)
class JobRecord:
    id: str
    status: Status
    surface: str
    model: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    request: dict[str, Any]
    render: dict[str, Any]
    output: dict[str, Any] | None
    cancel_requested: bool
    owner: str

    def without_request(self) -> JobRecord:
        """The record with an empty request (which can be large), for what holds it long.
        (`dataclasses.replace` costs several times this, on every streaming request.)"""
        return JobRecord(
            self.id,
            self.status,
            self.surface,
            self.model,
            self.created_at,
            self.started_at,
            self.finished_at,
            {},
            self.render,
            self.output,
            self.cancel_requested,
            self.owner,
        )

    @classmethod
    def from_hash(cls, stream_id: str, h: dict[bytes, bytes]) -> JobRecord:
        # Positional, and no helper calls: every job's claim reads one.
        get, loads = h.get, orjson.loads
        started, finished = get(b"started_at"), get(b"finished_at")
        request, render, output = get(b"request"), get(b"render"), get(b"output")
        return cls(
            stream_id,
            Status(h[b"status"].decode()),
            h[b"surface"].decode(),
            h[b"model"].decode(),
            float(h[b"created_at"]),
            float(started) if started else None,
            float(finished) if finished else None,
            (loads(request) if request else None) or {},
            (loads(render) if render else None) or {},
            loads(output) if output else None,
            get(b"cancel") == b"1",
            get(b"owner", b"").decode(),
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of a worker's claim on a job."""

    outcome: str  # "claimed", "lost" (claimed after a dead attempt emitted), "busy", "done"
    status: Status | None = None
    cancel_requested: bool = False
    appended: int = 0  # events the stream already held
    record: JobRecord | None = None  # the job as claimed (for "claimed" and "lost")


@dataclass(frozen=True, slots=True)
class Lease:
    """A renewed lease: whether the attempt still owns the job, the seconds since a reader
    last looked at the stream, and whether a cancel was requested."""

    owned: bool
    since_reader_s: float
    cancel_requested: bool


@dataclass(frozen=True, slots=True)
class Reaped:
    """What the reaper found: "requeued" (with the requeue count), "lost", "expired" or
    "cancelled" (the reaper now holds the attempt token and must end the stream), or
    nothing to do."""

    outcome: str
    requeues: int = 0
    appended: int = 0


StreamEntry = tuple[str, ev.Event]


@dataclass(frozen=True, slots=True)
class AppendBatch:
    """Events for one stream, sent in one fenced append; `held` is how many events the
    stream held before them as the attempt counts them."""

    stream_id: str
    attempt: str
    held: int
    events: list[ev.Event]


class Entry(NamedTuple):
    """One stream entry: its Redis id, its position in the stream (1-based, counted over
    everything ever appended, so a gap means trimmed events) and the event. A tuple: one
    is made per event per process, and a tuple is made in half a frozen dataclass's time.

    `value` is the event, or, for a plain text delta read from Redis, the event as stored
    (see `ev.plain_text`): nearly every event of a stream is one, and a format that splices
    its text into its own JSON renders it without decoding it. `event` decodes it."""

    id: str
    seq: int
    value: ev.Event | bytes

    @property
    def event(self) -> ev.Event:
        value = self.value
        return ev.decode(value) if type(value) is bytes else value  # type: ignore[return-value]

    @property
    def terminal(self) -> bool:
        value = self.value
        return type(value) is not bytes and ev.is_terminal(value)  # type: ignore[arg-type]

    @classmethod
    def read(cls, entry_id: bytes, seq: int, raw: bytes) -> Entry:
        """An entry as stored (a plain text delta stays undecoded)."""
        return cls(entry_id.decode(), seq, raw if ev.is_plain_text(raw) else ev.decode(raw))

    @classmethod
    def from_redis(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
        return cls.read(entry_id, int(fields[b"n"]), fields[ev.FIELD])

    @classmethod
    def from_flat(cls, entry_id: bytes, flat: list[bytes]) -> Entry:
        """An entry as Redis sends it: its fields and values in one list."""
        return cls.from_redis(entry_id, dict(zip(flat[::2], flat[1::2], strict=True)))


@dataclass(frozen=True, slots=True)
class RenderState:
    """A snapshot of a wire format's renderer state, taken after the entry `entry_id` at
    position `seq` (see keys.render_state_key)."""

    seq: int
    entry_id: str
    state: bytes

    def member(self) -> bytes:
        return b"%d %s %s" % (self.seq, self.entry_id.encode(), self.state)

    @classmethod
    def from_member(cls, member: bytes) -> RenderState:
        seq, entry_id, state = member.split(b" ", 2)
        return cls(int(seq), entry_id.decode(), state)


def now_ms() -> int:
    """This host's clock in ms: only for index scores, which say when to look, not what
    is due (the scripts decide that by Redis' own clock)."""
    return int(time.time() * 1000)


def parse_entry_id(value: str) -> tuple[int, int]:
    match = ENTRY_ID.fullmatch(value)
    if not match or int(match[1]) > MAX_ID_PART or int(match[2]) > MAX_ID_PART:
        raise InvalidResumeId(f"{value!r} is not an event id of this stream")
    return int(match[1]), int(match[2])


class StreamStore:
    """Job records and event streams in Redis. One instance per process, shared by tasks.

    Records and streams live on the data Redis (`redis`: one Redis, Sentinel's primary, or
    a Cluster, where each stream's keys share a slot); the job indexes, concurrency slots
    and usage on the control Redis (`control`, the queue's; the same one unless
    SPOOL_QUEUE_URL says otherwise). No script touches both: the indexes are kept as
    supersets, written before a job can need them and cleared after it no longer does, so
    a crash between the two writes leaves an entry the reaper looks at and drops, never a
    job nobody looks at."""

    def __init__(self, redis: DataRedis, settings: Settings, control: Redis | None = None) -> None:
        self.redis = redis
        if control is None:
            if not isinstance(redis, Redis):
                raise TypeError("a Redis Cluster needs a control Redis beside it")
            control = redis
        self.control: Redis = control
        # Live channels are shard channels on a cluster: only the stream's node carries them.
        sharded = isinstance(redis, RedisCluster)
        self.publish = "SPUBLISH" if sharded else "PUBLISH"
        self._count_listeners = "SHARDNUMSUB" if sharded else "NUMSUB"
        self.maxlen = settings.stream_maxlen
        self.retention_s = settings.retention_s
        self.tombstone_s = settings.tombstone_s
        # Until a job ends its keys live long enough to outlast any run of it.
        self.pending_ttl_s = (
            settings.retention_s + settings.job_timeout_s + settings.queue_timeout_s
        )
        self.lease_ms = int(settings.lease_s * 1000)
        self.queue_timeout_ms = int(settings.queue_timeout_s * 1000)
        self.max_requeues = settings.max_requeues
        self.task_retention_s = settings.task_retention_s
        self.task_timeout_s = settings.task_timeout_s
        self._claim = scripts.register(redis, "claim")
        self._append = scripts.register(redis, "append")
        self._renew = scripts.register(redis, "renew")
        self._finish = scripts.register(redis, "finish")
        self._finish_settle = scripts.register(redis, "finish_settle")
        self._cancel = scripts.register(redis, "cancel")
        self._release = scripts.register(redis, "release")
        self._reap = scripts.register(redis, "reap")
        self._mark_reader = scripts.register(redis, "mark_reader")
        self._reaper_clock = scripts.register(self.control, "reaper_clock")
        self._settle_script = scripts.register(self.control, "settle")
        self._follow_mint = scripts.register(redis, "follow_mint")
        self.settings = settings

    @staticmethod
    def _keys(stream_id: str) -> list[str]:
        """The keys the job scripts take, in the order their headers name them."""
        return [keys.job_key(stream_id), keys.stream_key(stream_id), keys.tombstone_key(stream_id)]

    # -- API side -------------------------------------------------------------------------

    async def create(
        self,
        stream_id: str,
        *,
        surface: str,
        model: str,
        request: dict[str, Any],
        render: dict[str, Any],
        owner: str,
        then: Callable[[lean.CommandSink], object] | None = None,
    ) -> int:
        """Create a queued job record; `then` adds more commands (the enqueue) to the
        control Redis' round trip, which also puts the job on the queued index. Returns
        how many connections listened to the stream's live channel as the record was made
        (a stream hub that subscribed before has every event from the channel)."""
        try:
            encoded = orjson.dumps(request), orjson.dumps(render)
        except orjson.JSONEncodeError as exc:
            raise InvalidRequest(f"the request cannot be stored: {exc}") from exc
        args: list[Any] = [
            stream_id, surface, model, *encoded, self.pending_ttl_s, owner, self.retention_s
        ]  # fmt: skip
        args += [keys.live_channel(stream_id), self._count_listeners]
        return await self._create_record(stream_id, args, then)

    async def _create_record(
        self,
        stream_id: str,
        args: list[Any],
        then: Callable[[lean.CommandSink], object] | None,
    ) -> int:
        # EVAL, not EVALSHA: a script cache lost to a restart cannot fail the first command.
        source = scripts.source("create_job")
        if self.redis is self.control:
            # One Redis: the record, the index and the enqueue share one round trip.
            def create_and_queue(pipe: lean.CommandSink) -> None:
                pipe.execute_command("EVAL", source, 1, keys.job_key(stream_id), *args)
                self._queued(pipe, stream_id)
                if then is not None:
                    then(pipe)

            return int((await lean.pipelined(self.control, create_and_queue))[0])
        # Two: the record first, for a worker may take the job the moment it is queued.
        # A record whose enqueue then fails expires unread (the caller got the error).
        listeners = await self.redis.eval(source, 1, keys.job_key(stream_id), *args)  # type: ignore[misc]
        async with self.control.pipeline(transaction=False) as pipe:
            self._queued(pipe, stream_id)
            if then is not None:
                then(pipe)
            await pipe.execute()
        return int(listeners)

    @staticmethod
    def _queued(pipe: lean.CommandSink, stream_id: str, at_ms: int | None = None) -> None:
        at = at_ms if at_ms is not None else now_ms()
        pipe.execute_command("ZADD", keys.QUEUED_KEY, at, stream_id)

    async def create_task(
        self,
        task_id: str,
        *,
        model: str,
        request: dict[str, Any],
        owner: str,
        idempotency: tuple[str, str] | None = None,
        with_callback: bool = False,
    ) -> str | None:
        """Create a task record (surface "task"), kept `task_retention_s` once it ends.
        `idempotency` is the key's Redis key and `"<task id> <body digest>"`: when the key
        is already held, nothing is created and what it holds is returned."""
        try:
            encoded = orjson.dumps(request)
        except orjson.JSONEncodeError as exc:
            raise InvalidRequest(f"the task cannot be stored: {exc}") from exc
        pending_ttl = self.task_retention_s + self.task_timeout_s + self.queue_timeout_ms // 1000
        if idempotency is not None:
            idem_key, idem_value = idempotency
            # The key is taken first; the loser of a race answers what the winner stored.
            while not await self.control.set(idem_key, idem_value, nx=True, ex=pending_ttl):
                held = await self.control.get(idem_key)
                if held is not None:
                    return held.decode()  # type: ignore[no-any-return]
        try:
            if with_callback:
                # Before the record: the dispatcher drops an id whose task never came.
                await self.control.zadd(keys.HOOKS_PENDING_KEY, {task_id: now_ms()})
            args: list[Any] = [
                task_id, "task", model, encoded, b"{}", pending_ttl, owner, self.task_retention_s
            ]  # fmt: skip
            await self._create_record(task_id, args, None)
        except BaseException:
            if idempotency is not None:
                with contextlib.suppress(RedisError):
                    await self.control.delete(idempotency[0])
            raise
        return None

    async def get(self, stream_id: str) -> JobRecord:
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.job_key(stream_id))  # type: ignore[misc]
        if not raw or b"status" not in raw:
            tombstone = await self.redis.get(keys.tombstone_key(stream_id))
            if tombstone is not None:
                owner = tombstone.decode() if tombstone != b"1" else None
                raise StreamExpired(f"stream {stream_id} has expired", owner=owner)
            raise StreamNotFound(f"no stream with id {stream_id!r}")
        return JobRecord.from_hash(stream_id, raw)

    async def request_cancel(self, stream_id: str) -> Status:
        """Cancel a job. A queued job ends here and now; a running one is flagged and its
        worker told on the cancel channel; a finished one is left as it is."""
        finish = ev.Finish(reason="cancelled")
        output = Transcript(finish_reason="cancelled").to_json()
        result = await self._cancel(
            keys=self._keys(stream_id),
            args=[
                ev.encode(finish),
                self.maxlen,
                self.retention_s,
                orjson.dumps(output),
                self.tombstone_s,
                keys.live_channel(stream_id),
                self.publish,
            ],
        )
        if result is None:
            raise StreamNotFound(f"no stream with id {stream_id!r}")
        status = Status(result[0].decode())
        if status is Status.CANCELLED and len(result) > 1:
            await self._settle(stream_id, result[1].decode() or None)
        elif status is Status.RUNNING:
            await self.control.publish(keys.CANCEL_CHANNEL, stream_id)
        return status

    async def mark_readers(self, stream_ids: list[str]) -> None:
        """Note that someone is reading these streams (abandoned streams are cancelled)."""
        await self._run_many(self._mark_reader, [(1, [keys.job_key(sid)]) for sid in stream_ids])

    async def resume_point(self, stream_id: str, entry_id: str | None) -> Entry | None:
        """The entry a reader resumes after: None for "from the start". Raises unless it is
        an event of this stream (400) that is still held (410); a replay from the start of
        a stream whose first events were trimmed, or from an event Redis lost in a
        failover (inside a stream with a gap in its positions), is a 410 too."""
        wanted = parse_entry_id(entry_id) if entry_id is not None else (0, 0)
        key = keys.stream_key(stream_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(key, min=entry_id or "-", max=entry_id or "+", count=1)
            pipe.xrange(key, count=1)
            pipe.xrevrange(key, count=1)
            pipe.xlen(key)
            pipe.hget(keys.job_key(stream_id), "appended")
            hit, first, last, held, appended = await pipe.execute()
        trimmed = int(appended or 0) > held
        if entry_id is None:
            if trimmed:
                raise ResumePointExpired("the start of this stream has been trimmed")
            return None
        if hit:
            return Entry.from_redis(*hit[0])
        if trimmed and first and wanted < parse_entry_id(first[0][0].decode()):
            raise ResumePointExpired(f"event {entry_id} has been trimmed from this stream")
        if trimmed and last and wanted < parse_entry_id(last[0][0].decode()):
            raise ResumePointExpired(f"event {entry_id} is no longer held by this stream")
        raise InvalidResumeId(f"{entry_id!r} is not an event id of this stream")

    async def read(
        self, stream_id: str, after: str, *, block_ms: int | None, count: int = 256
    ) -> list[Entry]:
        """Entries after `after` (an entry id, or "0-0" for the start), waiting up to
        `block_ms` for the first one when there are none yet. Never block through a
        multiplexed client (`shared.redis.mux`): it would hold every other command up."""
        key = keys.stream_key(stream_id)
        mux = lean.mux_of(self.redis) if block_ms is None else None
        if mux is not None:
            # Every new reader reads its stream once: the short way, its reply as Redis
            # sent it (entries with their fields as flat lists).
            (raw,) = await lean.send(mux, [("XREAD", "COUNT", count, "STREAMS", key, after)])
            if not raw:
                return []
            return [Entry.from_flat(eid, flat) for eid, flat in raw[0][1]]
        reply = await self.redis.xread({key: after}, count=count, block=block_ms)
        if not reply:
            return []
        return [Entry.from_redis(eid, fields) for eid, fields in reply[0][1]]

    async def idle_check(self, stream_id: str, after: str) -> tuple[Status | None, bool]:
        """A quiet stream's status, and whether it holds entries after `after`."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(keys.job_key(stream_id), "status")
            pipe.xread({keys.stream_key(stream_id): after}, count=1)
            status, more = await pipe.execute()
        return (Status(status.decode()) if status else None), bool(more)

    async def status(self, stream_id: str) -> Status | None:
        raw = await self.redis.hget(keys.job_key(stream_id), "status")  # type: ignore[misc]
        return Status(raw.decode()) if raw else None

    async def read_range(self, stream_id: str, first: str, last: str) -> list[Entry]:
        entries = await self.redis.xrange(keys.stream_key(stream_id), min=first, max=last)
        return [Entry.from_redis(eid, fields) for eid, fields in entries]

    @functools.cached_property
    def _render_state_read(self) -> AsyncScript:
        return scripts.register(self.redis, "render_state_read")

    @functools.cached_property
    def _render_state_save(self) -> AsyncScript:
        return scripts.register(self.redis, "render_state_save")

    async def read_to_resume(
        self, stream_id: str, tag: str, point: Entry
    ) -> tuple[RenderState | None, list[Entry]]:
        """What a stateful renderer (its state's kind `tag`) needs to reach `point`, in one
        round trip: the latest snapshot of its state taken before the point, and the
        entries after the snapshot up to and including the point (with no snapshot,
        every entry up to the point)."""
        member, raw = await self._render_state_read(
            keys=[keys.render_state_key(stream_id, tag), keys.stream_key(stream_id)],
            args=[point.seq, point.id],
        )
        entries = [Entry.from_flat(eid, flat) for eid, flat in raw]
        return (RenderState.from_member(member) if member is not None else None), entries

    async def save_render_states(
        self, stream_id: str, tag: str, states: list[RenderState], spacing: int
    ) -> None:
        """Keep snapshots of a renderer's state (its kind `tag`), unless the stream already
        has one within `spacing` positions of each (see render_state_save.lua)."""
        key = keys.render_state_key(stream_id, tag)
        events = keys.stream_key(stream_id)
        await self._run_many(
            self._render_state_save,
            [(2, [key, events, s.seq, s.member(), spacing, self.retention_s]) for s in states],
        )

    async def last_entries(self, stream_id: str, count: int) -> list[Entry]:
        """The stream's last `count` entries, oldest first."""
        entries = await self.redis.xrevrange(keys.stream_key(stream_id), count=count)
        return [Entry.from_redis(eid, fields) for eid, fields in reversed(entries)]

    async def mint_follow_token(
        self, stream_id: str, token_digest: str, most: int, longest_s: int, lifetime_s: int
    ) -> int:
        """Keep a follow token for the stream for `lifetime_s`, or as long as the stream
        if that is sooner (see follow_mint.lua): its lifetime in seconds, or 0 when the
        stream already has `most`."""
        ttl = await self._follow_mint(
            keys=[keys.follow_tokens_key(stream_id), keys.job_key(stream_id)],
            args=[token_digest, most, longest_s, lifetime_s],
        )
        return int(ttl)

    async def follow_token_valid(self, stream_id: str, token_digest: str) -> bool:
        """Whether the stream keeps that follow token and it has not expired."""
        expires = await self.redis.hget(keys.follow_tokens_key(stream_id), token_digest)  # type: ignore[misc]
        if expires is None:
            return False
        # Tokens minted before they had lifetimes of their own say "1": the stream's.
        return expires == b"1" or time.time() < float(expires)

    async def delete(self, stream_id: str, render_tags: list[str]) -> None:
        """Forget an ended stream: its record, its events, what its readers kept of it, and
        the tombstone that would say it expired (a deleted stream is not found at all)."""
        names = [
            keys.job_key(stream_id),
            keys.stream_key(stream_id),
            keys.tombstone_key(stream_id),
            keys.follow_tokens_key(stream_id),
            *(keys.render_state_key(stream_id, tag) for tag in render_tags),
        ]
        await self.redis.delete(*names)  # one slot: the keys share the stream's hash tag

    async def queue_position(self, stream_id: str) -> int | None:
        """How many queued jobs are ahead of this one; None when it is not queued."""
        rank = await self.control.zrank(keys.QUEUED_KEY, stream_id)
        return int(rank) if rank is not None else None

    async def read_all(self, stream_id: str) -> list[StreamEntry]:
        return [(e.id, e.event) for e in await self.read_range(stream_id, "-", "+")]

    async def transcript(self, record: JobRecord) -> Transcript:
        """The assembled output: stored once the job ended, rebuilt from events before."""
        if record.output is not None:
            return Transcript.from_json(record.output)
        return await self.rebuild_transcript(record.id)

    async def rebuild_transcript(self, stream_id: str) -> Transcript:
        transcript = Transcript()
        for entry in await self.read_range(stream_id, "-", "+"):
            transcript.apply(entry.event)
        return transcript

    # -- worker side ----------------------------------------------------------------------

    async def claim(self, stream_id: str, attempt: str, worker: str) -> Claim:
        """Take the job for `attempt`. The lease index learns of it in the same round trip
        (scored by this host's guess of the lease's end: the reaper looks then and reads
        the real one); should that write fail, the job is still on the queued index,
        where the reaper finds it too."""
        args: list[Any] = [*self._keys(stream_id), stream_id, attempt, self.lease_ms, worker]
        lease_guess = now_ms() + self.lease_ms
        if self.redis is self.control:

            def claim_and_index(pipe: lean.CommandSink) -> None:
                pipe.execute_command("EVALSHA", self._claim.sha, 3, *args)
                # Run again after a lost script cache: the same writes.
                self._claimed(pipe, stream_id, lease_guess)

            reply = (await self._scripted(self._claim, claim_and_index))[0]
        else:
            reply, indexed = await asyncio.gather(
                self._claim(keys=args[:3], args=args[3:]),
                self._index_claim(stream_id, lease_guess),
                return_exceptions=True,
            )
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(indexed, BaseException):
                log.warning("stream %s: the lease index missed its claim: %s", stream_id, indexed)
        outcome, status = reply[0].decode(), reply[1].decode()
        if outcome in ("claimed", "lost"):
            flat = reply[4]
            record = JobRecord.from_hash(stream_id, dict(zip(flat[::2], flat[1::2], strict=True)))
            return Claim(
                outcome,
                Status.RUNNING,
                cancel_requested=reply[2] == b"1",
                appended=int(reply[3]),
                record=record,
            )
        return Claim(outcome, Status(status) if status != "missing" else None)

    @staticmethod
    def _claimed(pipe: lean.CommandSink, stream_id: str, lease_ms: int) -> None:
        pipe.execute_command("ZADD", keys.LEASES_KEY, lease_ms, stream_id)
        pipe.execute_command("ZREM", keys.QUEUED_KEY, stream_id)

    async def _index_claim(self, stream_id: str, lease_ms: int) -> None:
        async with self.control.pipeline(transaction=False) as pipe:
            self._claimed(pipe, stream_id, lease_ms)
            await pipe.execute()

    async def append(
        self, stream_id: str, attempt: str, events: list[ev.Event], *, held: int
    ) -> None:
        """Append events, fenced by `attempt`. `held` is how many events the stream held
        before them, which makes a retried append idempotent."""
        (outcome,) = await self.append_batches([AppendBatch(stream_id, attempt, held, events)])
        if outcome is None:
            raise FenceLost()

    async def append_batches(self, batches: list[AppendBatch]) -> list[int | None]:
        """Several fenced appends (to different streams) in one round trip. For each batch:
        None when its attempt was fenced out, 0 when it had been written already, minus the
        number of events Redis lost of what the attempt wrote before it (nothing written),
        else the number of events written. Redis connection errors propagate: every batch is then
        safe to send again as it is."""
        calls = [(2, self._append_args(batch)) for batch in batches]
        replies = await self._run_many(self._append, calls)
        return [None if r is None else int(r) for r in replies]

    async def _run_many(self, script: AsyncScript, calls: list[tuple[int, list[Any]]]) -> list[Any]:
        """One run of an idempotent script per call (key count, keys and arguments), in
        one pipeline. The first error is raised (then none of the calls may be taken as
        done; running them all again is safe)."""

        def runs(pipe: Any) -> None:  # a cluster client's pipeline too
            for numkeys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, numkeys, *args)

        return await self._scripted(script, runs)

    async def _scripted(self, script: AsyncScript, fill: Callable[[Any], None]) -> list[Any]:
        """A pipeline that `fill` fills with EVALSHAs of `script` (and other commands, all
        safe to run twice), run in one round trip. When Redis has lost its script cache (a
        restart, or a replica promoted: scripts are not replicated), the script is loaded
        and the whole pipeline run again. Streams and queue share one Redis wherever a
        pipeline holds commands for both."""
        for attempt in range(2):
            try:
                return await lean.pipelined(self.redis, fill)
            except NoScriptError:
                if attempt:
                    raise
                await self.redis.script_load(script.script)
        raise AssertionError("unreachable")

    def _append_args(self, batch: AppendBatch) -> list[Any]:
        return [
            keys.job_key(batch.stream_id),
            keys.stream_key(batch.stream_id),
            batch.attempt,
            self.maxlen,
            self.pending_ttl_s,
            batch.held,
            keys.live_channel(batch.stream_id),
            self.publish,
            b"\n".join([ev.encode(e) for e in batch.events]),
        ]

    async def renew_leases(self, runs: list[tuple[str, str]]) -> list[Lease]:
        """Renew the leases of (stream id, attempt) pairs, all in one round trip."""
        calls = [(1, [keys.job_key(sid), attempt, self.lease_ms]) for sid, attempt in runs]
        replies = await self._run_many(self._renew, calls)
        leases = {sid: int(r[3]) for (sid, _), r in zip(runs, replies, strict=True) if r[0]}
        if leases:
            await self.control.zadd(keys.LEASES_KEY, leases)
        return [Lease(bool(r[0]), int(r[1]) / 1000, r[2] == b"1") for r in replies]

    async def release(self, stream_id: str, attempt: str) -> bool:
        """Hand a job that emitted nothing back to the queue (worker shutting down)."""
        if not await self._release(keys=self._keys(stream_id)[:2], args=[attempt]):
            return False
        async with self.control.pipeline(transaction=False) as pipe:
            self._queued(pipe, stream_id)
            pipe.zrem(keys.LEASES_KEY, stream_id)
            await pipe.execute()
        return True

    async def cancel_requested(self, stream_id: str) -> bool:
        flag = await self.redis.hget(keys.job_key(stream_id), "cancel")  # type: ignore[misc]
        return bool(flag == b"1")

    async def finish(
        self,
        stream_id: str,
        attempt: str,
        *,
        status: Status,
        terminal: ev.Finish | ev.Error | ev.TaskResult,
        transcript: Transcript,
        held: int = 0,
        events: Sequence[ev.Event] = (),
        record: JobRecord | None = None,
    ) -> None:
        """End the stream: the attempt's `events` not written yet, then `terminal`, after
        the `held` events it wrote (see finish_job.lua); store the output, then settle the
        job on the control Redis: its indexes, its concurrency slot, its owner's usage (the
        transcript's, or an estimate when the provider never reported any, see
        `Transcript.billable_usage`, which reads the `record`'s request). With the job's
        `record` and one Redis for streams and queue, both happen in one script
        (finish_settle.lua)."""
        usage = transcript.billable_usage(record.request if record is not None else {})
        args: list[Any] = [
            attempt,
            self.maxlen,
            self.retention_s,
            status.value,
            ev.encode(terminal),
            orjson.dumps(transcript.to_json()),
            self.tombstone_s,
            keys.live_channel(stream_id),
            held,
            self.publish,
            b"\n".join([ev.encode(e) for e in events]),
        ]
        if record is not None and self.redis is self.control:
            settle_keys, settle_args = settling(
                stream_id,
                record.owner or None,
                usage_model(self.settings, record.model),
                usage.input_tokens,
                usage.output_tokens,
                self.usage_ttl_s,
            )
            reply = await self._finish_settle(
                keys=[*self._keys(stream_id), *settle_keys], args=[*args, *settle_args]
            )
            if reply is None:
                raise FenceLost()
            return
        reply = await self._finish(keys=self._keys(stream_id), args=args)
        if reply is None:
            raise FenceLost()
        if reply[0] == b"finished":
            owner, model = reply[1].decode() or None, reply[2].decode()
            await self._settle(stream_id, owner, model, usage.input_tokens, usage.output_tokens)

    async def _settle(
        self, stream_id: str, owner: str | None, model: str = "", input: int = 0, output: int = 0
    ) -> None:
        """What an ended job leaves on the control Redis (see `limits.settle`)."""
        await settle(
            self._settle_script,
            stream_id,
            owner,
            usage_model(self.settings, model),
            input,
            output,
            usage_ttl_s=self.usage_ttl_s,
        )

    @property
    def usage_ttl_s(self) -> int:
        """How long an owner's usage of a day is kept."""
        return self.settings.usage_retention_days * 86400

    # -- reaper side ----------------------------------------------------------------------

    async def server_time_ms(self) -> int:
        seconds, micros = await self.control.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def reaper_clock(self, gap_ms: int, hold_ms: int) -> tuple[int, int]:
        """Stamp this sweep; (Redis' time now, reaping held until or 0), see
        reaper_clock.lua."""
        now, held = await self._reaper_clock(
            keys=[keys.REAPER_CLOCK_KEY, keys.REAPER_HOLD_KEY], args=[gap_ms, hold_ms]
        )
        return int(now), int(held)

    async def due_for_reaping(self, now_ms: int, limit: int = 100) -> list[str]:
        """Running jobs whose lease has run out, and jobs queued for too long."""
        async with self.control.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(keys.LEASES_KEY, "-inf", now_ms, start=0, num=limit)
            pipe.zrangebyscore(
                keys.QUEUED_KEY, "-inf", now_ms - self.queue_timeout_ms, start=0, num=limit
            )
            expired, stale = await pipe.execute()
        return [i.decode() for i in (*expired, *stale)]

    async def reap(self, stream_id: str, attempt: str, as_of_ms: int) -> Reaped:
        """Look at a job the sweep that began at `as_of_ms` (Redis' time) found due; see
        reap.lua."""
        reply = await self._reap(
            keys=self._keys(stream_id)[:2],
            args=[
                stream_id, attempt, self.lease_ms, self.queue_timeout_ms, self.max_requeues,
                as_of_ms,
            ],
        )  # fmt: skip
        outcome, detail, at_ms = reply[0].decode(), int(reply[1]), int(reply[2])
        # The indexes follow what the record now says.
        async with self.control.pipeline(transaction=False) as pipe:
            if outcome in ("gone", "ended"):
                pipe.zrem(keys.LEASES_KEY, stream_id)
                pipe.zrem(keys.QUEUED_KEY, stream_id)
            elif outcome in ("waiting", "requeued"):
                pipe.zrem(keys.LEASES_KEY, stream_id)
                self._queued(pipe, stream_id, at_ms)
            else:  # alive, or taken over by this reaper
                pipe.zadd(keys.LEASES_KEY, {stream_id: at_ms})
                pipe.zrem(keys.QUEUED_KEY, stream_id)
            await pipe.execute()
        if outcome == "requeued":
            return Reaped(outcome, requeues=detail)
        if outcome in ("lost", "expired", "cancelled"):
            return Reaped(outcome, appended=detail)
        return Reaped(outcome)
