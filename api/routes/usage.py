"""`GET /v1/usage`: the calling key's token usage, per model and day, and its budget."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CallerDep, ServicesDep
from api.responses import JSONBody
from shared import keys

router = APIRouter(tags=["usage"])


@router.get("/v1/usage")
async def usage(
    services: ServicesDep,
    caller: CallerDep,
    days: Annotated[int | None, Query(ge=1, le=3660)] = None,
) -> JSONBody:
    """Usage by model over the last `days` UTC days (default and at most: as long as usage
    is kept, `usage_retention_days`), and the budget's running total."""
    kept = services.settings.usage_retention_days
    span = min(days or kept, kept)
    now = time.time()
    dates = [time.strftime("%Y-%m-%d", time.gmtime(now - 86400 * back)) for back in range(span)]
    async with services.control.pipeline(transaction=False) as pipe:
        pipe.hmget(keys.usage_key(caller.id), ["total", "reserved"])
        for day in dates:
            pipe.hgetall(keys.daily_usage_key(caller.id, day))
        budget, *daily = await pipe.execute()
    models: dict[str, dict[str, int]] = {}
    for raw in daily:
        for field, value in raw.items():
            model, _, kind = field.decode().rpartition("|")
            if kind in ("input", "output", "requests"):
                counts = models.setdefault(
                    model, {"input_tokens": 0, "output_tokens": 0, "requests": 0}
                )
                counts["requests" if kind == "requests" else f"{kind}_tokens"] += int(value)
    return JSONBody(
        {
            "object": "spool.usage",
            "key_id": caller.id,
            "name": caller.name,
            "budget_tokens": caller.budget_tokens,
            "used_tokens": int(budget[0] or 0),
            "reserved_tokens": max(0, int(budget[1] or 0)),
            "since": dates[-1],
            "models": [{"model": m, **counts} for m, counts in sorted(models.items())],
        }
    )
