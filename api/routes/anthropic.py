"""Anthropic Messages: `POST /v1/messages` (also `/anthropic/v1/messages`)."""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, ServicesDep
from api.generation import serve_generation
from shared.errors import InvalidRequest
from shared.media import MediaKind, media_part
from shared.request import (
    ContentPart,
    GenerationRequest,
    McpSelection,
    Message,
    ResponseFormat,
    Thinking,
    Tool,
    ToolCall,
    json_text,
    message,
)
from shared.settings import McpServer

router = APIRouter(tags=["anthropic"])
SURFACE = "anthropic.messages"
# The name a structured output's schema goes by (Anthropic's format has none).
OUTPUT_NAME = "output"


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Source(BaseModel):
    """Where an image's or a document's bytes are: `base64` (`media_type`, `data`), `url`,
    or, for documents, `text` (`data` is the plain text itself)."""

    model_config = ConfigDict(extra="allow")

    type: str
    media_type: str | None = None
    data: str | None = None
    url: str | None = None


class Block(BaseModel):
    """A content block. Only the fields of the types Spool carries are read."""

    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None
    id: str | None = None
    name: str | None = None
    input: dict[str, Any] | None = None
    tool_use_id: str | None = None
    content: str | list[Block] | None = None
    is_error: bool = False
    source: Source | str | None = None  # a string in block types Spool does not carry
    title: str | None = None
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None
    cache_control: dict[str, Any] | None = None


class AnthropicMessage(_Model):
    role: Literal["user", "assistant"]
    content: str | list[Block]


class AnthropicTool(_Model):
    type: str | None = None  # "custom", or one of Anthropic's server tools
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    input_schema: dict[str, Any] = Field(default_factory=lambda: {"type": "object"})
    cache_control: dict[str, Any] | None = None


class ToolChoice(_Model):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingConfig(_Model):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)


class OutputFormat(_Model):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(_Model):
    format: OutputFormat | None = None
    effort: str | None = None


class Metadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    user_id: str | None = None


class MessagesBody(BaseModel):
    """What a Messages request and a token count share. Fields Spool does not model are
    kept (`model_extra`) and go verbatim to an Anthropic upstream."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[AnthropicMessage] = Field(min_length=1)
    system: str | list[Block] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_format: OutputFormat | None = None  # the beta form of output_config.format
    output_config: OutputConfig | None = None


class McpToolConfiguration(_Model):
    enabled: bool = True
    allowed_tools: list[str] | None = None


class McpServerIn(BaseModel):
    """An `mcp_servers` entry: on Spool, the name of a configured MCP server (which the
    worker runs the tools of); its `url`, if given, must be that server's."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["url"] = "url"
    name: str = Field(min_length=1, max_length=128)
    url: str | None = None
    tool_configuration: McpToolConfiguration | None = None


class MessagesRequest(MessagesBody):
    max_tokens: int = Field(ge=1, le=10_000_000)
    stop_sequences: list[str] | None = None
    temperature: float | None = Field(default=None, ge=0, le=1)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    metadata: Metadata | None = None
    service_tier: str | None = Field(default=None, max_length=64)
    stream: bool = False
    mcp_servers: list[McpServerIn] | None = Field(default=None, max_length=16)


def _mcp(servers: list[McpServerIn], configured: dict[str, McpServer]) -> list[McpSelection]:
    selections = []
    for i, server in enumerate(servers):
        known = configured.get(server.name)
        if known is None:
            raise InvalidRequest(
                f"mcp_servers[{i}]: no MCP server named {server.name!r} is configured"
            )
        if server.url is not None and server.url != known.url:
            raise InvalidRequest(
                f"mcp_servers[{i}].url: Spool runs only its configured MCP servers; "
                f"name one, and leave out url or give its own"
            )
        config = server.tool_configuration or McpToolConfiguration()
        if config.enabled:
            selections.append(McpSelection(server=server.name, allowed_tools=config.allowed_tools))
    return selections


# --- content -------------------------------------------------------------------------------

MEDIA_SOURCES = {"image": ("base64", "url"), "document": ("base64", "url", "text")}


