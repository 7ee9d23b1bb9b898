"""The stream store: job records and their Redis Streams of canonical events.

Writes from workers are fenced: a worker claims a job with a fresh attempt token, and every
append checks, atomically in a Lua script, that the record still names that token. A stale
attempt (arq re-ran the job, or the worker's lease ran out) can never append.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from redis.asyncio import Redis

from shared import events as ev
from shared import keys
from shared.errors import (
    FenceLost,
    InvalidResumeId,
    ResumePointExpired,
    StreamExpired,
    StreamNotFound,
)
from shared.settings import Settings
from shared.transcript import Transcript

ENTRY_ID = re.compile(r"^([0-9]{1,20})-([0-9]{1,20})$")


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
        )


@dataclass(frozen=True, slots=True)
class Claim:
    """The outcome of a worker's claim on a job."""

    outcome: str  # "claimed", "lost" (claimed after a dead attempt emitted), "busy", "done"
    status: Status | None = None
    cancel_requested: bool = False


StreamEntry = tuple[str, ev.Event]

# Server time in ms; scripts use Redis' clock so leases do not depend on worker clocks.
_NOW_MS = "local t = redis.call('TIME'); local now = t[1] * 1000 + math.floor(t[2] / 1000)\n"

_CLAIM = (
    _NOW_MS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'done', 'missing'} end
local outcome = 'claimed'
if status == 'running' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_until') or '0')
  if lease > now then return {'busy', status} end
  if redis.call('XLEN', KEYS[2]) > 0 then outcome = 'lost' end
elseif status ~= 'queued' then
  return {'done', status}
end
redis.call('HSET', KEYS[1], 'status', 'running', 'attempt', ARGV[1],
  'lease_until', now + tonumber(ARGV[2]), 'started_at', now / 1000)
return {outcome, 'running', redis.call('HGET', KEYS[1], 'cancel') or '0'}
"""
)

_APPEND = """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return false end
local ids = {}
for i = 4, #ARGV do
  ids[#ids + 1] = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i])
end
redis.call('HINCRBY', KEYS[1], 'appended', #ids)
if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
return ids
"""

_RENEW = (
    _NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'lease_until', now + tonumber(ARGV[2]))
return 1
"""
)

_FINISH = (
    _NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[5])
redis.call('HINCRBY', KEYS[1], 'appended', 1)
redis.call('HSET', KEYS[1], 'status', ARGV[4], 'finished_at', now / 1000, 'output', ARGV[6])
redis.call('HDEL', KEYS[1], 'lease_until')
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[3], '1', 'EX', ARGV[7])
return id
"""
)

_RELEASE = """
if redis.call('HGET', KEYS[1], 'attempt') ~= ARGV[1] then return 0 end
if redis.call('XLEN', KEYS[2]) > 0 then return 0 end
redis.call('HSET', KEYS[1], 'status', 'queued')
redis.call('HDEL', KEYS[1], 'attempt', 'lease_until', 'started_at')
return 1
"""

_CANCEL = (
    _NOW_MS
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return false end
if status == 'queued' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'appended', 1)
  redis.call('HSET', KEYS[1], 'status', 'cancelled', 'finished_at', now / 1000,
    'output', ARGV[4], 'cancel', '1')
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
  redis.call('SET', KEYS[3], '1', 'EX', ARGV[5])
  return 'cancelled'
end
if status == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') end
return status
"""
)


def parse_entry_id(value: str) -> tuple[int, int]:
    match = ENTRY_ID.match(value)
    if not match:
        raise InvalidResumeId(f"{value!r} is not an event id of this stream")
    return int(match[1]), int(match[2])


