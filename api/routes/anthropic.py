"""Anthropic Messages: `POST /v1/messages` (also `/anthropic/v1/messages`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, ServicesDep
from api.generation import serve_generation
from shared.errors import InvalidRequest
from shared.request import (
    GenerationRequest,
    Message,
    Tool,
    ToolCall,
    json_text,
)

router = APIRouter(tags=["anthropic"])
SURFACE = "anthropic.messages"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Block(_Model):
    """A content block. Only the fields of the types Spool carries are read."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[dict[str, Any]] | None = None
    is_error: bool = False


class AnthropicMessage(_Model):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class AnthropicTool(_Model):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})


class ToolChoice(_Model):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None


class Thinking(_Model):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)


class MessagesRequest(_Model):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int = Field(ge=1, le=10_000_000)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[Block] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stream: bool = False
    thinking: Thinking | None = None


def _text_of(content: str | list[dict[str, Any]] | list[Block] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for block in content:
        kind = block.type if isinstance(block, Block) else block.get("type")
        text = block.text if isinstance(block, Block) else block.get("text")
        if kind != "text":
            raise InvalidRequest(f"content blocks of type {kind!r} are not supported here")
        if text is not None and not isinstance(text, str):
            raise InvalidRequest("a text block's text must be a string")
        texts.append(text or "")
    return "".join(texts)


def _messages(body: MessagesRequest) -> list[Message]:
    out: list[Message] = []
    if body.system:
        out.append(Message(role="system", content=_text_of(body.system)))
    tool_names: dict[str, str] = {}
    for turn in body.messages:
        if isinstance(turn.content, str):
            out.append(Message(role=turn.role, content=turn.content))
            continue
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in turn.content:
            if block.type == "text":
                texts.append(block.text or "")
            elif block.type == "tool_use" and turn.role == "assistant":
                call_id, name = block.id or "", block.name or ""
                tool_names[call_id] = name
                calls.append(
                    ToolCall(
                        id=call_id,
                        name=name,
                        arguments=json_text(block.input or {}, "tool_use input"),
                    )
                )
            elif block.type == "tool_result" and turn.role == "user":
                call_id = block.tool_use_id or ""
                content = _text_of(block.content)
                if block.is_error:
                    content = f"error: {content}"
                out.append(
                    Message(
                        role="tool",
                        content=content,
                        tool_call_id=call_id,
                        name=tool_names.get(call_id),
                    )
                )
            elif block.type in ("thinking", "redacted_thinking"):
                continue  # earlier reasoning is not sent back upstream
            else:
                raise InvalidRequest(f"content blocks of type {block.type!r} are not supported")
        if texts or calls:
            out.append(Message(role=turn.role, content="".join(texts), tool_calls=calls or None))
    return out


def to_canonical(body: MessagesRequest) -> GenerationRequest:
    tools = body.tools or []
    choice: str | None = None
    if body.tool_choice is not None:
        choice = {"auto": "auto", "any": "required", "none": "none"}.get(body.tool_choice.type)
        if body.tool_choice.type == "tool":
            if not body.tool_choice.name:
                raise InvalidRequest("tool_choice.name is required when type is 'tool'")
            choice = body.tool_choice.name
    thinking = body.thinking is not None and body.thinking.type != "disabled"
    return GenerationRequest.build(
        model=body.model,
        messages=_messages(body),
        max_tokens=body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        stop=list(body.stop_sequences or []),
        tools=[
            Tool(name=t.name, description=t.description, parameters=t.input_schema) for t in tools
        ],
        tool_choice=choice,
        reasoning=thinking,
        reasoning_budget=body.thinking.budget_tokens if body.thinking and thinking else None,
    )


@router.post("/v1/messages")
@router.post("/anthropic/v1/messages", include_in_schema=False)
async def messages(
    body: Annotated[MessagesRequest, Body()],
    services: ServicesDep,
    caller: CallerDep,
    cancel_on_disconnect: CancelOnDisconnectDep,
) -> Response:
    return await serve_generation(
        services,
        caller,
        SURFACE,
        to_canonical(body),
        render=lambda stream_id: {"id": f"msg_{stream_id}", "model": body.model},
        stream=body.stream,
        cancel_on_disconnect=cancel_on_disconnect,
    )
