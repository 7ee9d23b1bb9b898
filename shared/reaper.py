"""The reaper: makes sure every job ends even when the process running it does not.

Every worker and every API replica runs one. Each sweep finds running jobs whose lease has
run out (their worker died or lost Redis) and jobs that have waited in the queue too long,
and settles each one atomically in Redis, so concurrent reapers never double-handle a job:
- a job that emitted nothing goes back to the queue (a bounded number of times);
- a job that emitted something ends with a `worker_lost` error, keeping its partial output;
- a job nobody picked up within `queue_timeout_s` ends with a `queue_timeout` error.

A Redis that stopped answering everyone (frozen, failing over) is not taken for dead
workers: reapers stamp Redis' clock each sweep, and after a gap they hold off until live
workers had a lease period to renew.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

from redis.exceptions import RedisError

from shared import events as ev
from shared.errors import FenceLost
from shared.queue import GENERATE, JobQueue
from shared.redis.clients import RedisOutage
from shared.settings import Settings
from shared.store import Status, StreamStore

log = logging.getLogger(__name__)

WORKER_LOST = ev.Error(
    code="worker_lost",
    message="the worker running this job was lost; what it produced so far is kept",
    retryable=True,
)


class Reaper:
    """`count(action)` is told of each job settled: `requeued`, `lost`, `expired` or
    `cancelled` (for the process's metrics)."""

    def __init__(
        self,
        store: StreamStore,
        queue: JobQueue,
        settings: Settings,
        count: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.count = count
        self.interval_s = max(0.2, settings.lease_s / 3)
        self.reconnect_hold_s = 2 * settings.lease_s
        # Workers renew every third of a lease, so a live lease has at least about two
        # thirds left: a Redis out of reach for half a lease may already have let some
        # run out. Reapers (one per process) stamp more often than that.
        self.gap_ms = int(settings.lease_s * 1000 / 2)
        self.hold_ms = int((settings.lease_s + self.interval_s) * 1000)
        self._held = False

    async def run_forever(self) -> None:
        """Sweep every `interval_s`. After this process could not reach Redis for a while,
        hold off for two lease periods: leases ran out during the outage because nobody
        could renew them, and live workers need a moment to renew before being judged."""
        loop = asyncio.get_running_loop()
        last_ok = loop.time()
        hold_until = 0.0
        # Whatever Redis does (refuses clients at `maxclients`, stalls, restarts), the next
        # sweep tries again: the reaper never needs its process restarted.
        outage = RedisOutage("reaper")
        while True:
            try:
                if loop.time() - last_ok > 2 * self.interval_s:
                    hold_until = loop.time() + self.reconnect_hold_s
                    log.info("redis is back; reaping resumes in %.1fs", self.reconnect_hold_s)
                if loop.time() >= hold_until:
                    await self.sweep()
                else:
                    await self.store.server_time_ms()
                last_ok = loop.time()
                outage.ok()
            except RedisError as exc:
                outage.failed(exc)
            await asyncio.sleep(self.interval_s)

    async def sweep(self) -> int:
        """Settle every job that is due; returns how many were acted on. Nothing is due
        while reaping is held after Redis was out of everyone's reach (a freeze, a
        failover): the leases that ran out meanwhile are renewed by their workers first."""
        now_ms, held_until = await self.store.reaper_clock(self.gap_ms, self.hold_ms)
        if held_until:
            if not self._held:
                log.warning(
                    "redis was out of reach; reaping waits %.1fs for live workers to renew",
                    (held_until - now_ms) / 1000,
                )
            self._held = True
            return 0
        self._held = False
        acted = 0
        for stream_id in await self.store.due_for_reaping(now_ms):
            try:
                acted += await self.settle(stream_id, now_ms)
            except RedisError:
                raise
            except Exception:
                # One job that cannot be settled does not keep the others from being.
                log.exception("stream %s: reaping failed", stream_id)
        return acted

    async def settle(self, stream_id: str, as_of_ms: int) -> int:
        token = uuid.uuid4().hex
        reaped = await self.store.reap(stream_id, token, as_of_ms)
        if reaped.outcome == "requeued":
            log.warning("stream %s: worker lost before any output; re-queued", stream_id)
            await self.queue.enqueue(GENERATE, f"{stream_id}:requeue:{reaped.requeues}", stream_id)
            self._counted(reaped.outcome)
            return 1
        terminal: ev.Error | ev.Finish
        status = Status.FAILED
        if reaped.outcome == "lost":
            log.warning("stream %s: worker lost after output; ending the stream", stream_id)
            terminal = WORKER_LOST
        elif reaped.outcome == "expired":
            log.warning("stream %s: no worker picked it up in time", stream_id)
            terminal = ev.Error(
                code="queue_timeout", message="no worker picked up the job in time", retryable=True
            )
        elif reaped.outcome == "cancelled":
            # Cancelled, and its worker did not end it within its lease (gone, or too busy).
            log.info("stream %s: cancelled; its worker did not end it in time", stream_id)
            terminal, status = ev.Finish(reason="cancelled"), Status.CANCELLED
        else:
            return 0
        transcript = await self.store.rebuild_transcript(stream_id)
        transcript.apply(terminal)
        record = await self.store.get(stream_id)
        try:
            await self.store.finish(
                stream_id,
                token,
                status=status,
                terminal=terminal,
                transcript=transcript,
                record=record,
            )
        except FenceLost:
            return 0
        self._counted(reaped.outcome)
        return 1

    def _counted(self, action: str) -> None:
        if self.count is not None:
            self.count(action)