def _media(block: Block, what: str) -> ContentPart:
    """An image or document block as a media part."""
    kind: MediaKind = "image" if block.type == "image" else "document"
    source = block.source
    if not isinstance(source, Source):
        raise InvalidRequest(f"{what} needs a source object")
    if source.type not in MEDIA_SOURCES[kind]:
        raise InvalidRequest(
            f"{what}: {kind} sources of type {source.type!r} are not supported "
            f"(supported: {', '.join(MEDIA_SOURCES[kind])})"
        )
    fields: dict[str, Any] = {"cache_control": block.cache_control}
    if kind == "document":
        fields["name"] = block.title
    if source.type == "url":
        # Anthropic takes documents by URL as PDFs only.
        media_type = "application/pdf" if kind == "document" else None
        return media_part(kind, what, url=source.url, media_type=media_type, **fields)
    if source.type == "text":
        if source.data is None:
            raise InvalidRequest(f"{what} has a text source without data")
        data = base64.b64encode(source.data.encode("utf-8", "replace")).decode()
        return media_part(kind, what, data=data, media_type="text/plain", **fields)
    return media_part(kind, what, data=source.data, media_type=source.media_type, **fields)


def _part(block: Block, what: str) -> ContentPart:
    """A text, image or document block as a content part."""
    if block.type == "text":
        return ContentPart(type="text", text=block.text or "", cache_control=block.cache_control)
    return _media(block, what)


def _parts(blocks: list[Block], what: str, allowed: tuple[str, ...]) -> list[ContentPart]:
    """Blocks of the `allowed` types as content parts; other types are a 400."""
    parts: list[ContentPart] = []
    for b, block in enumerate(blocks):
        where = f"{what}[{b}] ({block.type})"
        if block.type not in allowed:
            raise InvalidRequest(
                f"{where}: content blocks of type {block.type!r} are not supported here"
            )
        parts.append(_part(block, where))
    return parts


CONTENT = ("text", "image", "document")


def _tool_result(block: Block, what: str, name: str | None) -> Message:
    content = block.content
    if isinstance(content, list):
        parts = _parts(content, f"{what}.content", CONTENT)
    else:
        parts = [ContentPart(type="text", text=content or "")]
    if block.cache_control is not None and parts:
        # The result's cache breakpoint ends its content.
        parts[-1] = parts[-1].model_copy(update={"cache_control": block.cache_control})
    return message(
        "tool",
        parts,
        tool_call_id=block.tool_use_id or "",
        name=name,
        is_error=True if block.is_error else None,
    )


def _thought(block: Block) -> Thinking:
    if block.type == "redacted_thinking":
        return Thinking(redacted=block.data or "")
    return Thinking(text=block.thinking or "", signature=block.signature)


def _turn(turn: AnthropicMessage, t: int, tool_names: dict[str, str]) -> list[Message]:
    """One Anthropic turn as canonical messages: its tool results, each a tool message,
    then what else it says."""
    if isinstance(turn.content, str):
        return [Message(role=turn.role, content=turn.content)]
    out: list[Message] = []
    parts: list[ContentPart] = []
    calls: list[ToolCall] = []
    thinking: list[Thinking] = []
    for b, block in enumerate(turn.content):
        what = f"messages[{t}].content[{b}]"
        if block.type in CONTENT:
            parts.append(_part(block, f"{what} ({block.type})"))
        elif block.type == "tool_use" and turn.role == "assistant":
            call_id, name = block.id or "", block.name or ""
            tool_names[call_id] = name
            arguments = json_text(block.input or {}, "tool_use input")
            calls.append(ToolCall(id=call_id, name=name, arguments=arguments))
        elif block.type == "tool_result" and turn.role == "user":
            call_id = block.tool_use_id or ""
            out.append(_tool_result(block, what, tool_names.get(call_id)))
        elif block.type in ("thinking", "redacted_thinking") and turn.role == "assistant":
            thinking.append(_thought(block))
        else:
            raise InvalidRequest(
                f"{what}: content blocks of type {block.type!r} are not supported in "
                f"{turn.role} turns"
            )
    if parts or calls or thinking:
        out.append(message(turn.role, parts, tool_calls=calls or None, thinking=thinking or None))
    return out


def _system(system: str | list[Block] | None) -> list[Message]:
    if not system:
        return []
    if isinstance(system, str):
        return [Message(role="system", content=system)]
    return [message("system", _parts(system, "system", ("text",)))]


