"""OpenAI Chat Completions: `POST /v1/chat/completions` (also `/openai/v1/…`, `/v2/…`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, ServicesDep
from api.generation import serve_generation
from shared.errors import InvalidRequest
from shared.request import GenerationRequest, Message, Tool, ToolCall

router = APIRouter(tags=["openai"])
SURFACE = "openai.chat"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ContentPart(_Strict):
    model_config = ConfigDict(strict=True, extra="allow")
    type: str
    text: str | None = None


class FunctionCall(_Strict):
    name: str
    arguments: str = "{}"


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallIn] | None = None


class FunctionDefinition(_Strict):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolDefinition(_Strict):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedToolChoice(_Strict):
    type: Literal["function"] = "function"
    function: dict[str, str]


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
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None


def message_text(content: str | list[ContentPart] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part in content:
        if part.type != "text" or part.text is None:
            raise InvalidRequest(f"content parts of type {part.type!r} are not supported")
        texts.append(part.text)
    return "".join(texts)


def stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise InvalidRequest("at most 4 stop sequences are allowed")
    return stops


def _message(m: ChatMessage) -> Message:
    calls = None
    if m.tool_calls:
        calls = [
            ToolCall(id=c.id, name=c.function.name, arguments=c.function.arguments)
            for c in m.tool_calls
        ]
    return Message(
        role="system" if m.role == "developer" else m.role,
        content=message_text(m.content),
        name=m.name,
        tool_call_id=m.tool_call_id,
        tool_calls=calls,
    )


def _tools(body: ChatCompletionRequest) -> list[Tool]:
    tools = body.tools or []
    return [
        Tool(
            name=t.function.name,
            description=t.function.description,
            **({"parameters": t.function.parameters} if t.function.parameters else {}),
        )
        for t in tools
    ]


def openai_render(
    id_prefix: str, model: str, stream: bool, options: StreamOptions | None
) -> Callable[[str], dict[str, Any]]:
    """Render options shared by OpenAI's chat and completions formats."""
    include_usage = bool(stream and options and options.include_usage)
    created = int(time.time())
    return lambda stream_id: {
        "id": f"{id_prefix}{stream_id}",
        "created": created,
        "model": model,
        "include_usage": include_usage,
    }


def to_canonical(body: ChatCompletionRequest) -> GenerationRequest:
    if body.n != 1:
        raise InvalidRequest("only n=1 is supported")
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        name = choice.function.get("name")
        if not name:
            raise InvalidRequest("tool_choice.function.name is required")
        choice_name: str | None = name
    else:
        choice_name = choice
    return GenerationRequest.build(
        model=body.model,
        messages=[_message(m) for m in body.messages],
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=stop_list(body.stop),
        seed=body.seed,
        user=body.user,
        tools=_tools(body),
        tool_choice=choice_name,
        reasoning=body.reasoning_effort is not None and body.reasoning_effort != "minimal",
    )


@router.post("/v1/chat/completions")
@router.post("/openai/v1/chat/completions", include_in_schema=False)
@router.post("/v2/chat/completions", include_in_schema=False)
async def chat_completions(
    body: Annotated[ChatCompletionRequest, Body()],
    services: ServicesDep,
    caller: CallerDep,
    cancel_on_disconnect: CancelOnDisconnectDep,
) -> Response:
    return await serve_generation(
        services,
        caller,
        SURFACE,
        to_canonical(body),
        render=openai_render("chatcmpl-", body.model, body.stream, body.stream_options),
        stream=body.stream,
        cancel_on_disconnect=cancel_on_disconnect,
    )
