"""What route handlers get injected: the per-process services built by the lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import Depends, Header, Request
from redis.asyncio import Redis

from api.formats import WireFormat, registry
from shared.queue import JobQueue
from shared.settings import Settings
from shared.store import StreamStore


@dataclass
class Services:
    settings: Settings
    redis: Redis
    store: StreamStore
    queue: JobQueue
    formats: dict[str, WireFormat] = field(default_factory=registry)
    draining: asyncio.Event = field(default_factory=asyncio.Event)
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
        loop.call_soon_threadsafe(self.draining.set)


log = logging.getLogger(__name__)


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def cancel_on_disconnect(
    services: ServicesDep,
    x_spool_on_disconnect: Annotated[Literal["cancel", "continue"] | None, Header()] = None,
) -> bool:
    """`X-Spool-On-Disconnect: cancel` cancels the generation when this client goes away;
    the default comes from the `on_disconnect` setting."""
    return (x_spool_on_disconnect or services.settings.on_disconnect) == "cancel"


CancelOnDisconnectDep = Annotated[bool, Depends(cancel_on_disconnect)]