class StreamStore:
    """Job records and event streams in Redis. One instance per process, shared by tasks."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.maxlen = settings.stream_maxlen
        self.retention_s = settings.retention_s
        # Until a job ends its keys live long enough to outlast any run of it.
        self.pending_ttl_s = settings.retention_s + settings.job_timeout_s
        self.lease_ms = int(settings.lease_s * 1000)
        self.tombstone_s = settings.tombstone_s
        self._claim = redis.register_script(_CLAIM)
        self._append = redis.register_script(_APPEND)
        self._renew = redis.register_script(_RENEW)
        self._finish = redis.register_script(_FINISH)
        self._cancel = redis.register_script(_CANCEL)
        self._release = redis.register_script(_RELEASE)

    @staticmethod
    def _keys(stream_id: str) -> list[str]:
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
    ) -> None:
        key = keys.job_key(stream_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                key,
                mapping={
                    "status": Status.QUEUED.value,
                    "surface": surface,
                    "model": model,
                    "created_at": repr(time.time()),
                    "request": orjson.dumps(request),
                    "render": orjson.dumps(render),
                },
            )
            pipe.expire(key, self.pending_ttl_s)
            await pipe.execute()

    async def get(self, stream_id: str) -> JobRecord:
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.job_key(stream_id))  # type: ignore[misc]
        if not raw or b"status" not in raw:
            if await self.redis.exists(keys.tombstone_key(stream_id)):
                raise StreamExpired(f"stream {stream_id} has expired")
            raise StreamNotFound(f"no stream with id {stream_id!r}")
        return JobRecord.from_hash(stream_id, raw)

    async def request_cancel(self, stream_id: str) -> Status:
        """Cancel a job. A queued job ends here and now; a running one is flagged for its
        worker (the caller then publishes on the cancel channel); a finished one is left."""
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
            ],
        )
        if result is None:
            raise StreamNotFound(f"no stream with id {stream_id!r}")
        return Status(result.decode())

    async def check_resume_point(self, stream_id: str, entry_id: str) -> None:
        """Raise unless `entry_id` is an event of this stream (400) that is still held (410)."""
        wanted = parse_entry_id(entry_id)
        key = keys.stream_key(stream_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xrange(key, min=entry_id, max=entry_id, count=1)
            pipe.xrange(key, count=1)
            pipe.xlen(key)
            pipe.hget(keys.job_key(stream_id), "appended")
            hit, first, held, appended = await pipe.execute()
        if hit:
            return
        trimmed = int(appended or 0) > held
        if trimmed and first and wanted < parse_entry_id(first[0][0].decode()):
            raise ResumePointExpired(f"event {entry_id} has been trimmed from this stream")
        raise InvalidResumeId(f"{entry_id!r} is not an event id of this stream")

    async def read(
        self, stream_id: str, after: str, *, block_ms: int | None, count: int = 256
    ) -> list[StreamEntry]:
        """Events after `after` (an entry id, or "0-0" for the start), waiting up to
        `block_ms` for the first one when there are none yet."""
        key = keys.stream_key(stream_id)
        reply = await self.redis.xread({key: after}, count=count, block=block_ms)
        if not reply:
            return []
        return [(eid.decode(), ev.decode(fields[ev.FIELD])) for eid, fields in reply[0][1]]

    async def read_all(self, stream_id: str) -> list[StreamEntry]:
        entries = await self.redis.xrange(keys.stream_key(stream_id))
        return [(eid.decode(), ev.decode(fields[ev.FIELD])) for eid, fields in entries]

    async def transcript(self, record: JobRecord) -> Transcript:
        """The assembled output: stored once the job ended, rebuilt from events before."""
        if record.output is not None:
            return Transcript.from_json(record.output)
        transcript = Transcript()
        for _, event in await self.read_all(record.id):
            transcript.apply(event)
        return transcript

    # -- worker side ----------------------------------------------------------------------

    async def claim(self, stream_id: str, attempt: str) -> Claim:
        reply = await self._claim(
            keys=[keys.job_key(stream_id), keys.stream_key(stream_id)],
            args=[attempt, self.lease_ms],
        )
        outcome, status = reply[0].decode(), reply[1].decode()
        if outcome in ("claimed", "lost"):
            return Claim(outcome, Status.RUNNING, cancel_requested=reply[2] == b"1")
        return Claim(outcome, Status(status) if status != "missing" else None)

    async def append(self, stream_id: str, attempt: str, events: list[ev.Event]) -> list[str]:
        reply = await self._append(
            keys=[keys.job_key(stream_id), keys.stream_key(stream_id)],
            args=[attempt, self.maxlen, self.pending_ttl_s, *(ev.encode(e) for e in events)],
        )
        if reply is None:
            raise FenceLost()
        return [i.decode() for i in reply]

    async def renew_lease(self, stream_id: str, attempt: str) -> bool:
        return bool(
            await self._renew(keys=[keys.job_key(stream_id)], args=[attempt, self.lease_ms])
        )

    async def release(self, stream_id: str, attempt: str) -> bool:
        """Hand a job that emitted nothing back to the queue (worker shutting down)."""
        reply = await self._release(
            keys=[keys.job_key(stream_id), keys.stream_key(stream_id)], args=[attempt]
        )
        return bool(reply)

    async def cancel_requested(self, stream_id: str) -> bool:
        flag = await self.redis.hget(keys.job_key(stream_id), "cancel")  # type: ignore[misc]
        return bool(flag == b"1")

    async def finish(
        self,
        stream_id: str,
        attempt: str,
        *,
        status: Status,
        terminal: ev.Finish | ev.Error,
        transcript: Transcript,
    ) -> str:
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
            ],
        )
        if reply is None:
            raise FenceLost()
        return str(reply.decode())
