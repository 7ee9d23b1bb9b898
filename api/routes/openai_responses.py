"""OpenAI Responses: `POST /v1/responses` (also `/openai/v1/…`) with background mode, and
the stored response's routes: retrieve (and stream or resume by sequence number), cancel,
delete and its input items."""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Header, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, OptionalCallerDep, Services, ServicesDep
from api.formats.openai_responses import RESPONSE_PREFIX, SURFACE, ResponsesRenderer
from api.generation import serve_generation
from api.response_items import answer, to_items, to_messages
from api.responses import JSONBody
from api.routes.streams import load
from api.tail import Tail, wait_for_transcript
from shared.auth import ApiKey
from shared.errors import (
    GenerationTimeout,
    InvalidRequest,
    StreamExpired,
    StreamNotFound,
)
from shared.request import GenerationRequest, McpSelection, Message, ResponseFormat, Tool
from shared.store import JobRecord

router = APIRouter(tags=["openai"])
PROTOCOL = "responses"
# `include` values Spool honours; the others concern hosted tools it does not run.
INCLUDES = frozenset({"reasoning.encrypted_content", "message.output_text.logprobs"})
# How long a cancel waits for the response to end, so it can answer with the end.
CANCEL_WAIT_S = 5.0

ResponseId = Annotated[str, Path(max_length=64)]


class ResponseNotFound(StreamNotFound):
    """No response with that id exists."""

    code = "response_not_found"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ReasoningIn(_Strict):
    effort: Literal["minimal", "low", "medium", "high"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class TextFormatIn(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(default=None, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextIn(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")

    format: TextFormatIn | None = None


class StreamOptionsIn(_Strict):
    include_obfuscation: bool | None = None  # Spool never pads its events


class ResponsesRequest(BaseModel):
    # Fields Spool does not model are kept (`model_extra`) and passed on verbatim to
    # Responses API upstreams; other providers refuse them by name.
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1, max_length=256)
    input: str | list[Any] = Field(min_length=1)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: ReasoningIn | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    text: TextIn | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    service_tier: str | None = None
    store: bool | None = None
    stream: bool = False
    stream_options: StreamOptionsIn | None = None
    background: bool = False
    previous_response_id: str | None = Field(default=None, max_length=64)
    include: list[str] | None = None
    drop_params: bool = False


def _mcp(tool: dict[str, Any], i: int) -> McpSelection:
    """An `mcp` tool: a configured MCP server named by its `server_label` (Spool runs no
    server a request names by URL, and asks no approvals)."""
    label = tool.get("server_label")
    if not isinstance(label, str) or not label:
        raise InvalidRequest(f"tools[{i}].server_label must name a configured MCP server")
    for name in ("server_url", "connector_id", "authorization", "headers"):
        if tool.get(name) is not None:
            raise InvalidRequest(
                f"tools[{i}].{name}: Spool runs only its configured MCP servers, with their own "
                "addresses and credentials; name one by server_label"
            )
    if tool.get("require_approval", "never") != "never":
        raise InvalidRequest(f"tools[{i}].require_approval: approvals are not supported: use never")
    allowed = tool.get("allowed_tools")
    if isinstance(allowed, dict):
        allowed = allowed.get("tool_names")
    if allowed is not None and not (
        isinstance(allowed, list) and all(isinstance(t, str) for t in allowed)
    ):
        raise InvalidRequest(f"tools[{i}].allowed_tools must be a list of tool names")
    return McpSelection(server=label, allowed_tools=allowed)


def _mcp_tools(tools: list[dict[str, Any]] | None) -> list[McpSelection]:
    return [_mcp(tool, i) for i, tool in enumerate(tools or []) if tool.get("type") == "mcp"]


def _tools(tools: list[dict[str, Any]] | None) -> list[Tool]:
    out = []
    for i, tool in enumerate(tools or []):
        kind = tool.get("type")
        if kind == "mcp":
            continue  # see _mcp_tools
        if kind != "function":
            raise InvalidRequest(
                f"tools[{i}]: the {kind!r} tool is not supported: Spool runs function tools, "
                "whose calls come back to the client"
            )
        name = tool.get("name")
        if not isinstance(name, str) or not 1 <= len(name) <= 128:
            raise InvalidRequest(f"tools[{i}].name must be a string of 1 to 128 characters")
        description, parameters = tool.get("description"), tool.get("parameters")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest(f"tools[{i}].description must be a string")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"tools[{i}].parameters must be an object")
        fields: dict[str, Any] = {"name": name, "description": description}
        if parameters:
            fields["parameters"] = parameters
        out.append(Tool(**fields))
    return out


def _tool_choice(choice: str | dict[str, Any] | None) -> str | None:
    if choice is None or choice in ("auto", "none", "required"):
        return choice if isinstance(choice, str) or choice is None else None
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("tool_choice.name is required")
        return name
    kind = choice.get("type") if isinstance(choice, dict) else choice
    raise InvalidRequest(
        f"tool_choice {kind!r} is not supported: use auto, none, required or a function"
    )


def _text_format(text: TextIn | None) -> ResponseFormat | None:
    fmt = text.format if text is not None else None
    if fmt is None:
        return None
    if fmt.type != "json_schema":
        return ResponseFormat(type=fmt.type)
    if not fmt.name or fmt.schema_ is None:
        raise InvalidRequest("text.format of type json_schema needs its name and schema")
    return ResponseFormat(
        type="json_schema",
        name=fmt.name,
        description=fmt.description,
        json_schema=fmt.schema_,
        strict=fmt.strict,
    )


def _include(body: ResponsesRequest) -> frozenset[str]:
    include = frozenset(body.include or ())
    unknown = sorted(include - INCLUDES)
    if unknown:
        raise InvalidRequest(f"include values not supported: {', '.join(unknown)}")
    return include


def to_canonical(body: ResponsesRequest, history: list[Message]) -> GenerationRequest:
    """The canonical request, its conversation being `history` (a previous response's)
    followed by this request's instructions and input."""
    messages = to_messages(body.input, body.instructions)
    if history:
        at = 1 if body.instructions else 0
        messages[at:at] = history
    include = _include(body)
    reasoning = body.reasoning
    effort = reasoning.effort if reasoning else None
    summary = (reasoning.summary or reasoning.generate_summary) if reasoning else None
    logprobs = "message.output_text.logprobs" in include or body.top_logprobs is not None
    extra = dict(body.model_extra or {})
    if body.text is not None and body.text.model_extra:
        extra["text"] = dict(body.text.model_extra)  # text.verbosity and such
    return GenerationRequest.build(
        model=body.model,
        messages=messages,
        max_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        logprobs=logprobs or None,
        top_logprobs=body.top_logprobs,
        user=body.user,
        metadata=body.metadata,
        service_tier=body.service_tier,
        tools=_tools(body.tools),
        mcp=_mcp_tools(body.tools),
        tool_choice=_tool_choice(body.tool_choice),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=_text_format(body.text),
        reasoning=(effort is not None and effort != "minimal") or summary is not None,
        reasoning_effort=effort,
        protocol=PROTOCOL,
        extra=extra,
        drop_params=body.drop_params,
    )


def _echo(body: ResponsesRequest) -> dict[str, Any]:
    """The request's settings as every response object repeats them."""
    reasoning = body.reasoning
    text_format = body.text.format if body.text and body.text.format else None
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": body.parallel_tool_calls is not False,
        "previous_response_id": body.previous_response_id,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
        },
        "store": body.store is not False,
        "temperature": body.temperature,
        "text": {
            "format": text_format.model_dump(by_alias=True, exclude_none=True)
            if text_format
            else {"type": "text"}
        },
        "tool_choice": body.tool_choice or "auto",
        "tools": body.tools or [],
        "top_logprobs": body.top_logprobs,
        "top_p": body.top_p,
        "truncation": "disabled",
        "user": body.user,
        "service_tier": body.service_tier,
    }


