"""The webhook dispatcher: turns task events into webhook messages and queues their
delivery.

A task's stream is the outbox. Each worker follows the streams of every task with a
callback (`keys.HOOKS_PENDING_KEY`) in one blocking XREAD, from a cursor kept in Redis.
For each event the task asked to hear about it stores the message once (the first
dispatcher to get there wins) and queues its first delivery; then it moves the cursor. A
dispatcher that dies anywhere in between is replaced by another that starts from the
cursor: messages are stored only once and a queued delivery only runs once, so nothing is
lost or sent twice.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from redis.exceptions import RedisError

from shared import events as ev
from shared import keys
from shared.errors import StreamExpired, StreamNotFound
from shared.hooks import HookMessage, HookStore
from shared.queue import DELIVER_WEBHOOK, JobQueue
from shared.redis.clients import RedisOutage
from shared.store import Entry, JobRecord, StreamStore
from shared.task_view import TaskViews
from shared.tasks import DEFAULT_WEBHOOK_EVENTS
from worker.webhooks import delivery_job_id

log = logging.getLogger(__name__)
BLOCK_MS = 2000
# With more pending tasks than one page, pages take turns, and reads stop blocking so
# that no page waits on another's quiet.
PAGE = 256
PAGED_BLOCK_MS = 50
APART_POLL_MS = 250  # how often tasks on a Cluster are read, when nothing wakes the reads
READ_COUNT = 100


def webhook_event(event: ev.Event) -> tuple[str, str] | None:
    """The webhook event an event of the stream is (the name clients subscribe to, and the
    message type), or None."""
    match event:
        case ev.Start():
            return "started", "task.started"
        case ev.TaskProgress():
            return "progress", "task.progress"
        case ev.TaskResult():
            return "completed", "task.succeeded"
        case ev.Error():
            return "completed", "task.failed"
        case ev.Finish():
            return "completed", "task.cancelled"
        case _:
            return None


class WebhookDispatcher:
    def __init__(
        self, store: StreamStore, hooks: HookStore, queue: JobQueue, views: TaskViews
    ) -> None:
        self.store = store
        self.hooks = hooks
        self.queue = queue
        self.views = views
        self.wake_after = "$"
        self.offset = 0

    async def run_forever(self) -> None:
        # Redis out of reach (down, stalled, refusing clients at `maxclients`): wait a
        # little, longer each time up to a bound, and read again from the cursors in Redis.
        outage = RedisOutage("webhook dispatcher")
        while True:
            try:
                await self.step()
            except RedisError as exc:
                await outage.wait(exc)
                continue
            outage.ok()

    async def step(self) -> int:
        """One blocking read over every pending task; returns the events handled."""
        pending = await self.hooks.pending(self.offset, PAGE)
        paged = self.offset > 0 or len(pending) == PAGE
        self.offset = self.offset + PAGE if len(pending) == PAGE else 0
        cursors = await self.hooks.cursors(pending)
        streams = {keys.stream_key(t): c for t, c in cursors.items()}
        block = PAGED_BLOCK_MS if paged else BLOCK_MS
        if self.hooks.redis is self.hooks.control:
            # One Redis: one blocking read over every task's stream and the wake-ups.
            streams[keys.HOOKS_WAKE_KEY] = self.wake_after
            reply = await self.hooks.control.xread(streams, count=READ_COUNT, block=block)  # type: ignore[arg-type]
        else:
            reply = await self._read_apart(streams, block)
        handled = 0
        by_key = {keys.stream_key(t): t for t in pending}
        for key, raw_entries in reply or []:
            if key.decode() == keys.HOOKS_WAKE_KEY:
                self.wake_after = raw_entries[-1][0].decode()
                continue
            task_id = by_key[key.decode()]
            entries = [Entry.from_redis(eid, fields) for eid, fields in raw_entries]
            handled += await self.dispatch(task_id, entries)
        if not reply:
            await self._forget_expired(pending)
        return handled

    async def _read_apart(self, streams: dict[str, str], block: int) -> list[Any]:
        """The tasks' streams are on a Cluster, where one command cannot read streams of
        several slots: each is read without waiting, then the wait (at most
        `APART_POLL_MS`) is on the wake-up stream alone."""
        got: list[Any] = []
        if streams:
            async with self.hooks.redis.pipeline(transaction=False) as pipe:
                for key, cursor in streams.items():
                    pipe.xread({key: cursor}, count=READ_COUNT)
                for reply in await pipe.execute():
                    got.extend(reply or [])
        wait = None if got else min(block, APART_POLL_MS)
        woke = await self.hooks.control.xread(
            {keys.HOOKS_WAKE_KEY: self.wake_after}, count=READ_COUNT, block=wait
        )
        return [*got, *(woke or [])]

    async def dispatch(self, task_id: str, entries: list[Entry]) -> int:
        try:
            record = await self.store.get(task_id)
        except (StreamNotFound, StreamExpired):
            await self.hooks.done(task_id)
            return 0
        spec = record.request.get("task") or {}
        wanted = set(spec.get("webhook_events") or DEFAULT_WEBHOOK_EVENTS)
        # The cursor moves once per batch, after its messages are queued: a dispatcher that
        # dies halfway redoes the batch, which stores and queues nothing twice.
        for entry in entries:
            kind = webhook_event(entry.event)
            if kind is not None and kind[0] in wanted:
                await self._queue_message(record, entry, kind[1], spec["callback_url"])
            if ev.is_terminal(entry.event):
                await self.hooks.set_cursor(task_id, entry.id)
                await self.hooks.done(task_id)
                return len(entries)
        await self.hooks.set_cursor(task_id, entries[-1].id)
        return len(entries)

    async def _queue_message(self, record: JobRecord, entry: Entry, type_: str, url: str) -> None:
        """Store the message for `entry` and queue its first delivery. `record` was read
        after `entry`, and a task's terminal event and final status are written together,
        so a terminal message always shows the final state."""
        task_id = record.id
        body = await self.views.show(record, with_webhooks=False)
        if not ev.is_terminal(entry.event):
            # The message speaks of its own event, even when the task has moved on since.
            progress = entry.event.progress if isinstance(entry.event, ev.TaskProgress) else 0.0
            body.update(
                status="running", progress=progress, result=None, error=None, finished_at=None
            )
        message = HookMessage(
            id=f"msg_{task_id}_{entry.seq}", type=type_, url=url, body=orjson.dumps(body).decode()
        )
        await self.hooks.add(task_id, entry.seq, message)
        await self.queue.enqueue(
            DELIVER_WEBHOOK, delivery_job_id(task_id, entry.seq, 1), task_id, entry.seq, 1
        )

    async def _forget_expired(self, pending: list[str]) -> None:
        """Drop tasks whose record is gone (expired, or flushed) from the index."""
        for task_id in pending:
            if await self.store.status(task_id) is None:
                await self.hooks.done(task_id)
