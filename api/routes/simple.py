"""The simple token API: `POST /api/chat` with `{message, model, stream}`."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, ServicesDep
from api.generation import serve_generation
from shared.request import GenerationRequest, Message

router = APIRouter(tags=["simple"])
SURFACE = "simple"


class SimpleChatRequest(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    message: str = Field(min_length=1)
    model: str = Field(default="demo", min_length=1, max_length=256)
    stream: bool = True
    system: str | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=10_000_000)


@router.post("/api/chat")
async def simple_chat(
    body: Annotated[SimpleChatRequest, Body()],
    services: ServicesDep,
    caller: CallerDep,
    cancel_on_disconnect: CancelOnDisconnectDep,
) -> Response:
    messages = [Message(role="system", content=body.system)] if body.system else []
    messages.append(Message(role="user", content=body.message))
    request = GenerationRequest.build(
        model=body.model, messages=messages, max_tokens=body.max_tokens
    )
    created_at = time.time()
    return await serve_generation(
        services,
        caller,
        SURFACE,
        request,
        render=lambda stream_id: {"id": stream_id, "model": body.model, "created_at": created_at},
        stream=body.stream,
        cancel_on_disconnect=cancel_on_disconnect,
    )