def _messages(body: MessagesBody) -> list[Message]:
    out = _system(body.system)
    tool_names: dict[str, str] = {}
    for t, turn in enumerate(body.messages):
        out += _turn(turn, t, tool_names)
    return out


# --- parameters ----------------------------------------------------------------------------

EFFORTS = ("low", "medium", "high")


def _tools(tools: list[AnthropicTool]) -> list[Tool]:
    out = []
    for t in tools:
        if t.type not in (None, "custom"):
            raise InvalidRequest(f"tools of type {t.type!r} are not supported")
        out.append(
            Tool(
                name=t.name,
                description=t.description,
                parameters=t.input_schema,
                cache_control=t.cache_control,
            )
        )
    return out


def _tool_choice(choice: ToolChoice | None) -> tuple[str | None, bool | None]:
    """The canonical tool choice, and `parallel_tool_calls` (False when disabled)."""
    if choice is None:
        return None, None
    parallel = False if choice.disable_parallel_tool_use else None
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice.name is required when type is 'tool'")
        return choice.name, parallel
    return {"auto": "auto", "any": "required", "none": "none"}[choice.type], parallel


def _output(body: MessagesBody) -> tuple[ResponseFormat | None, str | None]:
    """The response format (`output_config.format`, or the beta `output_format`) and the
    reasoning effort (`output_config.effort`)."""
    config = body.output_config or OutputConfig()
    fmt = config.format or body.output_format
    effort = config.effort
    if effort is not None and effort not in EFFORTS:
        raise InvalidRequest(
            f"output_config.effort {effort!r} is not supported (supported: {', '.join(EFFORTS)})"
        )
    if fmt is None:
        return None, effort
    return ResponseFormat(type="json_schema", name=OUTPUT_NAME, json_schema=fmt.schema_), effort


def _user(metadata: Metadata | None) -> str | None:
    if metadata is None:
        return None
    if metadata.model_extra:
        names = ", ".join(f"metadata.{k}" for k in sorted(metadata.model_extra))
        raise InvalidRequest(f"{names}: not supported (Anthropic's metadata has user_id only)")
    return metadata.user_id


def _extra(body: MessagesBody) -> tuple[dict[str, Any], bool]:
    """The request's fields Spool does not model, and its `drop_params`."""
    extra = dict(body.model_extra or {})
    drop = extra.pop("drop_params", False)
    if not isinstance(drop, bool):
        raise InvalidRequest("drop_params must be a boolean")
    return extra, drop


def to_canonical(body: MessagesBody) -> GenerationRequest:
    choice, parallel = _tool_choice(body.tool_choice)
    response_format, effort = _output(body)
    thinking = body.thinking is not None and body.thinking.type != "disabled"
    extra, drop_params = _extra(body)
    fields: dict[str, Any] = {}
    if isinstance(body, MessagesRequest):
        fields = {
            "max_tokens": body.max_tokens,
            "temperature": body.temperature,
            "top_p": body.top_p,
            "top_k": body.top_k,
            "stop": list(body.stop_sequences or []),
            "user": _user(body.metadata),
            "service_tier": body.service_tier,
        }
    return GenerationRequest.build(
        model=body.model,
        messages=_messages(body),
        tools=_tools(body.tools or []),
        tool_choice=choice,
        parallel_tool_calls=parallel,
        response_format=response_format,
        reasoning=thinking,
        reasoning_budget=body.thinking.budget_tokens if body.thinking and thinking else None,
        reasoning_effort=effort,
        protocol="anthropic",
        extra=extra,
        drop_params=drop_params,
        **fields,
    )


@router.post("/v1/messages")
@router.post("/anthropic/v1/messages", include_in_schema=False)
async def messages(
    body: Annotated[MessagesRequest, Body()],
    services: ServicesDep,
    caller: CallerDep,
    cancel_on_disconnect: CancelOnDisconnectDep,
) -> Response:
    request = to_canonical(body)
    if body.mcp_servers:
        selections = _mcp(body.mcp_servers, services.settings.mcp_servers)
        request = request.model_copy(update={"mcp": selections})
    return await serve_generation(
        services,
        caller,
        SURFACE,
        request,
        render=lambda stream_id: {"id": f"msg_{stream_id}", "model": body.model},
        stream=body.stream,
        cancel_on_disconnect=cancel_on_disconnect,
    )
