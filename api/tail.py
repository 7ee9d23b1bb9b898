"""Following a job's event stream: the SSE tail every streaming response and every resume
serves, and the wait behind non-streaming answers.

A canonical event can render to several SSE events (OpenAI's finish chunk, usage chunk and
`[DONE]`). The last of them carries the Redis entry id; the ones before it carry
`<entry id>:<n>`, so a client that resumes from any of them gets exactly what follows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from redis.exceptions import RedisError

from api.formats import Frame, WireFormat
from shared import events as ev
from shared import keys
from shared.errors import GenerationTimeout, InvalidResumeId, StreamNotFound
from shared.sse import format_comment, format_event
from shared.store import JobRecord, StreamEntry, StreamStore
from shared.transcript import Transcript

log = logging.getLogger(__name__)

START = "0-0"


@dataclass(frozen=True, slots=True)
class ResumePoint:
    entry_id: str
    frame: int | None = None  # resume inside an entry's frames, after frame `frame`

    @classmethod
    def parse(cls, value: str) -> ResumePoint:
        entry_id, sep, frame = value.strip().partition(":")
        if sep:
            if not (frame.isascii() and frame.isdigit()) or len(frame) > 4:
                raise InvalidResumeId(f"{value!r} is not an event id of this stream")
            return cls(entry_id, int(frame))
        return cls(entry_id)


def frame_ids(entry_id: str, frames: list[Frame]) -> list[str]:
    last = len(frames) - 1
    return [entry_id if k == last else f"{entry_id}:{k}" for k in range(len(frames))]


def encode_frames(entry_id: str, frames: list[Frame], skip_through: int = -1) -> bytes:
    ids = frame_ids(entry_id, frames)
    return b"".join(
        format_event(f.data, id=i, event=f.event)
        for k, (f, i) in enumerate(zip(frames, ids, strict=True))
        if k > skip_through
    )


async def follow(
    store: StreamStore, stream_id: str, after: str, block_ms: int
) -> AsyncIterator[StreamEntry | None]:
    """Entries after `after`, up to and including the terminal one. Yields None each time
    `block_ms` passes without an event (the caller's cue for a keep-alive)."""
    while True:
        entries = await store.read(stream_id, after, block_ms=block_ms)
        if not entries:
            if not await store.redis.exists(keys.job_key(stream_id)):
                raise StreamNotFound("the stream expired while it was being read")
            yield None
            continue
        for entry in entries:
            yield entry
            if ev.is_terminal(entry[1]):
                return
        after = entries[-1][0]


class Tail:
    """An SSE tail of one stream in its creating surface's format."""

    def __init__(
        self,
        store: StreamStore,
        record: JobRecord,
        fmt: WireFormat,
        keepalive_s: float,
    ) -> None:
        self.store = store
        self.record = record
        self.fmt = fmt
        self.block_ms = max(1, int(keepalive_s * 1000))

    async def prepare(self, resume: ResumePoint | None) -> tuple[str, bytes]:
        """Validate the resume point before the response starts (so errors get a status),
        and return the id to read after plus any frames to replay first."""
        if resume is None:
            return START, b""
        await self.store.check_resume_point(self.record.id, resume.entry_id)
        if resume.frame is None:
            return resume.entry_id, b""
        entries = await self.store.redis.xrange(
            keys.stream_key(self.record.id), min=resume.entry_id, max=resume.entry_id
        )
        event = ev.decode(entries[0][1][ev.FIELD])
        frames = self.fmt.frames(event, self.record.render)
        if resume.frame >= len(frames) - 1:
            raise InvalidResumeId(
                f"{resume.entry_id}:{resume.frame} is not an event id of this stream"
            )
        replay = encode_frames(resume.entry_id, frames, skip_through=resume.frame)
        if ev.is_terminal(event):
            return "", replay
        return resume.entry_id, replay

    async def stream(self, after: str, replay: bytes) -> AsyncIterator[bytes]:
        if replay:
            yield replay
        if not after:
            return
        render = self.record.render
        try:
            async for entry in follow(self.store, self.record.id, after, self.block_ms):
                if entry is None:
                    yield format_comment("ping")
                    continue
                entry_id, event = entry
                frames = self.fmt.frames(event, render)
                if frames:
                    yield encode_frames(entry_id, frames)
        except (RedisError, StreamNotFound) as exc:
            # The stream cannot go on: say so in the stream's own format instead of hanging.
            log.warning("stream %s: tail ended early: %s", self.record.id, exc)
            code = "stream_expired" if isinstance(exc, StreamNotFound) else "redis_unavailable"
            error = ev.Error(code=code, message=str(exc) or "stream storage failed", retryable=True)
            yield b"".join(
                format_event(f.data, event=f.event) for f in self.fmt.frames(error, render)
            )


async def wait_for_transcript(
    store: StreamStore, record: JobRecord, timeout_s: float, block_ms: int
) -> Transcript:
    """Follow a stream to its end and assemble it (non-streaming requests)."""
    transcript = Transcript()
    deadline = time.monotonic() + timeout_s
    async for entry in follow(store, record.id, START, block_ms):
        if entry is not None:
            transcript.apply(entry[1])
        if time.monotonic() > deadline:
            raise GenerationTimeout(f"the generation did not finish within {timeout_s:g}s")
    return transcript
