"""A job watched from the inside, in one process on a real redis-server: the API app and a
worker runtime, scripted upstream deployments, an in-memory span exporter and a captured
JSON log. The job's lines name it (stream, key, model, provider, and the deployment it
moved to), its failures give their code and reason, its spans form one trace from the
API's enqueue to each upstream attempt, and the worker's metrics count it once."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import generate_latest
from redis.asyncio import Redis

from api.app import create_app
from api.deps import Services
from shared import events as ev
from shared import keys, logs, tracing
from shared.queue import ArqJobQueue
from shared.reaper import Reaper
from shared.redis.embedded import EmbeddedRedis, free_port
from shared.settings import Settings
from shared.store import Status, StreamStore
from tests.in_process import worker_runtime
from tests.mock_fleet import MockFleet, deployment
from worker.runtime import WorkerRuntime

FIRST = 1_000_000.0  # a weight that puts a deployment first nearly always
LEAKY = ["Here ", "is ", "the ", "secret", "-42", " you ", "asked ", "for."]


@dataclass
class System:
    http: httpx.AsyncClient
    services: Services
    runtime: WorkerRuntime
    spans: InMemorySpanExporter
    log: io.StringIO
    created: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    api_context: dict[str, dict[str, str]] = field(default_factory=dict)

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.getvalue().splitlines()]

    def metrics(self) -> str:
        return generate_latest(self.runtime.metrics.registry).decode()

    async def ask(self, model: str, content: str = "hi") -> tuple[httpx.Response, str]:
        """A chat request, run to its end by the in-process worker."""
        body = {"model": model, "messages": [{"role": "user", "content": content}]}
        posting = asyncio.create_task(self.http.post("/v1/chat/completions", json=body))
        stream_id = await asyncio.wait_for(self.created.get(), 10)
        await self.runtime.generate(stream_id)
        return await asyncio.wait_for(posting, 10), stream_id


@pytest.fixture
async def system(redis: Redis, redis_server: EmbeddedRedis) -> AsyncIterator[System]:
    fleet = MockFleet().start()
    fleet.script("o-down", "503")
    fleet.script("o-leaky", text=LEAKY)
    settings = Settings.model_validate(
        {
            "redis_url": redis_server.url.replace("/0", "/1"),  # the `redis` fixture's database
            "auth_enabled": False,
            "upstream_allowlist": "127.0.0.1",
            "upstream_backoff_s": 0.01,
            "models": {
                "grp": {
                    "deployments": [
                        deployment(fleet, "o-down", weight=FIRST),
                        deployment(fleet, "o-up"),
                    ],
                    "allowed_fails": 1,
                    "cooldown_s": 60,
                },
                "guarded": {**deployment(fleet, "o-leaky"), "policy": "strict"},
                "closed": {
                    "provider": "openai",
                    "base_url": f"http://127.0.0.1:{free_port()}/v1",  # nothing listens
                    "model": "m",
                    "connect_timeout_s": 1,
                },
            },
            "policies": {"strict": {"patterns": ["(?i)secret-[0-9]+"]}},
        }
    )
    spans = InMemorySpanExporter()
    tracing.start(settings, "test", exporter=spans)
    captured = io.StringIO()
    handler = logging.StreamHandler(captured)
    handler.addFilter(logs.JobContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    app = create_app(settings)
    runtime = worker_runtime(settings)
    try:
        async with app.router.lifespan_context(app):
            services: Services = app.state.services
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://spool") as http:
                found = System(http, services, runtime, spans, captured)
                create = services.store.create

                async def created(stream_id: str, **fields: Any) -> None:
                    found.api_context[stream_id] = logs.job_fields()
                    await create(stream_id, **fields)
                    found.created.put_nowait(stream_id)  # stored and queued: run it

                services.store.create = created  # type: ignore[method-assign]
                await runtime.startup()
                try:
                    yield found
                finally:
                    await runtime.shutdown()
    finally:
        tracing.stop()
        root.removeHandler(handler)
        root.setLevel(level)
        fleet.stop()


def sample(metrics: str, name: str, **labels: str) -> float:
    """The value of the series `name{labels}` (labels in any order), 0 when absent."""
    for line in metrics.splitlines():
        head, _, value = line.rpartition(" ")
        if not head.startswith(name + "{") and head != name:
            continue
        found = dict(
            part.split("=", 1) for part in head[len(name) + 1 : -1].split(",") if "=" in part
        )
        if {k: v.strip('"') for k, v in found.items()} == labels:
            return float(value)
    return 0.0


def by_name(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


async def test_a_routed_job_is_logged_traced_and_counted(system: System) -> None:
    response, stream_id = await system.ask("grp")
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "served by o-up"

    # The API made the job inside its context: stream, key and model, and where it goes.
    assert system.api_context[stream_id] == {
        "stream_id": stream_id,
        "key_id": "anonymous",
        "model": "grp",
        "provider": "openai",
        "deployment": "o-down",
    }
    # Every worker line about the job names it; the deployment follows the route.
    job_lines = [line for line in system.lines() if line.get("stream_id") == stream_id]
    assert job_lines and all(
        line["key_id"] == "anonymous" and line["model"] == "grp" and line["provider"] == "openai"
        for line in job_lines
    )
    moved = [line for line in job_lines if line.get("code") == "upstream_error"]
    assert moved and moved[0]["deployment"] == "o-down" and "overloaded" in moved[0]["reason"]
    (ended,) = [line for line in job_lines if line.get("status") == "completed"]
    assert ended["deployment"] == "o-up" and ended["finish_reason"] == "stop"
    assert ended["output_tokens"] > 0

    # One trace: the API's enqueue, the worker's run, and each upstream attempt under it.
    spans = system.spans.get_finished_spans()
    (create,) = by_name(spans, "generation.create")
    (run,) = by_name(spans, "generation.run")
    attempts = by_name(spans, "upstream.attempt")
    assert create.context is not None and run.context is not None
    assert run.parent is not None and run.parent.span_id == create.context.span_id
    assert {s.context.trace_id for s in [create, run, *attempts] if s.context} == {
        create.context.trace_id
    }
    assert [(a.attributes or {}).get("spool.deployment") for a in attempts] == ["o-down", "o-up"]
    assert [(a.attributes or {}).get("spool.outcome") for a in attempts] == [
        "upstream_error",
        "ok",
    ]
    assert all(a.parent is not None and a.parent.span_id == run.context.span_id for a in attempts)
    run_attributes = run.attributes or {}
    assert run_attributes["spool.stream_id"] == stream_id
    assert run_attributes["spool.deployment"] == "o-up"
    assert run_attributes["spool.outcome"] == "completed"
    record = await system.services.store.get(stream_id)
    assert record.request["trace"].split("-")[1] == format(create.context.trace_id, "032x")

    # Counted once per job and per attempt.
    m = system.metrics()
    down = {"model": "grp", "deployment": "o-down", "outcome": "upstream_error"}
    assert sample(m, "spool_worker_attempts_total", **down) == 1
    up = {"model": "grp", "deployment": "o-up", "outcome": "ok"}
    assert sample(m, "spool_worker_attempts_total", **up) == 1
    error = {"provider": "openai", "code": "upstream_error", "status": "503"}
    assert sample(m, "spool_worker_upstream_errors_total", **error) == 1
    assert sample(m, "spool_worker_cooldowns_total", deployment="o-down") == 1
    assert sample(m, "spool_worker_jobs_total", kind="generation", status="completed") == 1
    assert sample(m, "spool_worker_open_jobs", kind="generation") == 0
    assert sample(m, "spool_worker_tokens_total", model="grp", direction="output") == float(
        ended["output_tokens"]
    )
    labels = {"model": "grp", "provider": "openai"}
    assert sample(m, "spool_worker_time_to_first_token_seconds_count", **labels) == 1
    assert sample(m, "spool_worker_queue_wait_seconds_count", **labels) == 1

    # The API's side: the queue's depth, read when scraped.
    api_metrics = (await system.http.get("/metrics")).text
    assert "spool_queue_depth 0.0" in api_metrics


async def test_a_blocked_output_is_counted(system: System) -> None:
    response, _ = await system.ask("guarded")
    assert response.json()["choices"][0]["finish_reason"] == "content_filter"
    blocked = {"policy": "strict", "stage": "output", "outcome": "blocked"}
    assert sample(system.metrics(), "spool_policy_decisions_total", **blocked) == 1


async def test_a_pass_through_model_is_labelled_as_such(system: System) -> None:
    response, stream_id = await system.ask("demo/anything")
    assert response.status_code == 200
    m = system.metrics()
    assert "demo/anything" not in m
    labels = {"model": "passthrough", "provider": "demo"}
    assert sample(m, "spool_worker_queue_wait_seconds_count", **labels) == 1
    (ended,) = [line for line in system.lines() if line.get("stream_id") == stream_id]
    assert ended["model"] == "demo/anything"  # logs name it; only metrics bound it


async def test_a_failed_job_logs_its_code_and_reason_and_fails_its_span(system: System) -> None:
    response, stream_id = await system.ask("closed")
    assert response.status_code == 502
    job_lines = [line for line in system.lines() if line.get("stream_id") == stream_id]
    retries = [line for line in job_lines if "retry" in line["message"]]
    assert len(retries) == 2  # upstream_max_attempts is 3
    (failure,) = [line for line in job_lines if line.get("status") == "failed"]
    assert failure["level"] == "warning" and failure["code"] == "upstream_connect_error"
    assert failure["reason"] and failure["reason"] in failure["message"]
    assert failure["deployment"] == "closed" and failure["provider"] == "openai"
    m = system.metrics()
    assert sample(m, "spool_worker_job_errors_total", code="upstream_connect_error") == 1
    error = {"provider": "openai", "code": "upstream_connect_error", "status": "none"}
    assert sample(m, "spool_worker_upstream_errors_total", **error) == 3
    assert sample(m, "spool_worker_jobs_total", kind="generation", status="failed") == 1
    (run,) = by_name(system.spans.get_finished_spans(), "generation.run")
    assert not run.status.is_ok and run.status.description == "upstream_connect_error"
    assert len(by_name(system.spans.get_finished_spans(), "upstream.attempt")) == 3


async def test_the_reaper_counts_what_it_settles(redis: Redis) -> None:
    settings = Settings()
    store = StreamStore(redis, settings)
    counted: list[str] = []
    reaper = Reaper(store, ArqJobQueue(redis), settings, count=counted.append)
    sid = "e" * 32
    await store.create(sid, surface="openai.chat", model="demo", request={}, render={}, owner="")

    async def lose_the_worker() -> None:
        await redis.hset(keys.job_key(sid), "lease_until", 0)
        assert await reaper.settle(sid, await store.server_time_ms()) == 1

    await store.claim(sid, "a1", "w1")
    await lose_the_worker()  # nothing emitted: back to the queue
    await store.claim(sid, "a2", "w2")
    await store.append(sid, "a2", [ev.TextDelta(text="partial")], held=0)
    await lose_the_worker()  # after output: ended
    assert counted == ["requeued", "lost"]
    assert (await store.get(sid)).status is Status.FAILED


async def test_requests_that_redis_fails_are_counted(tmp_path: Any) -> None:
    """Redis gone under the API: each request is a 503, and each counts once in
    `spool_redis_errors_total{where="request"}`, whether its key lookup or its job's
    creation met the outage."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    server.start()
    try:
        for auth in (False, True):
            settings = Settings.model_validate(
                {"redis_url": server.url, "auth_enabled": auth, "redis_retry_s": 0.1}
            )
            app = create_app(settings)
            async with app.router.lifespan_context(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://spool") as http:
                    server.stop()
                    body = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
                    headers = {"Authorization": "Bearer sk-anything"}
                    for _ in range(2):
                        answer = await http.post("/v1/chat/completions", json=body, headers=headers)
                        assert answer.status_code == 503, answer.text
                    metrics = generate_latest(app.state.services.metrics.registry).decode()
                    assert sample(metrics, "spool_redis_errors_total", where="request") == 2
                    server.start()
    finally:
        server.stop()
