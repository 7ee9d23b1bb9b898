"""The job queue, behind a small interface so nothing else imports arq (which is in
maintenance mode upstream and may one day be swapped).

arq keeps jobs in a sorted set that workers poll. So a fresh job does not wait for the next
poll, `enqueue` also publishes on the wake channel, and `QueueConsumer` ends its wait
between polls as soon as that arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import timedelta
from enum import StrEnum
from typing import Any, Protocol, cast

import orjson
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.jobs import Job, JobStatus, SerializationError, deserialize_job_raw
from arq.jobs import serialize_job as serialize_arq_job
from arq.utils import timestamp_ms
from arq.worker import Worker, func
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from shared import keys, scripts
from shared.redis import lean
from shared.redis.clients import RedisOutage

log = logging.getLogger(__name__)

GENERATE = "generate"
"""Name of the worker function that runs one job: a generation or an asset task."""

DELIVER_WEBHOOK = "deliver_webhook"
"""Name of the worker function that makes one delivery attempt of one webhook message."""


class QueueStatus(StrEnum):
    DEFERRED = "deferred"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    NOT_FOUND = "not_found"


class JobQueue(Protocol):
    async def enqueue(
        self, function: str, job_id: str, *args: Any, defer_s: float | None = None
    ) -> None: ...

    def enqueue_into(self, pipe: lean.CommandSink, function: str, job_id: str, *args: Any) -> None:
        """Add the commands that queue a job now to `pipe`, so the enqueue shares a round
        trip with other writes."""
        ...

    async def abort(self, job_id: str) -> None: ...

    async def status(self, job_id: str) -> QueueStatus: ...


def serialize_job(data: dict[str, Any]) -> bytes:
    # JSON, not arq's default pickle: whoever can write to Redis must not run code here.
    return orjson.dumps(data, default=str)


def deserialize_job(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(raw)
    return data


class _LeanArqRedis(ArqRedis):
    """arq's client, its transactions (two per job) sent the short way (`LeanPipeline`)."""

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> Pipeline:
        return lean.pipeline(self, transaction, shard_hint)


def _arq(redis: Redis) -> ArqRedis:
    """arq's client on the same connection pool as everything else."""
    return _LeanArqRedis(
        connection_pool=redis.connection_pool,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
    )


class ArqJobQueue:
    def __init__(self, redis: Redis, queue_name: str = keys.QUEUE_NAME) -> None:
        self.redis = _arq(redis)
        self.queue_name = queue_name

    async def enqueue(
        self, function: str, job_id: str, *args: Any, defer_s: float | None = None
    ) -> None:
        """Queue a job once: a job id that is already queued is not queued again."""
        job = await self.redis.enqueue_job(
            function,
            *args,
            _job_id=job_id,
            _queue_name=self.queue_name,
            _defer_by=timedelta(seconds=defer_s) if defer_s else None,
        )
        if job is not None and not defer_s:
            await self.redis.publish(keys.WAKE_CHANNEL, job_id)

    def enqueue_into(self, pipe: lean.CommandSink, function: str, job_id: str, *args: Any) -> None:
        """What `enqueue` does, without its read-before-write (the job id is new): the job
        as arq stores it, its place in the queue, and the wake-up for idle workers."""
        now_ms = timestamp_ms()
        job = serialize_arq_job(function, args, {}, None, now_ms, serializer=serialize_job)
        expires_ms = self.redis.expires_extra_ms
        pipe.execute_command("SET", job_key_prefix + job_id, job, "PX", expires_ms, "NX")
        pipe.execute_command("ZADD", self.queue_name, "NX", now_ms, job_id)
        pipe.execute_command("PUBLISH", keys.WAKE_CHANNEL, job_id)

    async def abort(self, job_id: str) -> None:
        job = Job(job_id, self.redis, _queue_name=self.queue_name, _deserializer=deserialize_job)
        await job.abort(timeout=0)

    async def status(self, job_id: str) -> QueueStatus:
        job = Job(job_id, self.redis, _queue_name=self.queue_name, _deserializer=deserialize_job)
        arq_status: JobStatus = await job.status()
        return QueueStatus(arq_status.value)