def _render(body: ResponsesRequest, input_from: int) -> Any:
    include = _include(body)
    created = int(time.time())

    def render(stream_id: str) -> dict[str, Any]:
        return {
            "id": RESPONSE_PREFIX + stream_id,
            "created_at": created,
            "model": body.model,
            "background": body.background,
            "store": body.store is not False,
            "logprobs": "message.output_text.logprobs" in include,
            "encrypted_reasoning": "reasoning.encrypted_content" in include,
            "input_from": input_from,
            "echo": _echo(body),
        }

    return render


def _not_found(response_id: str) -> ResponseNotFound:
    return ResponseNotFound(f"no response with id {response_id!r}")


async def load_response(
    services: Services, response_id: str, caller: ApiKey | None, follow_token: str | None = None
) -> JobRecord:
    """A stored response the caller may see; 404 for any other id, in the Responses shape."""
    stream_id = response_id.removeprefix(RESPONSE_PREFIX)
    try:
        record = await load(services, stream_id, caller, follow_token)
    except StreamExpired:
        raise
    except StreamNotFound:
        raise _not_found(response_id) from None
    if record.surface != SURFACE or record.render.get("store") is False:
        raise _not_found(response_id)
    return record


async def _history(services: Services, caller: ApiKey, previous_id: str) -> list[Message]:
    """The conversation a follow-up continues: the previous response's (without its
    instructions, which do not carry over) and its answer."""
    try:
        previous = await load_response(services, previous_id, caller)
    except (StreamNotFound, StreamExpired):
        raise InvalidRequest(f"previous response with id {previous_id!r} not found") from None
    if not previous.status.terminal:
        raise InvalidRequest(f"previous response {previous_id!r} has not finished yet")
    transcript = await services.store.transcript(previous)
    if transcript.error is not None:
        raise InvalidRequest(f"previous response {previous_id!r} failed: nothing to continue")
    messages = [Message.model_validate(m) for m in previous.request["request"]["messages"]]
    if previous.render.get("echo", {}).get("instructions"):
        messages = messages[1:]
    return messages + answer(transcript)


