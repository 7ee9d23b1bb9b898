"""Batched, pipelined appends: every run in a worker process hands its events to one
appender, which writes them to Redis with as few round trips as the load allows.

Each stream has at most one append in flight. Events a run produces while its append is in
flight wait and go together in the next one; appends of different streams that are ready
at the same moment share one pipeline. Nothing waits on a timer: an idle stream's event is
sent at once. Every append stays fenced by its attempt and idempotent by the count of
events before it (`StreamStore.append_batches`), so a pipeline whose reply was lost is
simply sent again.
"""

from __future__ import annotations

import asyncio
import logging

from shared import events as ev
from shared.errors import EventsLost, FenceLost
from shared.redis.clients import with_redis_retry
from shared.settings import Settings
from shared.store import AppendBatch, StreamStore
from shared.supervise import cancel_and_wait, supervise

log = logging.getLogger(__name__)

PIPELINES = 2  # pipelines in flight at once
MAX_PENDING = 1024  # events a run may have waiting before `write` makes it wait


class StreamWriter:
    """One attempt's writes to one stream. `queued` counts every event handed over (what
    the stream will hold); `held` the events Redis has acknowledged."""

    def __init__(self, appender: Appender, stream_id: str, attempt: str, held: int) -> None:
        self.appender = appender
        self.stream_id = stream_id
        self.attempt = attempt
        self.held = held
        self.queued = held
        self.pending: list[ev.Event] = []
        self.scheduled = False  # waiting in the appender's queue, or in flight
        self.closed = False  # the run writes what is left itself (see `close`)
        self.error: BaseException | None = None
        self._settled = asyncio.Event()  # nothing pending nor in flight
        self._settled.set()

    async def write(self, events: list[ev.Event]) -> None:
        """Hand events over; returns at once unless too many are still waiting. Raises what
        an earlier append of this writer ran into (FenceLost, a Redis outage)."""
        if self.error is not None:
            raise self.error
        if events and self.hand(events):
            await self.flush()

    def hand(self, events: list[ev.Event]) -> bool:
        """`write` without the wait (for the hot loop of a run, one event at a time):
        hands `events` (not empty) over and says whether the caller must `flush` now."""
        if self.error is not None:
            raise self.error
        first = self.queued == 0
        self.pending += events
        self.queued += len(events)
        if not self.scheduled:  # (settled exactly while not scheduled)
            self.scheduled = True
            self._settled.clear()
            self.appender._ready(self)
        # The stream's first events go out before the run reads on (an upstream's first
        # read may hold its whole answer): the first token is never held back.
        return first or len(self.pending) > MAX_PENDING

    def hand_one(self, event: ev.Event) -> bool:
        """`hand([event])` after the stream's first event (a run's hot loop)."""
        if self.error is not None:
            raise self.error
        self.pending.append(event)
        self.queued += 1
        if not self.scheduled:
            self.scheduled = True
            self._settled.clear()
            self.appender._ready(self)
        return len(self.pending) > MAX_PENDING

    async def flush(self) -> None:
        """Wait until every event handed over is written."""
        await self._settled.wait()
        if self.error is not None:
            raise self.error

    async def close(self) -> list[ev.Event]:
        """The run's last write is its own (its finish carries it, one round trip instead
        of two): wait for the append in flight, if any, and hand back the events not sent
        yet. Nothing is appended for this writer after. Raises what an earlier append ran
        into, as `flush` does."""
        self.closed = True
        if self.appender._unqueue(self):  # waiting, not in flight: nothing to wait for
            self.scheduled = False
            self._settled.set()
        await self._settled.wait()
        if self.error is not None:
            raise self.error
        events, self.pending = self.pending, []
        return events

    def _take(self) -> AppendBatch:
        batch = AppendBatch(self.stream_id, self.attempt, self.held, self.pending)
        self.pending = []
        return batch

    def _written(self, count: int) -> None:
        self.held += count
        if self.pending and not self.closed:
            self.appender._ready(self)  # what came while this append was in flight
        else:
            self.scheduled = False
            self._settled.set()

    def _failed(self, error: BaseException) -> None:
        self.error = error
        self.scheduled = False
        self.pending = []
        self._settled.set()


class Appender:
    """The worker process's appends: `writer()` for each run, `run_forever` supervised."""

    def __init__(self, store: StreamStore, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self._queue: list[StreamWriter] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def writer(self, stream_id: str, attempt: str, held: int) -> StreamWriter:
        return StreamWriter(self, stream_id, attempt, held)

    def start(self) -> None:
        self._tasks = [supervise(f"appender-{i}", self._pump) for i in range(PIPELINES)]

    async def stop(self) -> None:
        for task in self._tasks:
            await cancel_and_wait(task)
        writers, self._queue = self._queue, []
        for writer in writers:
            writer._failed(ConnectionError("the worker stopped before this append was sent"))

    def _ready(self, writer: StreamWriter) -> None:
        self._queue.append(writer)
        self._wake.set()

    def _unqueue(self, writer: StreamWriter) -> bool:
        """Take `writer` out of the queue; False when it is not there (in flight, or idle)."""
        try:
            self._queue.remove(writer)
        except ValueError:
            return False
        return True

    async def _pump(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            writers, self._queue = self._queue, []
            batches = [w._take() for w in writers]
            try:
                outcomes = await self._send(batches)
            except BaseException as exc:
                for writer in writers:
                    writer._failed(exc)
                if not isinstance(exc, Exception):
                    raise
                continue
            for writer, batch, outcome in zip(writers, batches, outcomes, strict=True):
                if outcome is None:
                    writer._failed(FenceLost())
                elif outcome < 0:
                    writer._failed(events_lost(batch.stream_id, -outcome))
                else:
                    writer._written(len(batch.events))

    async def _send(self, batches: list[AppendBatch]) -> list[int | None]:
        """One pipeline, sent again through a short Redis outage (a failover, a restart):
        safe because every append in it is idempotent."""
        return await with_redis_retry(self.settings, lambda: self.store.append_batches(batches))


def events_lost(stream_id: str, missing: int) -> EventsLost:
    log.error("stream %s: redis lost %d of its events; ending it", stream_id, missing)
    return EventsLost(
        f"Redis lost the last {missing} event(s) of this stream in a failover or restart; "
        "it cannot continue exactly"
    )