JobFunction = Callable[..., Awaitable[Any]]
Hook = Callable[[dict[str, Any]], Awaitable[None]]


TRIES_KEPT_S = 88_400  # how long a job's try count is kept, as arq keeps it
_Job = tuple[str, tuple[Any, ...], dict[str, Any], int]  # function, args, kwargs, enqueued try


def _read_job(raw: bytes | None) -> _Job | str:
    """A job as arq stored it, or why it cannot run."""
    if not raw:
        return "it expired"
    try:
        function, args, kwargs, enqueued_try, _ = deserialize_job_raw(
            raw, deserializer=deserialize_job
        )
    except SerializationError as exc:
        return f"it cannot be read ({exc})"
    if not (
        isinstance(function, str)
        and isinstance(args, list)
        and isinstance(kwargs, dict)
        and isinstance(enqueued_try, int | None)
    ):
        return "it is not a job as Spool queues them"
    return function, tuple(args), kwargs, enqueued_try or 0


class JobWatcher(Protocol):
    """Told of each job this process takes from the queue, before the job's function runs
    (so it can start what the job will need first), and of each one's end."""

    def taken(self, job_id: str, function: str, args: tuple[Any, ...]) -> None: ...

    def ended(self, job_id: str) -> None: ...


class _WakeableWorker(Worker):
    """arq's worker, waking on the wake channel instead of sleeping between polls, taking
    the jobs one poll finds in one round trip (each with its stored form and its try
    counted, which its watcher is told of before the job runs, and which its run does not
    read again as arq's own `run_job` would), and forgetting finished jobs as they end
    (arq's own poll walks every running job each time, which grows with the load)."""

    def __init__(
        self, *args: Any, wake: asyncio.Event, watcher: JobWatcher | None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.wake = wake
        self.watcher = watcher
        self._take_jobs = scripts.register(self.pool, "take_jobs")

    async def _poll_iteration(self) -> None:
        free = self.max_jobs - self.job_counter
        if self.allow_pick_jobs and free > 0:
            hold_ms = int(self.in_progress_timeout_s * 1000)
            taken = await self._take_jobs(
                keys=[self.queue_name],
                args=[
                    timestamp_ms(), hold_ms, free, self.queue_read_limit, in_progress_key_prefix,
                    job_key_prefix, retry_key_prefix, TRIES_KEPT_S,
                ],
            )  # fmt: skip
            for raw_id, raw, tries in zip(taken[::3], taken[1::3], taken[2::3], strict=True):
                await self.sem.acquire()
                self.job_counter += 1
                job_id = raw_id.decode()
                job = _read_job(raw)
                if self.watcher is not None and isinstance(job, tuple):
                    self.watcher.taken(job_id, job[0], job[1])
                task = self.loop.create_task(self._run_taken(job_id, job, int(tries)))
                task.add_done_callback(functools.partial(self._job_ended, job_id))
                self.tasks[job_id] = task
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        await self.heart_beat()

    async def _run_taken(self, job_id: str, job: _Job | str, job_try: int) -> None:
        """Run a job the poll took, as arq's `run_job` runs one (its tries, its time limit,
        its end written back), without reading the job again, a task of its own, or the
        bookkeeping of results, aborts and cron jobs that Spool's queue does not use."""
        if isinstance(job, str):
            log.warning("job %s cannot run: %s", job_id, job)
            self.jobs_failed += 1
            await asyncio.shield(self.finish_failed_job(job_id, None))
            return
        name, args, kwargs, enqueued_try = job
        function = self.functions.get(name)
        if function is None:
            log.warning("job %s cannot run: no function %r", job_id, name)
            self.jobs_failed += 1
            await asyncio.shield(self.finish_failed_job(job_id, None))
            return
        if enqueued_try > job_try:
            job_try = enqueued_try
            await self.pool.setex(retry_key_prefix + job_id, TRIES_KEPT_S, str(job_try))
        max_tries = self.max_tries if function.max_tries is None else function.max_tries
        if job_try > max_tries:
            log.warning("job %s:%s: more than %d tries; not run again", job_id, name, max_tries)
            self.jobs_failed += 1
            await asyncio.shield(self.finish_failed_job(job_id, None))
            return
        timeout_s = self.job_timeout_s if function.timeout_s is None else function.timeout_s
        finish = True
        try:
            async with asyncio.timeout(timeout_s):
                await function.coroutine(self.ctx, *args, **kwargs)
            self.jobs_complete += 1
        except asyncio.CancelledError:
            # The worker is stopping: another runs the job again (as arq does, the
            # cancellation ends here, and the job's end is still written back).
            log.info("job %s:%s cancelled; it will run again", job_id, name)
            self.jobs_retried += 1
            finish = False
        except Exception:
            log.exception("job %s:%s failed", job_id, name)
            self.jobs_failed += 1
        await asyncio.shield(self._finish_taken(job_id, finish))
        if self.after_job_end:
            await self.after_job_end(self.ctx)

    async def _finish_taken(self, job_id: str, finish: bool) -> None:
        """What arq's `finish_job` writes for a job run here (no result kept, no retry
        deferred): one transaction, sent the short way, without a pipeline object."""
        mux = lean.mux_of(self.pool)
        if mux is None:
            await self.finish_job(job_id, finish, None, None, False, None, None)
            return
        in_progress = in_progress_key_prefix + job_id
        done: list[tuple[str, ...]] = [("DEL", in_progress)]
        if finish:
            done = [
                ("ZREM", abort_jobs_ss, job_id),
                ("ZREM", self.queue_name, job_id),
                ("DEL", in_progress, retry_key_prefix + job_id, job_key_prefix + job_id),
            ]
        replies = await lean.send(mux, [("MULTI",), *done, ("EXEC",)])
        for reply in replies[-1]:
            if isinstance(reply, Exception):
                raise reply

    def _job_ended(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self.watcher is not None:
            self.watcher.ended(job_id)
        self._release_sem_dec_counter_on_complete()
        if self.tasks.get(job_id) is task:
            del self.tasks[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: %r", job_id, task.exception())

    async def main(self) -> None:
        # arq's own loop sleeps `poll_delay` between polls; this one waits on `wake` instead,
        # with `poll_delay` only as the fallback when a wake-up is missed.
        self.ctx["redis"] = self.pool
        if self.on_startup:
            await self.on_startup(self.ctx)
        # Redis restarting, failing over, stalled or refusing clients at `maxclients`:
        # keep the process, poll again shortly.
        outage = RedisOutage("queue poll", (0.1, 0.2, 0.4, 0.8, 1.6, 2.0))
        while True:
            self.wake.clear()
            try:
                await self._poll_iteration()
                outage.ok()
            except RedisError as exc:
                await outage.wait(exc)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.poll_delay_s)


class QueueConsumer:
    """Runs queued jobs in this process until SIGINT or SIGTERM, then lets running jobs
    finish for up to `shutdown_grace_s` before cancelling them."""

    def __init__(
        self,
        redis: Redis,
        functions: dict[str, JobFunction],
        *,
        wake: asyncio.Event,
        on_startup: Hook,
        on_shutdown: Hook,
        max_jobs: int,
        job_timeout_s: float,
        poll_interval_s: float,
        shutdown_grace_s: int,
        max_tries: int = 3,
        ctx: dict[str, Any] | None = None,
        watcher: JobWatcher | None = None,
    ) -> None:
        async def wake_on_free_slot(_: dict[str, Any]) -> None:
            wake.set()

        self._worker = _WakeableWorker(
            functions=[
                func(cast(Any, f), name=name, max_tries=max_tries) for name, f in functions.items()
            ],
            queue_name=keys.QUEUE_NAME,
            redis_pool=_arq(redis),
            on_startup=on_startup,
            on_shutdown=on_shutdown,
            after_job_end=wake_on_free_slot,
            handle_signals=True,
            job_completion_wait=shutdown_grace_s,
            max_jobs=max_jobs,
            job_timeout=job_timeout_s,
            keep_result=0,
            poll_delay=poll_interval_s,
            ctx=ctx or {},
            job_serializer=serialize_job,
            job_deserializer=deserialize_job,
            wake=wake,
            watcher=watcher,
        )

    def run(self) -> None:
        self._worker.run()