@router.post("/v1/responses")
@router.post("/openai/v1/responses", include_in_schema=False)
async def create_response(
    body: Annotated[ResponsesRequest, Body()],
    services: ServicesDep,
    caller: CallerDep,
    cancel_on_disconnect: CancelOnDisconnectDep,
) -> Response:
    if body.background and body.store is False:
        raise InvalidRequest("background responses are stored: store=false cannot go with it")
    history = []
    if body.previous_response_id is not None:
        history = await _history(services, caller, body.previous_response_id)
    request = to_canonical(body, history)
    input_from = len(history) + (1 if body.instructions else 0)
    return await serve_generation(
        services,
        caller,
        SURFACE,
        request,
        render=_render(body, input_from),
        stream=body.stream,
        cancel_on_disconnect=cancel_on_disconnect and not body.background,
        detach=body.background,
    )


@router.get("/v1/responses/{response_id}")
@router.get("/openai/v1/responses/{response_id}", include_in_schema=False)
async def retrieve_response(
    response_id: ResponseId,
    services: ServicesDep,
    caller: OptionalCallerDep,
    stream: bool = False,
    starting_after: Annotated[str | None, Query(max_length=64)] = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    follow_token: Annotated[str | None, Query(max_length=128)] = None,
) -> Response:
    """The response object; with `stream=true`, its events from the start, or after
    `starting_after` (or the `Last-Event-ID` header)."""
    record = await load_response(services, response_id, caller, follow_token)
    fmt = services.formats[SURFACE]
    if stream:
        resume = starting_after if starting_after is not None else last_event_id
        tail = Tail(services, record, fmt)
        return tail.response(await tail.prepare(resume))
    return JSONBody(fmt.response(record, await services.store.transcript(record)))


async def _cancel(services: Services, record: JobRecord) -> JobRecord:
    """Cancel a response and wait (a few seconds at most) for it to end; the record as
    it is then."""
    await services.store.request_cancel(record.id)
    with contextlib.suppress(GenerationTimeout):
        await wait_for_transcript(services.hub, record, CANCEL_WAIT_S)
    return await services.store.get(record.id)


@router.post("/v1/responses/{response_id}/cancel")
@router.post("/openai/v1/responses/{response_id}/cancel", include_in_schema=False)
async def cancel_response(
    response_id: ResponseId, services: ServicesDep, caller: CallerDep
) -> JSONBody:
    """Cancel (idempotent) and answer with the response as it ended, or as it is when it
    has not ended within a few seconds."""
    record = await _cancel(services, await load_response(services, response_id, caller))
    fmt = services.formats[SURFACE]
    return JSONBody(fmt.response(record, await services.store.transcript(record)))


@router.delete("/v1/responses/{response_id}")
@router.delete("/openai/v1/responses/{response_id}", include_in_schema=False)
async def delete_response(
    response_id: ResponseId, services: ServicesDep, caller: CallerDep
) -> JSONBody:
    """Forget a response; one still running is cancelled first."""
    record = await load_response(services, response_id, caller)
    if not record.status.terminal:
        record = await _cancel(services, record)
    await services.store.delete(record.id, [ResponsesRenderer.state_tag])
    return JSONBody({"id": record.render["id"], "object": "response", "deleted": True})


@router.get("/v1/responses/{response_id}/input_items")
@router.get("/openai/v1/responses/{response_id}/input_items", include_in_schema=False)
async def list_input_items(
    response_id: ResponseId,
    services: ServicesDep,
    caller: OptionalCallerDep,
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: Annotated[str | None, Query(max_length=128)] = None,
    follow_token: Annotated[str | None, Query(max_length=128)] = None,
) -> JSONBody:
    """The items this response was given as input (a previous response's are that
    response's), in OpenAI's list shape, paged by item id."""
    record = await load_response(services, response_id, caller, follow_token)
    messages = [Message.model_validate(m) for m in record.request["request"]["messages"]]
    items = to_items(messages[record.render.get("input_from", 0) :], record.id)
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"after: {after!r} is not an input item of {response_id}")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return JSONBody(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )
