"""`GET /v1/models`: the model table in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CallerDep, ServicesDep
from api.responses import JSONBody
from shared.errors import ModelNotFound
from shared.settings import ModelEntry

router = APIRouter(tags=["models"])


def model_object(name: str, entry: ModelEntry) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": entry.provider}


@router.get("/v1/models")
@router.get("/openai/v1/models", include_in_schema=False)
@router.get("/v2/models", include_in_schema=False)
async def list_models(services: ServicesDep, caller: CallerDep) -> JSONBody:
    data = [model_object(n, e) for n, e in sorted(services.settings.models.items())]
    return JSONBody({"object": "list", "data": data})


@router.get("/v1/models/{model:path}")
async def get_model(model: str, services: ServicesDep, caller: CallerDep) -> JSONBody:
    entry = services.settings.models.get(model)
    if entry is None:
        raise ModelNotFound(f"the model {model!r} does not exist")
    return JSONBody(model_object(model, entry))
