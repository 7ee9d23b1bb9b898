"""A worker runtime in the test's own process, beside the API app (`create_app`), on the
Redis its settings name: for tests that reach inside a job while it runs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from api.app import create_app
from api.deps import Services
from shared.redis.clients import create_control_redis
from shared.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runtime import WorkerRuntime


def worker_runtime(settings: Settings) -> WorkerRuntime:
    """As `spool worker` builds it (a pool and a multiplexed connection), with metrics of
    its own; call `startup()` and `shutdown()` around its use."""
    return WorkerRuntime(
        settings,
        create_control_redis(settings),
        create_control_redis(settings, multiplexed=True),
        metrics=WorkerMetrics(settings),
    )


@contextlib.asynccontextmanager
async def app_and_worker(
    redis_url: str, models: dict[str, Any], **overrides: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, Services, WorkerRuntime]]:
    """The API app (a client to it over ASGI, and its services) and a worker runtime, both
    started on `redis_url` with these models (and settings) and no keys; no queue consumer
    runs: the test calls the runtime itself."""
    settings = Settings.model_validate(
        {"redis_url": redis_url, "auth_enabled": False, "models": models, **overrides}
    )
    app = create_app(settings)
    runtime = worker_runtime(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://spool") as http:
            await runtime.startup()
            try:
                yield http, app.state.services, runtime
            finally:
                await runtime.shutdown()


def note_created(services: Services, listeners: dict[str, int] | None = None) -> asyncio.Queue[str]:
    """The ids of the streams the API creates from now on, as each is created (and in
    `listeners`, how many listeners Redis counted on each one's channel then)."""
    created: asyncio.Queue[str] = asyncio.Queue()
    create = services.store.create

    async def noting_create(stream_id: str, **fields: Any) -> int:
        counted = await create(stream_id, **fields)
        if listeners is not None:
            listeners[stream_id] = counted
        created.put_nowait(stream_id)
        return counted

    services.store.create = noting_create  # type: ignore[method-assign]
    return created
