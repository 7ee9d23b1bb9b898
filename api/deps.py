"""What route handlers get injected: the per-process services built by the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import httpx
from fastapi import Depends, Header, Request
from redis.asyncio import Redis

from api.errors import format_for_path
from api.formats import WireFormat, registry
from api.formats.gemini import GeminiFormat
from api.hub import StreamHub
from api.metrics import Metrics
from shared.artifacts import ArtifactStore
from shared.auth import ANONYMOUS, ApiKey, KeyStore
from shared.errors import Unauthenticated
from shared.hooks import HookStore
from shared.limits import Admission
from shared.queue import JobQueue
from shared.redis.clients import DataRedis
from shared.settings import Settings
from shared.store import StreamStore
from shared.task_view import TaskViews


@dataclass
class Services:
    settings: Settings
    redis: DataRedis  # streams and job records (REDIS_URL)
    control: Redis  # the queue's Redis: indexes, keys, limits (SPOOL_QUEUE_URL or REDIS_URL)
    store: StreamStore
    queue: JobQueue
    keys: KeyStore
    admission: Admission
    metrics: Metrics
    hooks: HookStore
    tasks: TaskViews
    artifacts: ArtifactStore
    hub: StreamHub
    http: httpx.AsyncClient  # guarded, for the calls the API makes upstream itself
    formats: dict[str, WireFormat] = field(default_factory=registry)
    background: set[asyncio.Task[Any]] = field(default_factory=set)

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> None:
        """Run `work` after the request that asked for it has gone (e.g. cancel on
        disconnect), keeping a reference so it is not collected halfway."""
        task = asyncio.create_task(work, name=f"spool-{name}")
        self.background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("background %s failed: %s", task.get_name(), task.exception())

    def begin_drain(self, loop: asyncio.AbstractEventLoop) -> None:
        """Called from the signal handler: tails end at their next event boundary."""
        loop.call_soon_threadsafe(self.hub.drain)


log = logging.getLogger(__name__)


# Every dependency is a coroutine function: FastAPI runs plain functions in its thread
# pool, a thread hop per request each.


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def cancel_on_disconnect(
    services: ServicesDep,
    x_spool_on_disconnect: Annotated[Literal["cancel", "continue"] | None, Header()] = None,
) -> bool:
    """`X-Spool-On-Disconnect: cancel` cancels the generation when this client goes away;
    the default comes from the `on_disconnect` setting."""
    return (x_spool_on_disconnect or services.settings.on_disconnect) == "cancel"


CancelOnDisconnectDep = Annotated[bool, Depends(cancel_on_disconnect)]


def gemini_route(path: str) -> bool:
    """Whether `path` is one of Gemini's own routes (its API takes the key as `?key=`)."""
    return isinstance(format_for_path(path), GeminiFormat)


def presented_secret(request: Request) -> str | None:
    """The key as each API's clients send it: `Authorization: Bearer` (OpenAI, the simple
    API, the broker routes), `x-api-key` (Anthropic), `x-goog-api-key` or `?key=` (Gemini).
    `?key=` counts only on Gemini's own routes, where Google's clients send it: anywhere
    else a key in a URL ends up in logs and browser histories (follow tokens are for that)."""
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for header in ("x-api-key", "x-goog-api-key"):
        if request.headers.get(header):
            return request.headers[header].strip()
    if not gemini_route(request.url.path):
        return None
    return request.query_params.get("key") or None


CALLER_STATE = "spool_caller"  # where a caller authenticated before its body was read is kept


async def authenticate(request: Request, services: Services) -> ApiKey | None:
    """The caller's key, None when no credentials came, 401 when they are not valid."""
    if not services.settings.auth_enabled:
        return ANONYMOUS
    secret = presented_secret(request)
    if secret is None:
        return None
    key = await services.keys.lookup(secret)
    if key is None:
        raise Unauthenticated("the API key is not valid, or has been revoked")
    return key


async def optional_caller(request: Request, services: ServicesDep) -> ApiKey | None:
    """The caller's key (see `authenticate`), looked up once per request: a request with a
    body was authenticated before the body was read (`api.request_limits`)."""
    known: ApiKey | None = getattr(request.state, CALLER_STATE, None)
    return known if known is not None else await authenticate(request, services)


async def caller(key: Annotated[ApiKey | None, Depends(optional_caller)]) -> ApiKey:
    if key is None:
        raise Unauthenticated(
            "an API key is required: send it as 'Authorization: Bearer <key>' "
            "(or 'x-api-key', 'x-goog-api-key', '?key=')"
        )
    return key


CallerDep = Annotated[ApiKey, Depends(caller)]
OptionalCallerDep = Annotated[ApiKey | None, Depends(optional_caller)]
