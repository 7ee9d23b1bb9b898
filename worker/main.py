"""The worker process: consumes generation jobs from the queue, and serves its metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

from shared.queue import DELIVER_WEBHOOK, GENERATE, QueueConsumer
from shared.redis.clients import client_name, create_control_redis, create_data_redis
from shared.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runtime import WorkerRuntime


async def generate(ctx: dict[str, Any], stream_id: str) -> str:
    runtime: WorkerRuntime = ctx["spool"]
    return await runtime.generate(stream_id)


async def deliver_webhook(ctx: dict[str, Any], task_id: str, seq: int, attempt: int) -> str:
    runtime: WorkerRuntime = ctx["spool"]
    return await runtime.deliver_webhook(task_id, seq, attempt)


def build_consumer(settings: Settings, metrics: WorkerMetrics | None = None) -> QueueConsumer:
    # Each connection is named for this process and its use, as CLIENT LIST shows it. The
    # runs' writes ride a Redis outage out for `redis_retry_s`: no per-command bound here.
    redis = create_control_redis(settings, name=client_name("worker", "pool"))
    shared_redis = create_control_redis(
        settings, multiplexed=True, name=client_name("worker", "mux")
    )
    # The streams' Redis, when it is not the queue's (a Cluster): a client of its own.
    data = (
        None
        if settings.queue_url is None
        else create_data_redis(settings, multiplexed=True, name=client_name("worker", "data"))
    )
    runtime = WorkerRuntime(settings, redis, shared_redis, data, metrics)
    return QueueConsumer(
        # arq's own per-job reads and writes (no WATCH, nothing blocking) share the
        # multiplexed connection, so a burst of jobs never waits for pooled connections.
        shared_redis,
        {GENERATE: generate, DELIVER_WEBHOOK: deliver_webhook},
        wake=runtime.wake,
        on_startup=runtime.startup,
        on_shutdown=runtime.shutdown,
        max_jobs=settings.worker_max_jobs,
        # The run enforces job_timeout_s itself and ends the stream visibly; arq's own
        # timeout is only a backstop.
        job_timeout_s=max(settings.job_timeout_s, settings.task_timeout_s) + 30,
        poll_interval_s=settings.worker_poll_interval_s,
        shutdown_grace_s=settings.worker_shutdown_grace_s,
        ctx={"spool": runtime},
        watcher=runtime,
    )


def run_worker(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, serving metrics on `worker_metrics_port` if set."""
    metrics = WorkerMetrics(settings)
    metrics.serve(settings)
    asyncio.set_event_loop(uvloop.new_event_loop())
    build_consumer(settings, metrics).run()
