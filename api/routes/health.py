"""Liveness and readiness."""

from __future__ import annotations

import time

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.responses import Response

from api.deps import ServicesDep
from api.responses import JSONBody
from shared import keys
from shared.redis.clients import ping

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> JSONBody:
    return JSONBody({"status": "ok"})


@router.get("/metrics")
async def metrics(services: ServicesDep) -> Response:
    await services.metrics.refresh(services.control)
    return Response(services.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/readyz")
async def readyz(services: ServicesDep) -> JSONBody:
    try:
        await ping(services.redis)
        workers = await services.control.zcount(keys.WORKERS_KEY, time.time(), "+inf")
    except RedisError:
        return JSONBody({"status": "unavailable", "redis": "unreachable"}, status_code=503)
    ready = workers > 0
    body = {"status": "ok" if ready else "unavailable", "redis": "ok", "workers": workers}
    return JSONBody(body, status_code=200 if ready else 503)
