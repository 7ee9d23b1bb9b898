"""A cancel that comes while a worker is claiming the job, in one process on a real
redis-server: the API app cancels the stream after the worker's claim has read the record
and before its run is registered. The run must not start: the stream ends with one
cancelled finish and no text. The worker keeps what its cancel listener hears while a job
is being claimed, rather than reading the flag again after every claim."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from api.deps import Services
from shared import events as ev
from shared.redis.embedded import EmbeddedRedis
from shared.store import Claim, Status
from tests.in_process import app_and_worker, note_created
from worker.runtime import WorkerRuntime


@pytest.fixture
async def system(
    redis: Redis, redis_server: EmbeddedRedis
) -> AsyncIterator[tuple[httpx.AsyncClient, Services, WorkerRuntime]]:
    # The `redis` fixture's database: the test reads what the runs wrote.
    url = redis_server.url.replace("/0", "/1")
    async with app_and_worker(
        url, {"slow": {"provider": "demo", "tokens_per_second": 5}}
    ) as system:
        yield system


async def test_a_cancel_heard_while_claiming_ends_the_job_before_it_runs(
    system: tuple[httpx.AsyncClient, Services, WorkerRuntime],
) -> None:
    http, services, runtime = system
    created = note_created(services)
    claim, cancel = runtime.store.claim, runtime.cancel
    heard = asyncio.Event()
    noted: list[bool] = []

    def hearing_cancel(stream_id: str) -> None:
        cancel(stream_id)
        heard.set()

    runtime.cancel = hearing_cancel  # type: ignore[method-assign]

    async def claim_then_cancel(stream_id: str, attempt: str, worker: str) -> Claim:
        claimed = await claim(stream_id, attempt, worker)
        assert not claimed.cancel_requested  # the claim itself saw no cancel
        cancel = await http.post(f"/v1/streams/{stream_id}/cancel")
        assert cancel.status_code == 200, cancel.text
        # The worker's listener hears the cancel before the run is registered.
        await asyncio.wait_for(heard.wait(), 5)
        noted.append(runtime._claiming[stream_id].heard)
        return claimed

    runtime.store.claim = claim_then_cancel  # type: ignore[method-assign]
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}]}
    posting = asyncio.create_task(http.post("/v1/chat/completions", json=body))
    stream_id = await asyncio.wait_for(created.get(), 10)
    outcome = await asyncio.wait_for(runtime.generate(stream_id), 10)
    response = await asyncio.wait_for(posting, 10)

    assert noted == [True]
    assert outcome == Status.CANCELLED.value
    assert response.json()["choices"][0]["finish_reason"] == "cancelled"
    events = [e.event for e in await services.store.read_range(stream_id, "-", "+")]
    assert not any(isinstance(e, ev.TextDelta) for e in events)
    assert isinstance(events[-1], ev.Finish) and events[-1].reason == "cancelled"
    assert runtime._claiming == {} and runtime.runs == {}
