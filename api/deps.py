"""What route handlers get injected: the per-process services built by the lifespan."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
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


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]
