"""Following a job's event stream: the SSE tail every streaming response and every resume
serves, and the wait behind non-streaming answers.

A canonical event can render to several SSE events (OpenAI's finish chunk, usage chunk and
`[DONE]`). The last of them carries the Redis entry id; the ones before it carry
`<entry id>:<n>`, so a client that resumes from any of them gets exactly what follows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError

from api.deps import Services
from api.formats import Frame, WireFormat
from shared import events as ev
from shared.errors import (
    GenerationTimeout,
    InvalidResumeId,
    ResumePointExpired,
    SpoolError,
    StreamNotFound,
)
from shared.sse import format_comment, format_event
from shared.store import Entry, JobRecord, StreamStore
from shared.transcript import Transcript

log = logging.getLogger(__name__)

START = "0-0"
MAX_RESUME_ID_CHARS = 64


@dataclass(frozen=True, slots=True)
class Start:
    """Where a tail starts: the entry id to read after ("" when there is nothing left to
    read), the position of the next event, and frames to send before reading."""

    after: str
    next_seq: int
    replay: bytes = b""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    entry_id: str
    frame: int | None = None  # resume inside an entry's frames, after frame `frame`

    @classmethod
    def parse(cls, value: str) -> ResumePoint:
        if len(value) > MAX_RESUME_ID_CHARS:
            raise InvalidResumeId("the resume id is too long to be an event id")
        entry_id, sep, frame = value.strip().partition(":")
        if sep:
            if not (frame.isascii() and frame.isdigit()) or len(frame) > 4:
                raise InvalidResumeId(f"{value!r} is not an event id of this stream")
            return cls(entry_id, int(frame))
        return cls(entry_id)


def frame_ids(entry_id: str, frames: list[Frame]) -> list[str]:
    last = len(frames) - 1
    return [entry_id if k == last else f"{entry_id}:{k}" for k in range(len(frames))]


def encode_frames(
    entry_id: str, frames: list[Frame], skip_through: int = -1, *, with_ids: bool = True
) -> bytes:
    ids = frame_ids(entry_id, frames)
    return b"".join(
        format_event(f.data, id=i if with_ids else None, event=f.event)
        for k, (f, i) in enumerate(zip(frames, ids, strict=True))
        if k > skip_through
    )


READER_MARK_INTERVAL_S = 1.0


class Follower:
    """Reads one stream from a given id to its terminal event, blocking on Redis between
    events. Marks the stream as read (for the abandoned-stream policy) about once a second,
    and stops early when `draining` is set (the process is shutting down)."""

    def __init__(
        self,
        store: StreamStore,
        stream_id: str,
        block_ms: int,
        draining: asyncio.Event | None = None,
        *,
        mark_readers: bool = False,
    ) -> None:
        self.store = store
        self.stream_id = stream_id
        self.block_ms = block_ms
        self.draining = draining
        self.drained = False
        self.mark_readers = mark_readers

    async def entries(self, after: str, next_seq: int = 1) -> AsyncGenerator[Entry | None, None]:
        """Entries after `after` (whose successor is the `next_seq`th event), up to and
        including the terminal one. Yields None each time `block_ms` passes without an
        event: the caller's cue for a keep-alive."""
        drain_wait: asyncio.Future[Any] | None = (
            asyncio.ensure_future(self.draining.wait()) if self.draining else None
        )
        last_mark = -READER_MARK_INTERVAL_S
        try:
            while True:
                now = time.monotonic()
                if self.mark_readers and now - last_mark >= READER_MARK_INTERVAL_S:
                    await self.store.mark_reader(self.stream_id)
                    last_mark = now
                entries = await self._read(after, drain_wait)
                if entries is None:
                    self.drained = True
                    return
                if not entries:
                    status = await self.store.status(self.stream_id)
                    if status is None:
                        raise StreamNotFound("the stream expired while it was being read")
                    if status.terminal and await self._past_the_end(after):
                        return
                    yield None
                    continue
                for entry in entries:
                    if entry.seq != next_seq:
                        # This reader fell further behind than the stream's length cap.
                        raise ResumePointExpired("events were trimmed before they could be read")
                    next_seq += 1
                    yield entry
                    if ev.is_terminal(entry.event):
                        return
                after = entries[-1].id
        finally:
            if drain_wait is not None:
                drain_wait.cancel()

    async def _past_the_end(self, after: str) -> bool:
        """Whether a finished stream has nothing after `after` (the terminal event was
        already delivered), so a reader would otherwise wait forever."""
        return not await self.store.read(self.stream_id, after, block_ms=None, count=1)

    async def _read(self, after: str, drain_wait: asyncio.Future[Any] | None) -> list[Entry] | None:
        if drain_wait is None:
            return await self.store.read(self.stream_id, after, block_ms=self.block_ms)
        if drain_wait.done():
            return None
        read: asyncio.Future[Any] = asyncio.ensure_future(
            self.store.read(self.stream_id, after, block_ms=self.block_ms)
        )
        await asyncio.wait((read, drain_wait), return_when=asyncio.FIRST_COMPLETED)
        if read.done():
            entries: list[Entry] = read.result()
            return entries
        read.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await read
        return None


