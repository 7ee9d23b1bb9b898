"""Reads a task's current state from Redis and shows it as the task object: what `GET
/v1/tasks/{id}` answers and what webhooks carry."""

from __future__ import annotations

from typing import Any

from shared.hooks import HookStore
from shared.store import JobRecord, Status, StreamStore
from shared.tasks import TaskState, task_object

# Enough of a stream's tail to hold its latest progress and its terminal event.
TAIL_EVENTS = 32


def coarse_position(ahead: int | None) -> int | None:
    """How many jobs are ahead in the queue, as clients see it: 0 when the task is next,
    else the power of ten at or above the count (10, 100, 1000 …). The queue is shared by
    every key; an exact figure would tell one tenant how busy the others are."""
    if ahead is None or ahead == 0:
        return ahead
    return int(10 ** len(str(ahead - 1)))


class TaskViews:
    def __init__(self, store: StreamStore, hooks: HookStore, base_url: str) -> None:
        self.store = store
        self.hooks = hooks
        self.base_url = base_url

    async def state(self, task_id: str) -> TaskState:
        state = TaskState()
        for entry in await self.store.last_entries(task_id, TAIL_EVENTS):
            state.apply(entry.event)
        return state

    async def show(self, record: JobRecord, *, with_webhooks: bool = True) -> dict[str, Any]:
        state = await self.state(record.id)
        position = (
            coarse_position(await self.store.queue_position(record.id))
            if record.status is Status.QUEUED
            else None
        )
        has_callback = bool((record.request.get("task") or {}).get("callback_url"))
        webhooks = await self.hooks.listing(record.id) if has_callback and with_webhooks else None
        return task_object(
            record, state, base_url=self.base_url, queue_position=position, webhooks=webhooks
        )
