"""The API application: `create_app(settings)` with a lifespan that owns the Redis pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from api.deps import Services
from api.errors import BodySizeLimit, install_error_handlers
from api.routes import health, models, openai_chat, streams
from shared.queue import ArqJobQueue
from shared.redis import create_redis
from shared.settings import Settings
from shared.store import StreamStore


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = create_redis(settings)
        app.state.services = Services(
            settings=settings,
            redis=redis,
            store=StreamStore(redis, settings),
            queue=ArqJobQueue(redis),
        )
        try:
            yield
        finally:
            await redis.aclose(close_connection_pool=True)

    app = FastAPI(title="Spool", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    for router in (openai_chat.router, streams.router, models.router, health.router):
        app.include_router(router)
    return app
