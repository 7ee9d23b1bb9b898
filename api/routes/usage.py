"""`GET /v1/usage`: the calling key's token usage, per model, and its budget."""

from __future__ import annotations

from fastapi import APIRouter

from api.deps import CallerDep, ServicesDep
from api.responses import JSONBody
from shared import keys

router = APIRouter(tags=["usage"])


@router.get("/v1/usage")
async def usage(services: ServicesDep, caller: CallerDep) -> JSONBody:
    raw: dict[bytes, bytes] = await services.redis.hgetall(keys.usage_key(caller.id))  # type: ignore[misc]
    models: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        model, _, kind = field.decode().rpartition("|")
        if kind in ("input", "output"):
            models.setdefault(model, {"input_tokens": 0, "output_tokens": 0})[f"{kind}_tokens"] = (
                int(value)
            )
    return JSONBody(
        {
            "object": "spool.usage",
            "key_id": caller.id,
            "name": caller.name,
            "budget_tokens": caller.budget_tokens,
            "used_tokens": int(raw.get(b"total", 0)),
            "models": [{"model": m, **counts} for m, counts in sorted(models.items())],
        }
    )
