"""OpenAI Chat Completions: `POST /v1/chat/completions` (also `/openai/v1/…`, `/v2/…`)."""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import CancelOnDisconnectDep, ServicesDep
from api.generation import new_stream_id, respond, start_generation
from shared.errors import InvalidRequest
from shared.request import MAX_JSON_DEPTH, GenerationRequest, Message, json_depth

router = APIRouter(tags=["openai"])
SURFACE = "openai.chat"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = None


def _text(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidRequest(f"content parts of type {part.type!r} are not supported")
        texts.append(part.text)
    return "".join(texts)


def to_canonical(body: ChatCompletionRequest) -> GenerationRequest:
    if body.n != 1:
        raise InvalidRequest("only n=1 is supported")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if len(stop) > 4:
        raise InvalidRequest("at most 4 stop sequences are allowed")
    for m in body.messages:
        if m.tool_calls is not None and json_depth(m.tool_calls) > MAX_JSON_DEPTH:
            raise InvalidRequest(f"tool_calls are nested deeper than {MAX_JSON_DEPTH} levels")
    messages = [
        Message(
            role="system" if m.role == "developer" else m.role,
            content=_text(m.content),
            name=m.name,
            tool_call_id=m.tool_call_id,
            tool_calls=m.tool_calls,
        )
        for m in body.messages
    ]
    return GenerationRequest(
        model=body.model,
        messages=messages,
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop,
        seed=body.seed,
        user=body.user,
    )


@router.post("/v1/chat/completions")
@router.post("/openai/v1/chat/completions", include_in_schema=False)
@router.post("/v2/chat/completions", include_in_schema=False)
async def chat_completions(
    body: Annotated[ChatCompletionRequest, Body()],
    services: ServicesDep,
    cancel_on_disconnect: CancelOnDisconnectDep,
) -> Response:
    request = to_canonical(body)
    stream_id = new_stream_id()
    include_usage = bool(body.stream and body.stream_options and body.stream_options.include_usage)
    render = {
        "id": f"chatcmpl-{stream_id}",
        "created": int(time.time()),
        "model": body.model,
        "include_usage": include_usage,
    }
    fmt = services.formats[SURFACE]
    record = await start_generation(services, fmt, request, render, stream_id)
    return await respond(
        services, fmt, record, stream=body.stream, cancel_on_disconnect=cancel_on_disconnect
    )
