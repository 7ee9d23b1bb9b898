"""OpenAI embeddings: `POST /v1/embeddings` (also `/openai/v1/…`, `/v2/…`)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field

from api.deps import CallerDep, Services, ServicesDep
from api.embeddings import (
    EmbeddingsCall,
    EncodingFormat,
    check_inputs,
    embed,
    input_list,
    response_body,
)
from api.generation import resolve_model
from api.responses import JSONBody
from shared.auth import ApiKey
from shared.errors import BudgetExhausted, InvalidRequest, RateLimited

router = APIRouter(tags=["openai"])


class EmbeddingsRequest(BaseModel):
    """OpenAI's embeddings request. Fields it does not name go to an OpenAI-compatible
    upstream as sent; any other provider refuses them."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: EncodingFormat | None = None
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    user: str | None = None


def to_call(body: EmbeddingsRequest, max_chars: int) -> EmbeddingsCall:
    inputs = input_list(body.input)
    check_inputs(inputs, max_chars)
    sent = body.model_dump(include={"encoding_format", "dimensions", "user"}, exclude_unset=True)
    return EmbeddingsCall(
        model=body.model,
        raw_input=body.input,
        inputs=inputs,
        encoding_format=body.encoding_format or "float",
        dimensions=body.dimensions,
        sent=sent,
        extra=dict(body.model_extra or {}),
    )


async def admit(services: Services, caller: ApiKey, request_id: str) -> None:
    """The key's rate and concurrency limits (and budget) for one embeddings request."""
    try:
        await services.admission.admit(caller, request_id)
    except (RateLimited, BudgetExhausted) as refused:
        reason = "budget" if isinstance(refused, BudgetExhausted) else "limit"
        services.metrics.refused.labels(reason).inc()
        raise


@router.post("/v1/embeddings")
@router.post("/openai/v1/embeddings", include_in_schema=False)
@router.post("/v2/embeddings", include_in_schema=False)
async def embeddings(
    body: Annotated[EmbeddingsRequest, Body()], services: ServicesDep, caller: CallerDep
) -> JSONBody:
    """Vectors for the input, from the model's provider (the demo's are deterministic);
    the input tokens are charged to the key's usage."""
    call = to_call(body, services.settings.max_string_chars)
    entry = resolve_model(services.settings, body.model, caller)
    if entry.provider not in ("demo", "openai", "gemini"):
        raise InvalidRequest(f"model {body.model!r} has no embeddings")
    if call.extra and entry.provider != "openai":
        raise InvalidRequest(
            f"unknown fields: {', '.join(sorted(call.extra))} (the {entry.provider} provider "
            f"behind model {body.model!r} takes only OpenAI's embeddings fields)"
        )
    request_id = uuid.uuid4().hex
    await admit(services, caller, request_id)
    tokens = 0
    try:
        result = await embed(services.http, call, entry)
        tokens = result.prompt_tokens
    finally:
        await services.admission.charge(caller, request_id, body.model, tokens)
    return JSONBody(response_body(call, result))
