"""The API application: `create_app(settings)` with a lifespan that owns the Redis pool."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import httpx
from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from api.deps import Services
from api.errors import install_error_handlers
from api.fast_routes import FastRoutes
from api.hub import StreamHub
from api.metrics import Metrics, MetricsMiddleware
from api.request_limits import RequestLimits
from api.responses import DeferredStreams
from api.routes import (
    anthropic,
    count_tokens,
    embeddings,
    gemini,
    health,
    models,
    openai_chat,
    openai_completions,
    openai_responses,
    playground,
    simple,
    streams,
    tasks,
    usage,
)
from shared.artifacts import ArtifactStore
from shared.auth import KeyStore
from shared.hooks import HookStore
from shared.limits import Admission, RedisMemory
from shared.netguard import Allowlist, GuardedTransport
from shared.queue import ArqJobQueue
from shared.reaper import Reaper
from shared.redis.clients import (
    client_name,
    close_data_redis,
    create_control_redis,
    create_data_redis,
)
from shared.settings import Settings
from shared.store import StreamStore
from shared.supervise import cancel_and_wait, supervise
from shared.task_view import TaskViews

QUEUE_CONNECTIONS = 4


def create_app(settings: Settings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Three kinds of connection, a fixed number of each whatever the load: one shared
        # by every request (multiplexed), the stream hub's pub/sub, and a few for arq,
        # whose enqueue WATCHes keys. With the streams on their own Redis (a Cluster), the
        # shared one is per Redis, and the cluster client holds a pool per node.
        # A request's commands wait for Redis `redis_request_timeout_s` at most: a stalled
        # Redis answers 503, not a hang. Each connection is named for this process and its
        # use, as CLIENT LIST shows it.
        bound = settings.redis_request_timeout_s
        control = create_control_redis(
            settings, multiplexed=True, name=client_name("api", "mux"), command_timeout=bound
        )
        redis = (
            control
            if settings.queue_url is None
            else create_data_redis(
                settings, multiplexed=True, name=client_name("api", "data"), command_timeout=bound
            )
        )
        queue_redis = create_control_redis(
            settings, max_connections=QUEUE_CONNECTIONS, name=client_name("api", "queue")
        )
        store = StreamStore(redis, settings, control)
        hub = StreamHub(
            redis, store, tick_s=settings.keepalive_interval_s, name=client_name("api", "hub")
        )
        queue = ArqJobQueue(queue_redis)
        hooks = HookStore(redis, control, settings.task_retention_s)
        memory = RedisMemory(redis, settings)  # the streams' Redis: where a job grows
        app.state.services = Services(
            settings=settings,
            redis=redis,
            control=control,
            store=store,
            queue=queue,
            keys=KeyStore(control),
            admission=Admission(control, settings, memory),
            metrics=app.state.metrics,
            hooks=hooks,
            tasks=TaskViews(store, hooks, settings.public_base_url),
            artifacts=ArtifactStore(settings.artifacts_root, settings.max_output_bytes),
            hub=hub,
            # Calls the API makes upstream itself (embeddings, token counts), under the
            # outbound guard the workers' calls pass.
            http=httpx.AsyncClient(
                transport=GuardedTransport(Allowlist.parse(settings.upstream_allowlist)),
                follow_redirects=False,
                timeout=httpx.Timeout(60.0, connect=10.0),
            ),
        )
        background = [
            supervise("stream-hub", hub.run),
            supervise("hub-ticks", hub.tick_forever),
            supervise("redis-memory", memory.watch),
        ]
        if settings.abandon_grace_s is not None:
            # Only the abandoned-stream policy reads these marks.
            background.append(supervise("reader-marks", hub.mark_readers_forever))
        # API replicas reap too, so streams end even when every worker is gone.
        reaper = Reaper(store, queue, settings, count=app.state.metrics.count_reaped)
        background.append(supervise("reaper", reaper.run_forever))
        try:
            yield
        finally:
            for task in background:
                await cancel_and_wait(task)
            if redis is not control:
                await close_data_redis(redis)
            await control.aclose(close_connection_pool=True)
            await queue_redis.aclose(close_connection_pool=True)
            await app.state.services.http.aclose()

    app = FastAPI(title="Spool", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    metrics = Metrics()
    app.state.metrics = metrics
    fast = FastRoutes([openai_chat.router]) if settings.fast_routes else None
    app.add_middleware(RequestLimits, settings=settings, fast=fast)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    for router in (
        openai_chat.router,
        openai_completions.router,
        openai_responses.router,
        anthropic.router,
        count_tokens.router,
        embeddings.router,
        gemini.router,
        simple.router,
        streams.router,
        tasks.router,
        usage.router,
        models.router,
        health.router,
        playground.router,
    ):
        app.include_router(router)
    return app


# What a browser on an allowed origin may send and read.
CORS_METHODS = ["GET", "POST", "DELETE", "OPTIONS"]
CORS_EXPOSED = [
    "X-Spool-Stream-Id",
    "X-Spool-Dropped-Params",
    "X-Spool-Deployment",
    "Retry-After",
    "WWW-Authenticate",
]


def served(app: FastAPI, settings: Settings) -> ASGIApp:
    """The application as the server runs it: SSE responses deferred out of the
    framework's frames (`DeferredStreams`), and, with `cors_origins`, CORS outermost, so
    preflights are answered before anything else and every answer (a stream, a refusal)
    carries the headers a browser needs to read it.

    The client address and scheme are taken from `X-Forwarded-For` / `-Proto` sent by the
    proxies in `FORWARDED_ALLOW_IPS` (uvicorn's own rule and default, 127.0.0.1), inside
    `DeferredStreams`: an open stream holds no frame of it."""
    trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")
    # uvicorn types its middleware with its own ASGI types, Starlette with its own.
    forwarded = cast(ASGIApp, ProxyHeadersMiddleware(cast(Any, app), trusted_hosts=trusted))
    wrapped: ASGIApp = DeferredStreams(forwarded)
    if settings.cors_origins:
        wrapped = CORSMiddleware(
            wrapped,
            allow_origins=settings.cors_origins,
            allow_methods=CORS_METHODS,
            allow_headers=["*"],
            expose_headers=CORS_EXPOSED,
            max_age=600,
        )
    return wrapped
