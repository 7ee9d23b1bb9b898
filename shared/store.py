"""The stream store: job records and their Redis Streams of canonical events.

Writes from workers are fenced: a worker claims a job with a fresh attempt token, and every
append checks, atomically in a Lua script, that the record still names that token. A stale
attempt (arq re-ran the job, or the worker's lease ran out) can never append.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

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
from shared.settings import Settings
from shared.transcript import Transcript

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

    @classmethod
    def from_hash(cls, stream_id: str, h: dict[bytes, bytes]) -> JobRecord:
        def opt_float(name: bytes) -> float | None:
            return float(h[name]) if h.get(name) else None

        def opt_json(name: bytes) -> Any:
            return orjson.loads(h[name]) if h.get(name) else None

        return cls(
            id=stream_id,
            status=Status(h[b"status"].decode()),
            surface=h[b"surface"].decode(),
            model=h[b"model"].decode(),
            created_at=float(h[b"created_at"]),
            started_at=opt_float(b"started_at"),
            finished_at=opt_float(b"finished_at"),
            request=opt_json(b"request") or {},
            render=opt_json(b"render") or {},
            output=opt_json(b"output"),
            cancel_requested=h.get(b"cancel") == b"1",
            owner=h.get(b"owner", b"").decode(),
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


@dataclass(frozen=True, slots=True)
class Entry:
    """One stream entry: its Redis id, its position in the stream (1-based, counted over
    everything ever appended, so a gap means trimmed events) and the event."""

    id: str
    seq: int
    event: ev.Event

    @classmethod
    def from_redis(cls, entry_id: bytes, fields: dict[bytes, bytes]) -> Entry:
        return cls(entry_id.decode(), int(fields[b"n"]), ev.decode(fields[ev.FIELD]))


def parse_entry_id(value: str) -> tuple[int, int]:
    match = ENTRY_ID.fullmatch(value)
    if not match or int(match[1]) > MAX_ID_PART or int(match[2]) > MAX_ID_PART:
        raise InvalidResumeId(f"{value!r} is not an event id of this stream")
    return int(match[1]), int(match[2])


class StreamStore:
    """Job records and event streams in Redis. One instance per process, shared by tasks."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
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
        self._create = scripts.register(redis, "create_job")
        self._create_task = scripts.register(redis, "create_task")
        self._claim = scripts.register(redis, "claim")
        self._append = scripts.register(redis, "append")
        self._renew = scripts.register(redis, "renew")
        self._finish = scripts.register(redis, "finish")
        self._cancel = scripts.register(redis, "cancel")
        self._release = scripts.register(redis, "release")
        self._reap = scripts.register(redis, "reap")
        self._mark_reader = scripts.register(redis, "mark_reader")

    @staticmethod
    def _keys(stream_id: str) -> list[str]:
        """The five keys every job script takes, in the order their headers name them."""
        return [
            keys.job_key(stream_id),
            keys.stream_key(stream_id),
            keys.tombstone_key(stream_id),
            keys.LEASES_KEY,
            keys.QUEUED_KEY,
        ]

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
        then: Callable[[Pipeline], object] | None = None,
    ) -> None:
        """Create a queued job record; `then` adds more commands (the enqueue) to the same
        round trip, after the record."""
        try:
            encoded = orjson.dumps(request), orjson.dumps(render)
        except orjson.JSONEncodeError as exc:
            raise InvalidRequest(f"the request cannot be stored: {exc}") from exc
        args: list[Any] = [
            stream_id, surface, model, *encoded, self.pending_ttl_s, owner, self.retention_s
        ]  # fmt: skip
        if then is None:
            await self._create(keys=self._keys(stream_id), args=args)
            return
        # One round trip for the record and whatever `then` adds (the enqueue). EVAL, not
        # EVALSHA: a script cache lost to a restart cannot fail the first command alone.
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.eval(scripts.source("create_job"), 5, *self._keys(stream_id), *args)
            then(pipe)
            await pipe.execute()

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
        idem_key, idem_value = idempotency or (keys.job_key(task_id), "")
        pending_ttl = self.task_retention_s + self.task_timeout_s + self.queue_timeout_ms // 1000
        held = await self._create_task(
            keys=[*self._keys(task_id), idem_key, keys.HOOKS_PENDING_KEY],
            args=[
                task_id, "task", model, encoded, b"{}", pending_ttl, owner,
                self.task_retention_s, idem_value, pending_ttl, int(with_callback),
            ],
        )  # fmt: skip
        return held.decode() if held is not None else None

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
                stream_id,
                keys.CONCURRENCY_PREFIX,
                keys.GLOBAL_CONCURRENCY_KEY,
                keys.live_channel(stream_id),
            ],
        )
        if result is None:
            raise StreamNotFound(f"no stream with id {stream_id!r}")
        status = Status(result.decode())
        if status is Status.RUNNING:
            await self.redis.publish(keys.CANCEL_CHANNEL, stream_id)
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
        multiplexed client (`shared.redis_mux`): it would hold every other command up."""
        key = keys.stream_key(stream_id)
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

    async def last_entries(self, stream_id: str, count: int) -> list[Entry]:
        """The stream's last `count` entries, oldest first."""
        entries = await self.redis.xrevrange(keys.stream_key(stream_id), count=count)
        return [Entry.from_redis(eid, fields) for eid, fields in reversed(entries)]

    async def queue_position(self, stream_id: str) -> int | None:
        """How many queued jobs are ahead of this one; None when it is not queued."""
        rank = await self.redis.zrank(keys.QUEUED_KEY, stream_id)
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
        reply = await self._claim(
            keys=self._keys(stream_id), args=[stream_id, attempt, self.lease_ms, worker]
        )
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
        """One script run per call (key count, keys and arguments), in one pipeline."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for numkeys, args in calls:
                pipe.execute_command("EVALSHA", script.sha, numkeys, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        if any(isinstance(r, NoScriptError) for r in replies):
            # Redis lost its script cache (a restart or failover): load it and run those
            # calls again; they did not run, so this changes nothing twice.
            await self.redis.script_load(script.script)
            for i, reply in enumerate(replies):
                if isinstance(reply, NoScriptError):
                    numkeys, args = calls[i]
                    replies[i] = await self.redis.evalsha(script.sha, numkeys, *args)  # type: ignore[misc]
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return replies

    def _append_args(self, batch: AppendBatch) -> list[Any]:
        return [
            keys.job_key(batch.stream_id),
            keys.stream_key(batch.stream_id),
            batch.attempt,
            self.maxlen,
            self.pending_ttl_s,
            batch.held,
            keys.live_channel(batch.stream_id),
            b"\n".join([ev.encode(e) for e in batch.events]),
        ]

    async def renew_leases(self, runs: list[tuple[str, str]]) -> list[Lease]:
        """Renew the leases of (stream id, attempt) pairs, all in one round trip."""
        calls = [(5, [*self._keys(sid), attempt, self.lease_ms, sid]) for sid, attempt in runs]
        return [
            Lease(bool(owned), int(since_reader_ms) / 1000, cancel == b"1")
            for owned, since_reader_ms, cancel in await self._run_many(self._renew, calls)
        ]

    async def release(self, stream_id: str, attempt: str) -> bool:
        """Hand a job that emitted nothing back to the queue (worker shutting down)."""
        return bool(await self._release(keys=self._keys(stream_id), args=[attempt, stream_id]))

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
        request: dict[str, Any] | None = None,
        held: int = 0,
    ) -> None:
        """End the stream with `terminal`: store the output, charge the owner's usage (the
        transcript's, or an estimate when the provider never reported any, see
        `Transcript.billable_usage`; `request` is the job's stored request) and release
        its concurrency slot, all in one script. `held` is how many events the attempt
        wrote: the terminal event goes after them (see finish.lua)."""
        usage = transcript.billable_usage(request or {})
        reply = await self._finish(
            keys=self._keys(stream_id),
            args=[
                attempt,
                self.maxlen,
                self.retention_s,
                status.value,
                ev.encode(terminal),
                orjson.dumps(transcript.to_json()),
                self.tombstone_s,
                stream_id,
                keys.CONCURRENCY_PREFIX,
                keys.GLOBAL_CONCURRENCY_KEY,
                usage.input_tokens,
                usage.output_tokens,
                keys.USAGE_PREFIX,
                keys.live_channel(stream_id),
                held,
            ],
        )
        if reply is None:
            raise FenceLost()

    # -- reaper side ----------------------------------------------------------------------

    async def server_time_ms(self) -> int:
        seconds, micros = await self.redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def due_for_reaping(self, now_ms: int, limit: int = 100) -> list[str]:
        """Running jobs whose lease has run out, and jobs queued for too long."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrangebyscore(keys.LEASES_KEY, "-inf", now_ms, start=0, num=limit)
            pipe.zrangebyscore(
                keys.QUEUED_KEY, "-inf", now_ms - self.queue_timeout_ms, start=0, num=limit
            )
            expired, stale = await pipe.execute()
        return [i.decode() for i in (*expired, *stale)]

    async def reap(self, stream_id: str, attempt: str) -> Reaped:
        reply = await self._reap(
            keys=self._keys(stream_id),
            args=[stream_id, attempt, self.lease_ms, self.queue_timeout_ms, self.max_requeues],
        )
        outcome = reply[0].decode()
        if outcome == "requeued":
            return Reaped(outcome, requeues=int(reply[1]))
        if outcome in ("lost", "expired", "cancelled"):
            return Reaped(outcome, appended=int(reply[1]))
        return Reaped(outcome)