class Tail:
    """An SSE tail of one stream in its creating surface's format."""

    def __init__(
        self,
        services: Services,
        record: JobRecord,
        fmt: WireFormat,
        *,
        cancel_on_disconnect: bool = False,
    ) -> None:
        self.services = services
        self.store = services.store
        self.record = record
        self.fmt = fmt
        self.cancel_on_disconnect = cancel_on_disconnect
        self.block_ms = max(1, int(services.settings.keepalive_interval_s * 1000))
        self.renderer = fmt.renderer(record.render)

    async def prepare(self, resume: ResumePoint | None) -> Start:
        """Validate the resume point before the response starts (so errors get a status),
        bring the renderer up to it, and work out where to read from and what to replay."""
        point = await self.store.resume_point(self.record.id, resume.entry_id if resume else None)
        if point is None:
            return Start(START, 1)
        frames = await self._catch_up(point)
        if resume is None or resume.frame is None:
            if ev.is_terminal(point.event):
                return Start("", 0)  # the client has everything already
            return Start(point.id, point.seq + 1)
        if resume.frame >= len(frames) - 1:
            raise InvalidResumeId(
                f"{resume.entry_id}:{resume.frame} is not an event id of this stream"
            )
        replay = encode_frames(
            point.id, frames, skip_through=resume.frame, with_ids=self.fmt.sse_ids
        )
        if ev.is_terminal(point.event):
            return Start("", 0, replay)
        return Start(point.id, point.seq + 1, replay)

    async def _catch_up(self, point: Entry) -> list[Frame]:
        """Feed the renderer what the client already has, up to and including `point`;
        returns the frames of `point` itself."""
        if self.fmt.stateful:
            for entry in await self.store.read_range(self.record.id, "-", point.id):
                if entry.id != point.id:
                    self.renderer.frames(entry.id, entry.event)
        return self.renderer.frames(point.id, point.event)

    async def stream(self, start: Start) -> AsyncIterator[bytes]:
        if start.replay:
            yield start.replay
        if not start.after:
            return
        follower = Follower(
            self.store,
            self.record.id,
            self.block_ms,
            self.services.draining,
            # Only the abandoned-stream policy reads these marks.
            mark_readers=self.services.settings.abandon_grace_s is not None,
        )
        ended = False
        self.services.metrics.open_tails.inc()
        try:
            async for entry in follower.entries(start.after, start.next_seq):
                if entry is None:
                    yield self.fmt.keepalive
                    continue
                frames = self.renderer.frames(entry.id, entry.event)
                if frames:
                    yield encode_frames(entry.id, frames, with_ids=self.fmt.sse_ids)
            ended = True
            if follower.drained and self.fmt.sse_ids:
                # Shutting down: end at an event boundary; the client resumes elsewhere.
                yield format_comment("server shutting down; resume with Last-Event-ID")
        except (RedisError, StreamNotFound, ResumePointExpired) as exc:
            ended = True
            # The stream cannot go on: say so in the stream's own format instead of hanging.
            log.warning("stream %s: tail ended early: %s", self.record.id, exc)
            code = exc.code if isinstance(exc, SpoolError) else "redis_unavailable"
            message = str(exc) or "stream storage failed"
            error = ev.Error(code=code, message=message, retryable=isinstance(exc, RedisError))
            now_id = f"{int(time.time() * 1000)}-0"
            yield b"".join(
                format_event(f.data, event=f.event) for f in self.renderer.frames(now_id, error)
            )
        finally:
            self.services.metrics.open_tails.dec()
            if not ended and self.cancel_on_disconnect:
                self.services.spawn(self.store.request_cancel(self.record.id), "cancel")


async def wait_for_transcript(
    store: StreamStore, record: JobRecord, timeout_s: float, block_ms: int
) -> Transcript:
    """Follow a stream to its end and assemble it (non-streaming requests)."""
    transcript = Transcript()
    deadline = time.monotonic() + timeout_s
    async for entry in Follower(store, record.id, block_ms).entries(START):
        if entry is not None:
            transcript.apply(entry.event)
        if time.monotonic() > deadline:
            raise GenerationTimeout(f"the generation did not finish within {timeout_s:g}s")
    return transcript
