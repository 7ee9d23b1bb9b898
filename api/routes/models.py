"""`GET /v1/models`: the models the caller may use, in OpenAI's list shape."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from api.deps import CallerDep, ServicesDep
from api.generation import model_not_permitted
from api.responses import JSONBody
from shared.errors import ModelNotFound
from shared.model_table import ModelEntry, ModelGroup, TableModel

router = APIRouter(tags=["models"])


def model_object(name: str, entry: TableModel) -> dict[str, Any]:
    """A model in OpenAI's shape; a group is owned by its first deployment's provider,
    an auto-router by Spool."""
    if isinstance(entry, ModelGroup):
        entry = entry.deployments[0]
    owner = entry.provider if isinstance(entry, ModelEntry) else "spool"
    return {"id": name, "object": "model", "created": 0, "owned_by": owner}


@router.get("/v1/models")
@router.get("/openai/v1/models", include_in_schema=False)
@router.get("/v2/models", include_in_schema=False)
async def list_models(services: ServicesDep, caller: CallerDep) -> JSONBody:
    models = sorted(services.settings.models.items())
    data = [model_object(n, e) for n, e in models if caller.may_use(n)]
    return JSONBody({"object": "list", "data": data})


@router.get("/v1/models/{model:path}")
async def get_model(model: str, services: ServicesDep, caller: CallerDep) -> JSONBody:
    if not caller.may_use(model):
        raise model_not_permitted(model)
    entry = services.settings.models.get(model)
    if entry is None:
        raise ModelNotFound(f"the model {model!r} does not exist")
    return JSONBody(model_object(model, entry))
