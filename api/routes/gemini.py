"""Gemini: `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` and
`:generateContent` (also under `/gemini/`)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, ServicesDep
from api.generation import serve_generation
from shared.errors import InvalidRequest, RouteNotFound
from shared.request import (
    GenerationRequest,
    Message,
    Tool,
    ToolCall,
    json_text,
)

router = APIRouter(tags=["gemini"])
SURFACE = "gemini"


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class FunctionCall(_Camel):
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class FunctionResponse(_Camel):
    name: str
    response: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class Part(_Camel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    text: str | None = None
    thought: bool | None = None
    function_call: FunctionCall | None = None
    function_response: FunctionResponse | None = None


class Content(_Camel):
    role: Literal["user", "model", "function"] | None = None
    parts: list[Part] = Field(default_factory=list)


class FunctionDeclaration(_Camel):
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    parameters_json_schema: dict[str, Any] | None = None


class GeminiTool(_Camel):
    function_declarations: list[FunctionDeclaration] | None = None


class FunctionCallingConfig(_Camel):
    mode: Literal["AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"] | None = None
    allowed_function_names: list[str] | None = None


class ToolConfig(_Camel):
    function_calling_config: FunctionCallingConfig | None = None


class ThinkingConfig(_Camel):
    include_thoughts: bool | None = None
    thinking_budget: int | None = None


class GenerationConfig(_Camel):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    max_output_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    stop_sequences: list[str] | None = None
    candidate_count: int | None = None
    seed: int | None = Field(default=None, ge=-(2**31), lt=2**31)
    thinking_config: ThinkingConfig | None = None


class GenerateContentRequest(_Camel):
    contents: list[Content] = Field(min_length=1)
    system_instruction: Content | None = None
    tools: list[GeminiTool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None


def _text(parts: list[Part]) -> str:
    for part in parts:
        if part.text is None and part.function_call is None and part.function_response is None:
            kinds = ", ".join(sorted(set(part.model_extra or {}))) or "empty"
            raise InvalidRequest(f"parts of type {kinds} are not supported")
    return "".join(p.text or "" for p in parts if p.text is not None and not p.thought)


def _messages(body: GenerateContentRequest) -> list[Message]:
    out: list[Message] = []
    if body.system_instruction:
        out.append(Message(role="system", content=_text(body.system_instruction.parts)))
    for content in body.contents:
        text = _text(content.parts)
        if content.role == "model":
            calls = []
            for n, part in enumerate(content.parts):
                if part.function_call is not None:
                    call = part.function_call
                    calls.append(
                        ToolCall(
                            id=call.id or f"call_{call.name}_{n}",
                            name=call.name,
                            arguments=json_text(call.args, "functionCall args"),
                        )
                    )
            out.append(Message(role="assistant", content=text, tool_calls=calls or None))
            continue
        for part in content.parts:
            if part.function_response is not None:
                result = part.function_response
                out.append(
                    Message(
                        role="tool",
                        name=result.name,
                        tool_call_id=result.id or result.name,
                        content=json_text(result.response, "functionResponse response"),
                    )
                )
        if text or not any(p.function_response for p in content.parts):
            out.append(Message(role="user", content=text))
    return out


def _tools(body: GenerateContentRequest) -> list[Tool]:
    declarations = [d for t in body.tools or [] for d in t.function_declarations or []]
    tools = []
    for d in declarations:
        schema = d.parameters_json_schema or d.parameters
        tools.append(
            Tool(
                name=d.name, description=d.description, **({"parameters": schema} if schema else {})
            )
        )
    return tools


def _tool_choice(body: GenerateContentRequest) -> str | None:
    config = body.tool_config.function_calling_config if body.tool_config else None
    if config is None or config.mode in (None, "MODE_UNSPECIFIED"):
        return None
    if config.mode == "NONE":
        return "none"
    if config.mode in ("ANY", "VALIDATED"):
        names = config.allowed_function_names or []
        return names[0] if len(names) == 1 else "required"
    return "auto"


def to_canonical(model: str, body: GenerateContentRequest) -> GenerationRequest:
    config = body.generation_config or GenerationConfig()
    if config.candidate_count not in (None, 1):
        raise InvalidRequest("only candidateCount 1 is supported")
    thinking = config.thinking_config
    return GenerationRequest.build(
        model=model,
        messages=_messages(body),
        max_tokens=config.max_output_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        stop=list(config.stop_sequences or []),
        seed=config.seed,
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        reasoning=bool(thinking and thinking.include_thoughts),
        # Gemini's -1 means "dynamic": no fixed budget.
        reasoning_budget=thinking.thinking_budget
        if thinking and thinking.thinking_budget and thinking.thinking_budget > 0
        else None,
    )


@router.post("/v1beta/models/{target}")
@router.post("/gemini/v1beta/models/{target}", include_in_schema=False)
@router.post("/v1/models/{target}", include_in_schema=False)
@router.post("/gemini/v1/models/{target}", include_in_schema=False)
async def generate_content(
    target: Annotated[str, Path(max_length=300)],
    body: Annotated[GenerateContentRequest, Body()],
    services: ServicesDep,
    caller: CallerDep,
    cancel_on_disconnect: CancelOnDisconnectDep,
    alt: Annotated[str | None, Query()] = None,
) -> Response:
    model, _, action = target.rpartition(":")
    if action not in ("generateContent", "streamGenerateContent") or not model:
        raise RouteNotFound(f"no method {action!r}: use :generateContent or :streamGenerateContent")
    stream = action == "streamGenerateContent"
    if stream and alt != "sse":
        raise InvalidRequest("streamGenerateContent is served as Server-Sent Events: add ?alt=sse")
    return await serve_generation(
        services,
        caller,
        SURFACE,
        to_canonical(model, body),
        render=lambda stream_id: {"id": stream_id, "model": model},
        stream=stream,
        cancel_on_disconnect=cancel_on_disconnect,
    )
