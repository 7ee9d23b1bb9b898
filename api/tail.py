"""Following a job's event stream: the SSE tail every streaming response and every resume
serves, and the wait behind non-streaming answers.

A canonical event can render to several SSE events (OpenAI's finish chunk, usage chunk and
`[DONE]`). The last of them carries the Redis entry id; the ones before it carry
`<entry id>:<n>`, so a client that resumes from any of them gets exactly what follows.

A tail of a stateful format saves its renderer's state every `RENDER_STATE_EVERY` events
(in the background, see keys.render_state_key), so a resume anywhere in a long stream
renders from the latest snapshot before its point, not from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import cast

from redis.exceptions import RedisError
from starlette.responses import Response

from api.deps import Services
from api.formats import Frame, SequencedFormat, StatefulRenderer, TextSplicer, WireFormat
from api.hub import Reader, StreamHub
from api.responses import DEPLOYMENT_HEADER, STREAM_ID_HEADER, EventStream
from shared import events as ev
from shared.errors import (
    GenerationTimeout,
    InvalidResumeId,
    ResumePointExpired,
    SpoolError,
    StreamNotFound,
)
from shared.sse import RETRY_FIELD, format_comment, format_event
from shared.store import Entry, JobRecord, RenderState
from shared.transcript import Transcript

log = logging.getLogger(__name__)

START = "0-0"
MAX_RESUME_ID_CHARS = 64
RENDER_STATE_EVERY = 256  # events between two snapshots of a stateful renderer's state
# A larger state (a long tool call held until it is whole) is not kept: a resume then
# reads from an earlier snapshot, and Redis never holds much more than the stream itself.
RENDER_STATE_MAX_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Start:
    """Where a tail starts: the entry id to read after ("" when there is nothing left to
    read), the position of the next event, and frames to send before reading."""

    after: str
    next_seq: int
    replay: bytes = b""

    @property
    def nothing_left(self) -> bool:
        """The client has every event of an ended stream already."""
        return not self.after and not self.replay


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


def parse_sequence_number(value: str) -> int:
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise InvalidResumeId(f"{value[:64]!r} is not an event id of this stream")
    return int(value)


def frame_ids(entry_id: str, frames: list[Frame]) -> list[str]:
    last = len(frames) - 1
    return [entry_id if k == last else f"{entry_id}:{k}" for k in range(len(frames))]


def encode_frames(
    entry_id: str, frames: list[Frame], skip_through: int = -1, *, with_ids: bool = True
) -> bytes:
    if len(frames) == 1 and skip_through < 0:  # nearly every event: one frame, its own id
        f = frames[0]
        return format_event(f.data, id=(f.id or entry_id) if with_ids else None, event=f.event)
    ids = frame_ids(entry_id, frames)
    return b"".join(
        format_event(f.data, id=(f.id or i) if with_ids else None, event=f.event)
        for k, (f, i) in enumerate(zip(frames, ids, strict=True))
        if k > skip_through
    )


class Tail:
    """An SSE tail of one stream in its creating surface's format."""

    __slots__ = (
        "cancel_on_disconnect",
        "deployment",
        "fmt",
        "reader",
        "record",
        "renderer",
        "routed",
        "services",
        "splice",
        "state_due",
        "store",
    )

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
        # What a tail needs of the job; the request it carries can be large.
        self.record = record.without_request()
        self.fmt = fmt
        self.cancel_on_disconnect = cancel_on_disconnect
        self.renderer = fmt.renderer(record.render)
        # A renderer that renders plain text deltas undecoded (see `formats.TextSplicer`).
        self.splice = cast(TextSplicer, self.renderer).text_event if (
            hasattr(self.renderer, "text_event") and not fmt.stateful and fmt.sse_ids
        ) else None  # fmt: skip
        self.reader: Reader | None = None
        # The position from which the renderer's state is saved next (0: never: stateless,
        # or numbered events, which a resume renders from the start).
        self.state_due = RENDER_STATE_EVERY if fmt.stateful and not fmt.sequence_ids else 0
        # A routed generation's first answer names its deployment only once one answers:
        # the response head waits for the first event to carry it (see `late_headers`).
        self.routed = False
        self.deployment: str | None = None

    def beginning(self) -> Start:
        """Where a tail from the start of the stream starts: before its first entry, after
        the frames its format opens every stream with."""
        if not self.fmt.sequence_ids:
            return Start(START, 1)
        opening = cast(SequencedFormat, self.fmt).opening(self.record.render)
        return Start(START, 1, encode_frames(START, opening))

    async def prepare(self, resume: str | None) -> Start:
        """Validate the resume point (an entry id, or for a format whose events number
        themselves, a sequence number) before the response starts, so errors get a
        status; bring the renderer up to it, and work out where to read from and what to
        replay."""
        if self.fmt.sequence_ids:
            return await self._prepare_numbered(resume or None)
        return await self._prepare_at(ResumePoint.parse(resume) if resume else None)

    async def _prepare_at(self, resume: ResumePoint | None) -> Start:
        point = await self.store.resume_point(self.record.id, resume.entry_id if resume else None)
        if point is None:
            return self.beginning()
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

    async def _prepare_numbered(self, resume: str | None) -> Start:
        """A resume after event number `resume`: the stream is rendered from its start up
        to the entry that rendered that event (a format that numbers its events restarts
        its count nowhere else)."""
        if resume is not None and len(resume) > MAX_RESUME_ID_CHARS:
            raise InvalidResumeId("the resume id is too long to be an event id")
        await self.store.resume_point(self.record.id, None)  # 410 once the start is trimmed
        if resume is None:
            return self.beginning()
        wanted = parse_sequence_number(resume)
        opening = cast(SequencedFormat, self.fmt).opening(self.record.render)
        if wanted < len(opening):
            return Start(START, 1, encode_frames(START, opening, skip_through=wanted))
        after = START
        while entries := await self.store.read(self.record.id, after, block_ms=None, count=512):
            for entry in entries:
                frames = self.renderer.frames(entry.id, entry.event)
                if not frames or int(frames[-1].id or 0) < wanted:
                    continue
                skip = wanted - int(frames[0].id or 0)
                replay = encode_frames(entry.id, frames, skip_through=skip)
                if ev.is_terminal(entry.event):
                    return Start("", 0, replay)
                return Start(entry.id, entry.seq + 1, replay)
            after = entries[-1].id
        raise InvalidResumeId(f"{resume!r} is not an event of this stream")

    async def _catch_up(self, point: Entry) -> list[Frame]:
        """Bring the renderer up to what the client already has, up to and including
        `point`: from the latest snapshot of its state before the point, feeding it the
        entries after that (all of them, when no tail ever saved one: then this one saves
        snapshots as it goes). Returns the frames of `point` itself."""
        renderer = self.renderer
        if self.fmt.stateful:
            stateful = cast(StatefulRenderer, renderer)
            snapshot, entries = await self.store.read_to_resume(
                self.record.id, stateful.state_tag, point
            )
            if snapshot is not None:
                stateful.restore(snapshot.state)
            due = (snapshot.seq if snapshot is not None else 0) + RENDER_STATE_EVERY
            taken: list[RenderState] = []
            for entry in entries:
                if entry.id != point.id:
                    renderer.frames(entry.id, entry.event)
                    if entry.seq >= due:
                        taken.append(RenderState(entry.seq, entry.id, stateful.snapshot()))
                        due = entry.seq + RENDER_STATE_EVERY
            self.state_due = due
            if taken:
                self._save_states(taken)
        return renderer.frames(point.id, point.event)

    def _keep_state(self, entry: Entry) -> None:
        """Save the renderer's state as it is after `entry` (in the background)."""
        self.state_due = entry.seq + RENDER_STATE_EVERY
        state = cast(StatefulRenderer, self.renderer).snapshot()
        self._save_states([RenderState(entry.seq, entry.id, state)])

    def _save_states(self, states: list[RenderState]) -> None:
        states = [s for s in states if len(s.state) <= RENDER_STATE_MAX_BYTES]
        if not states:
            return
        tag = cast(StatefulRenderer, self.renderer).state_tag
        save = self.store.save_render_states(self.record.id, tag, states, RENDER_STATE_EVERY)
        self.services.spawn(save, "render-state")

    def open(self, start: Start) -> Reader | None:
        """Start listening for the stream's entries from `start`, before anything is read
        or even written (a new stream opens its reader before it is enqueued)."""
        if not start.after or self.reader is not None:
            return self.reader
        self.reader = self.services.hub.open(self.record.id, start.after, start.next_seq)
        return self.reader

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def response(self, start: Start) -> Response:
        """The SSE response that serves this tail from `start`; `204 No Content` when the
        client has the whole of an ended stream (what tells a browser's `EventSource` to
        stop reconnecting)."""
        if start.nothing_left:
            return Response(status_code=204, headers={STREAM_ID_HEADER: self.record.id})
        if self.reader is None:
            self.open(start)
        return EventStream(
            self.stream(start),
            self.record.id,
            on_disconnect=self.client_gone,
            on_close=self.close,
            late_headers=self._late_headers if self.routed else None,
            ends=self._ended,
        )

    def _ended(self) -> bool:
        """Whether the chunk just sent ended the stream (its terminal event)."""
        return self.reader is not None and self.reader.finished

    def _late_headers(self) -> list[tuple[bytes, bytes]]:
        if self.deployment is None:
            return []
        return [(DEPLOYMENT_HEADER.lower().encode(), self.deployment.encode())]

    def client_gone(self) -> None:
        """The client disconnected: stop at once, even while waiting for an event."""
        if self.reader is not None:
            self.reader.gone = True
            self.reader.wake()

    def _render(self, batch: list[Entry]) -> bytes:
        renderer, with_ids, splice = self.renderer, self.fmt.sse_ids, self.splice
        out = []
        for entry in batch:
            value = entry.value
            if type(value) is bytes:
                if splice is not None:  # nearly every event: a text delta, undecoded
                    out.append(splice(entry.id, ev.stored_text(value)))
                    continue
                value = ev.decode(value)
            frames = renderer.frames(entry.id, value)  # type: ignore[arg-type]
            if frames:
                out.append(encode_frames(entry.id, frames, with_ids=with_ids))
        return b"".join(out)

    async def stream(self, start: Start) -> AsyncIterator[bytes]:
        # The reconnection delay rides with the first event (formats that speak SSE fields).
        retry = RETRY_FIELD if self.fmt.sse_ids else b""
        if start.replay:
            yield retry + start.replay
            retry = b""
        reader = self.reader or self.open(start)
        if reader is None:
            return
        fmt, renderer = self.fmt, self.renderer
        ended = False
        self.services.metrics.open_tails.inc()
        try:
            async with contextlib.aclosing(self.services.hub.follow(reader)) as batches:
                async for batch in batches:
                    if batch is None:
                        yield fmt.keepalive
                        continue
                    if self.routed and self.deployment is None:
                        first = batch[0].event
                        if isinstance(first, ev.Start) and first.deployment:
                            self.deployment = first.deployment
                    chunk = self._render(batch)
                    if self.state_due and batch[-1].seq >= self.state_due:
                        self._keep_state(batch[-1])
                    del batch  # nothing of an event outlives its write
                    if reader.finished:
                        ended = True  # the response may end with this chunk (`_ended`)
                    if chunk:
                        if retry:
                            chunk, retry = retry + chunk, b""
                        yield chunk
                    del chunk
            ended = not reader.gone
            if reader.drained and not reader.finished and not reader.gone and fmt.sse_ids:
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
                format_event(f.data, event=f.event) for f in renderer.frames(now_id, error)
            )
        finally:
            self.services.metrics.open_tails.dec()
            if not ended and self.cancel_on_disconnect:
                self.services.spawn(self.store.request_cancel(self.record.id), "cancel")


async def wait_for_transcript(hub: StreamHub, record: JobRecord, timeout_s: float) -> Transcript:
    """Follow a stream to its end and assemble it (non-streaming requests)."""
    transcript = Transcript()
    reader = hub.open(record.id, START, 1)
    try:
        async with (
            asyncio.timeout(timeout_s),
            contextlib.aclosing(hub.follow(reader, drainable=False)) as batches,
        ):
            async for batch in batches:
                for entry in batch or ():
                    transcript.apply(entry.event)
    except TimeoutError:
        raise GenerationTimeout(f"the generation did not finish within {timeout_s:g}s") from None
    return transcript
