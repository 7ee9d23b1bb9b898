"""A generation's claim goes out as the queue takes its job, one round trip before its run
would send it, on a real redis-server: the poll hands the worker each job as stored, the
run takes the claim up instead of claiming again, a cancel heard in between still ends the
job, and a claim whose job arq never runs (or that a stopping worker holds) is undone, so
the job goes back to the queue as it was."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from arq.worker import func
from redis.asyncio import Redis

from api.deps import Services
from shared import events as ev
from shared import keys
from shared.queue import GENERATE, ArqJobQueue, _WakeableWorker, deserialize_job, serialize_job
from shared.redis.embedded import EmbeddedRedis
from shared.store import Claim, Status
from tests.in_process import app_and_worker, note_created
from worker.runtime import WorkerRuntime

System = tuple[httpx.AsyncClient, Services, WorkerRuntime]


@pytest.fixture
async def system(redis: Redis, redis_server: EmbeddedRedis) -> AsyncIterator[System]:
    # The `redis` fixture's database: the test reads what the runs wrote.
    url = redis_server.url.replace("/0", "/1")
    async with app_and_worker(
        url, {"fast": {"provider": "demo", "max_output_tokens": 5}}
    ) as system:
        yield system


async def queued_job(http: httpx.AsyncClient, services: Services) -> tuple[str, asyncio.Task[Any]]:
    """A streaming request whose job waits in the queue (no worker polls here): its stream
    id and the request, still open."""
    created = note_created(services)
    body = {"model": "fast", "messages": [{"role": "user", "content": "hi"}]}
    posting = asyncio.create_task(http.post("/v1/chat/completions", json=body))
    return await asyncio.wait_for(created.get(), 10), posting


def counting_claims(runtime: WorkerRuntime) -> list[str]:
    claims: list[str] = []
    claim = runtime.store.claim

    async def counted(stream_id: str, attempt: str, worker: str) -> Claim:
        claims.append(attempt)
        return await claim(stream_id, attempt, worker)

    runtime.store.claim = counted  # type: ignore[method-assign]
    return claims


async def test_the_run_takes_up_the_claim_sent_when_its_job_was_taken(system: System) -> None:
    http, services, runtime = system
    stream_id, posting = await queued_job(http, services)
    claims = counting_claims(runtime)

    runtime.taken(stream_id, GENERATE, (stream_id,))
    outcome = await asyncio.wait_for(runtime.generate(stream_id), 10)
    response = await asyncio.wait_for(posting, 10)

    assert outcome == Status.COMPLETED.value
    assert len(claims) == 1  # the run did not claim again
    record = await services.store.get(stream_id)
    assert record.status is Status.COMPLETED
    assert response.json()["choices"][0]["finish_reason"] == "stop"
    assert runtime._prefetched == {} and runtime._claiming == {}


async def test_other_jobs_and_a_second_job_of_a_stream_are_not_claimed_early(
    system: System,
) -> None:
    http, services, runtime = system
    stream_id, posting = await queued_job(http, services)
    claims = counting_claims(runtime)

    runtime.taken("hook:t:1:1", "deliver_webhook", ("t", 1, 1))
    runtime.taken("odd", GENERATE, (stream_id, "extra"))
    assert claims == [] and runtime._prefetched == {}

    runtime.taken(stream_id, GENERATE, (stream_id,))
    runtime.taken(f"{stream_id}:requeue:1", GENERATE, (stream_id,))  # claims when it runs
    await asyncio.sleep(0)
    assert len(claims) == 1
    assert list(runtime._prefetched) == [stream_id]
    assert await asyncio.wait_for(runtime.generate(stream_id), 10) == Status.COMPLETED.value
    await asyncio.wait_for(posting, 10)


async def test_a_cancel_heard_before_the_run_takes_up_the_claim_ends_the_job(
    system: System,
) -> None:
    http, services, runtime = system
    stream_id, posting = await queued_job(http, services)

    runtime.taken(stream_id, GENERATE, (stream_id,))
    await runtime._prefetched[stream_id].claim  # claimed: the job is running
    runtime.cancel(stream_id)  # what the cancel listener does when it hears one
    outcome = await asyncio.wait_for(runtime.generate(stream_id), 10)
    response = await asyncio.wait_for(posting, 10)

    assert outcome == Status.CANCELLED.value
    assert response.json()["choices"][0]["finish_reason"] == "cancelled"
    events = [e.event for e in await services.store.read_range(stream_id, "-", "+")]
    assert not any(isinstance(e, ev.TextDelta) for e in events)


async def assert_back_in_the_queue(services: Services, stream_id: str) -> None:
    record = await services.store.get(stream_id)
    assert record.status is Status.QUEUED
    assert await services.store.control.zscore(keys.QUEUED_KEY, stream_id) is not None
    assert await services.store.control.zscore(keys.LEASES_KEY, stream_id) is None


async def test_a_claim_whose_job_never_runs_is_undone(system: System) -> None:
    http, services, runtime = system
    stream_id, posting = await queued_job(http, services)

    runtime.taken(stream_id, GENERATE, (stream_id,))
    await runtime._prefetched[stream_id].claim
    assert (await services.store.get(stream_id)).status is Status.RUNNING
    runtime.ended(stream_id)  # arq ended the job without running it (aborted, expired …)
    await asyncio.wait_for(asyncio.gather(*runtime._unclaiming), 10)

    await assert_back_in_the_queue(services, stream_id)
    assert runtime._prefetched == {} and runtime._claiming == {}
    # The job runs in full when it is taken again.
    assert await asyncio.wait_for(runtime.generate(stream_id), 10) == Status.COMPLETED.value
    response = await asyncio.wait_for(posting, 10)
    assert response.json()["choices"][0]["finish_reason"] == "stop"


async def test_a_stopping_worker_undoes_the_claims_it_holds(system: System) -> None:
    http, services, runtime = system
    stream_id, posting = await queued_job(http, services)

    runtime.taken(stream_id, GENERATE, (stream_id,))
    await runtime.shutdown()
    await runtime.startup()  # for the fixture's own shutdown

    await assert_back_in_the_queue(services, stream_id)
    posting.cancel()


async def test_the_poll_tells_its_watcher_of_each_job_it_takes_and_ends(redis: Redis) -> None:
    seen: list[tuple[str, Any]] = []

    class Watcher:
        def taken(self, job_id: str, function: str, args: tuple[Any, ...]) -> None:
            seen.append(("taken", (job_id, function, args)))

        def ended(self, job_id: str) -> None:
            seen.append(("ended", job_id))

    async def generate(ctx: dict[str, Any], stream_id: str) -> str:
        seen.append(("ran", stream_id))
        return "ok"

    queue = ArqJobQueue(redis)
    await queue.enqueue(GENERATE, "job-1", "stream-1")
    worker = _WakeableWorker(
        functions=[func(generate, name=GENERATE)],
        queue_name=keys.QUEUE_NAME,
        redis_pool=queue.redis,
        handle_signals=False,
        keep_result=0,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        wake=asyncio.Event(),
        watcher=Watcher(),
    )
    await worker._poll_iteration()
    await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)

    assert seen == [
        ("taken", ("job-1", GENERATE, ("stream-1",))),
        ("ran", "stream-1"),
        ("ended", "job-1"),
    ]
