"""A run races its upstream against a cancel and its time limit, in one process on a real
redis-server: whichever comes first ends the job, with the stream's one terminal event,
and the upstream's pump does not outlive the run."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from redis.asyncio import Redis

from api.deps import Services
from shared import events as ev
from shared.redis.embedded import EmbeddedRedis
from shared.store import Status
from tests.in_process import app_and_worker, note_created
from worker.job_run import CancelFlag
from worker.runtime import WorkerRuntime

System = tuple[httpx.AsyncClient, Services, WorkerRuntime]
SLOW = {"slow": {"provider": "demo", "tokens_per_second": 20, "max_output_tokens": 1000}}


@pytest.fixture
async def system(redis: Redis, redis_server: EmbeddedRedis) -> AsyncIterator[System]:
    url = redis_server.url.replace("/0", "/1")
    async with app_and_worker(url, SLOW, job_timeout_s=1.0) as system:
        yield system


async def started_job(
    http: httpx.AsyncClient, services: Services
) -> tuple[str, asyncio.Task[httpx.Response]]:
    """A streamed request's job, created and queued, and the request (its answer streams
    as the runtime runs the job)."""
    created = note_created(services)
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    posting = asyncio.create_task(http.post("/v1/chat/completions", json=body))
    return await asyncio.wait_for(created.get(), 10), posting


def pumps() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("pump:")]


async def events_of(services: Services, stream_id: str) -> list[ev.Event]:
    return [e.event for e in await services.store.read_range(stream_id, "-", "+")]


async def test_a_cancel_mid_run_ends_it_at_once(system: System) -> None:
    http, services, runtime = system
    stream_id, posting = await started_job(http, services)
    running = asyncio.create_task(runtime.generate(stream_id))
    async with asyncio.timeout(10):
        # The store offers nothing to wait on: look until the first text is there.
        while not any(isinstance(e, ev.TextDelta) for e in await events_of(services, stream_id)):  # noqa: ASYNC110
            await asyncio.sleep(0.02)
    runtime.cancel(stream_id)
    outcome = await asyncio.wait_for(running, 2)

    assert outcome == Status.CANCELLED.value
    events = await events_of(services, stream_id)
    assert events[-1] == ev.Finish(reason="cancelled", usage=events[-1].usage)  # type: ignore[union-attr]
    assert sum(isinstance(e, ev.Finish | ev.Error) for e in events) == 1
    assert pumps() == []
    assert (await asyncio.wait_for(posting, 5)).status_code == 200


async def test_a_run_past_its_time_limit_ends_with_an_error(system: System) -> None:
    http, services, runtime = system
    stream_id, posting = await started_job(http, services)
    outcome = await asyncio.wait_for(runtime.generate(stream_id), 10)

    assert outcome == Status.FAILED.value
    events = await events_of(services, stream_id)
    assert any(isinstance(e, ev.TextDelta) for e in events)
    assert isinstance(events[-1], ev.Error) and events[-1].code == "generation_timeout"
    assert pumps() == []
    assert (await asyncio.wait_for(posting, 5)).status_code == 200


def test_a_cancel_flag_tells_its_callback_once_even_if_set_before() -> None:
    told: list[str] = []
    flag = CancelFlag()
    flag.on_set(lambda: told.append("first"))
    flag.set()
    flag.set()  # set once
    assert flag.raised and told == ["first"]
    flag.on_set(lambda: told.append("late"))  # already set: told at once
    flag.on_set(None)
    flag.set()
    assert told == ["first", "late"]
