"""The worker runs each job its poll took from what the poll read (the job as stored, its
try counted), on a real redis-server: jobs that end, fail, run too long, have had their
tries, cannot be read or were stopped with the worker each leave arq's queue as arq's
own run would leave it: through a pooled client (arq's own writes) and through the
multiplexed one the worker holds (Spool's short way)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import func
from redis.asyncio import Redis

from shared import keys
from shared.queue import GENERATE, ArqJobQueue, _WakeableWorker, deserialize_job, serialize_job
from shared.redis import lean
from shared.redis.clients import create_control_redis
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings

Job = Callable[..., Awaitable[Any]]


@pytest.fixture(params=["pooled", "multiplexed"])
async def redis(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis
) -> AsyncIterator[Redis]:
    url = redis_server.url.replace("/0", "/1")
    multiplexed = request.param == "multiplexed"
    client = create_control_redis(Settings(redis_url=url), multiplexed=multiplexed)
    assert (lean.mux_of(client) is not None) is multiplexed
    await client.flushdb()
    yield client
    await client.aclose()


def worker_for(redis: Redis, job: Job, **options: Any) -> _WakeableWorker:
    return _WakeableWorker(
        functions=[func(job, name=GENERATE, **options)],
        queue_name=keys.QUEUE_NAME,
        redis_pool=ArqJobQueue(redis).redis,
        handle_signals=False,
        keep_result=0,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        wake=asyncio.Event(),
        watcher=None,
    )


async def poll_and_wait(worker: _WakeableWorker) -> None:
    await worker._poll_iteration()
    await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)


async def arq_keys(redis: Redis, job_id: str) -> dict[str, Any]:
    return {
        "queued": await redis.zscore(keys.QUEUE_NAME, job_id) is not None,
        "job": await redis.exists(job_key_prefix + job_id) == 1,
        "in_progress": await redis.exists(in_progress_key_prefix + job_id) == 1,
        "tries": await redis.get(retry_key_prefix + job_id),
    }


GONE = {"queued": False, "job": False, "in_progress": False, "tries": None}


async def test_a_job_runs_once_with_its_arguments_and_leaves_the_queue(redis: Redis) -> None:
    ran: list[tuple[Any, ...]] = []

    async def job(ctx: dict[str, Any], *args: Any) -> str:
        ran.append(args)
        return "done"

    worker = worker_for(redis, job)
    await ArqJobQueue(redis).enqueue(GENERATE, "job-1", "stream-1")
    await poll_and_wait(worker)
    await poll_and_wait(worker)  # nothing is taken twice

    assert ran == [("stream-1",)]
    assert await arq_keys(redis, "job-1") == GONE
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 0)
    assert worker.job_counter == 0


async def test_a_failing_job_and_one_past_its_time_limit_end_as_failed(redis: Redis) -> None:
    async def job(ctx: dict[str, Any], stream_id: str) -> None:
        if stream_id == "raises":
            raise RuntimeError("boom")
        await asyncio.sleep(30)

    worker = worker_for(redis, job, timeout=0.2)
    queue = ArqJobQueue(redis)
    await queue.enqueue(GENERATE, "job-raises", "raises")
    await queue.enqueue(GENERATE, "job-slow", "slow")
    await poll_and_wait(worker)

    assert await arq_keys(redis, "job-raises") == GONE
    assert await arq_keys(redis, "job-slow") == GONE
    assert (worker.jobs_complete, worker.jobs_failed) == (0, 2)


async def test_each_take_counts_a_try_and_a_job_past_its_tries_does_not_run(
    redis: Redis,
) -> None:
    ran: list[int] = []

    async def job(ctx: dict[str, Any], stream_id: str) -> None:
        ran.append(int(await redis.get(retry_key_prefix + "job-1") or 0))
        raise asyncio.CancelledError  # as when the worker stops: the job stays queued

    worker = worker_for(redis, job, max_tries=2)
    await ArqJobQueue(redis).enqueue(GENERATE, "job-1", "stream-1")
    await poll_and_wait(worker)
    state = await arq_keys(redis, "job-1")
    # Stopped, not finished: still queued, free for the next take, its try counted.
    assert state == {"queued": True, "job": True, "in_progress": False, "tries": b"1"}
    assert 0 < await redis.ttl(retry_key_prefix + "job-1") <= 88_400

    await poll_and_wait(worker)
    await poll_and_wait(worker)  # the third try is past max_tries=2: not run, removed

    assert ran == [1, 2]
    assert await arq_keys(redis, "job-1") == GONE
    assert (worker.jobs_retried, worker.jobs_failed) == (2, 1)


async def test_a_try_count_set_at_enqueue_is_taken_up(redis: Redis) -> None:
    ran: list[str] = []

    async def job(ctx: dict[str, Any], stream_id: str) -> None:
        ran.append(stream_id)

    worker = worker_for(redis, job, max_tries=3)
    await ArqJobQueue(redis).redis.enqueue_job(
        GENERATE, "stream-1", _job_id="job-1", _queue_name=keys.QUEUE_NAME, _job_try=4
    )
    await poll_and_wait(worker)

    assert ran == []  # enqueued as its fourth try, one more than it may have
    assert await arq_keys(redis, "job-1") == GONE


@pytest.mark.parametrize(
    "stored",
    [
        b"not json",
        b'{"f": "generate", "a": 5, "k": {}, "t": null, "et": 0}',
        b'{"f": "generate", "a": [], "k": [], "t": null, "et": 0}',
        b'{"f": "other", "a": [], "k": {}, "t": null, "et": 0}',
    ],
)
async def test_a_job_that_cannot_run_is_removed_and_the_others_run(
    redis: Redis, stored: bytes
) -> None:
    ran: list[str] = []

    async def job(ctx: dict[str, Any], stream_id: str) -> None:
        ran.append(stream_id)

    worker = worker_for(redis, job)
    await redis.set(job_key_prefix + "bad", stored)
    await redis.zadd(keys.QUEUE_NAME, {"bad": 1})
    await ArqJobQueue(redis).enqueue(GENERATE, "good", "stream-1")
    await poll_and_wait(worker)

    assert ran == ["stream-1"]
    assert await arq_keys(redis, "bad") == GONE
    assert await arq_keys(redis, "good") == GONE
    assert (worker.jobs_complete, worker.jobs_failed) == (1, 1)
    assert worker.job_counter == 0


async def test_a_job_whose_stored_form_expired_is_removed(redis: Redis) -> None:
    async def job(ctx: dict[str, Any], stream_id: str) -> None:
        raise AssertionError("not to be run")

    worker = worker_for(redis, job)
    await redis.zadd(keys.QUEUE_NAME, {"expired": 1})
    await poll_and_wait(worker)

    assert await arq_keys(redis, "expired") == GONE
