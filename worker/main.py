"""The worker process: arq's worker, woken by pub/sub instead of sleeping between polls."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import uvloop
from arq.worker import Worker, func

from shared import keys
from shared.queue import GENERATE, deserialize_job, serialize_job
from shared.redis import create_redis
from shared.settings import Settings
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)


async def generate(ctx: dict[str, Any], stream_id: str) -> str:
    runtime: WorkerRuntime = ctx["spool"]
    return await runtime.generate(stream_id)


class SpoolWorker(Worker):
    """arq polls its queue every `poll_delay`; a job enqueued just after a poll would wait
    for the next one. Here the wait between polls ends as soon as the API publishes a wake-up
    (or a slot frees up), so the queue adds no fixed delay to the first token."""

    def __init__(self, *args: Any, wake: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wake = wake

    async def main(self) -> None:
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        while True:
            self.wake.clear()
            await self._poll_iteration()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_delay_s)


def build_worker(settings: Settings) -> SpoolWorker:
    redis = create_redis(settings)
    runtime = WorkerRuntime(settings, redis)

    async def wake_on_free_slot(ctx: dict[str, Any]) -> None:
        runtime.wake.set()

    return SpoolWorker(
        functions=[func(generate, name=GENERATE, max_tries=3)],
        queue_name=keys.QUEUE_NAME,
        redis_pool=redis,
        on_startup=runtime.startup,
        on_shutdown=runtime.shutdown,
        after_job_end=wake_on_free_slot,
        handle_signals=True,
        job_completion_wait=settings.worker_shutdown_grace_s,
        max_jobs=settings.worker_max_jobs,
        job_timeout=settings.job_timeout_s + 30,
        keep_result=0,
        poll_delay=settings.worker_poll_interval_s,
        health_check_interval=max(1, int(settings.lease_s)),
        ctx={"spool": runtime},
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        wake=runtime.wake,
    )


def run_worker(settings: Settings) -> None:
    asyncio.set_event_loop(uvloop.new_event_loop())
    worker = build_worker(settings)
    worker.run()
