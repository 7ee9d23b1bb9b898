"""Gemini: `POST /v1beta/models/{model}:streamGenerateContent?alt=sse` and
`:generateContent` (also under `/gemini/`)."""

from __future__ import annotations

from collections import defaultdict, deque
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Path, Query
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, ServicesDep
from api.generation import serve_generation
from shared.errors import InvalidRequest, RouteNotFound
from shared.media import MediaKind, media_part
from shared.request import (
    ContentPart,
    GenerationRequest,
    Message,
    ResponseFormat,
    Thinking,
    Tool,
    ToolCall,
    json_text,
    message,
)

router = APIRouter(tags=["gemini"])
SURFACE = "gemini"
THINKING_LEVELS = frozenset({"minimal", "low", "medium", "high"})
RESPONSE_MIME_TYPES = frozenset({"text/plain", "application/json"})
_URL_SAFE = str.maketrans("-_", "+/")


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class _Open(_Camel):
    """A surface object whose fields Spool does not model are kept (`model_extra`)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")


class Blob(_Camel):
    mime_type: str = Field(max_length=255)
    data: str


class FileData(_Camel):
    mime_type: str | None = Field(default=None, max_length=255)
    file_uri: str


class FunctionCall(_Camel):
    name: str
    args: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None


class FunctionResponsePart(_Open):
    inline_data: Blob | None = None
    file_data: FileData | None = None


class FunctionResponse(_Camel):
    name: str
    response: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None
    parts: list[FunctionResponsePart] | None = None


class Part(_Open):
    text: str | None = None
    thought: bool | None = None
    thought_signature: str | None = None
    inline_data: Blob | None = None
    file_data: FileData | None = None
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


class GeminiTool(_Open):
    """Function declarations; other tools (googleSearch, codeExecution …) are kept as sent."""

    function_declarations: list[FunctionDeclaration] | None = None


class FunctionCallingConfig(_Camel):
    mode: Literal["AUTO", "ANY", "NONE", "VALIDATED", "MODE_UNSPECIFIED"] | None = None
    allowed_function_names: list[str] | None = None


class ToolConfig(_Open):
    function_calling_config: FunctionCallingConfig | None = None


class ThinkingConfig(_Camel):
    include_thoughts: bool | None = None
    thinking_budget: int | None = None
    thinking_level: str | None = Field(default=None, max_length=64)


class GenerationConfig(_Open):
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    max_output_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    stop_sequences: list[str] | None = None
    candidate_count: int | None = None
    seed: int | None = Field(default=None, ge=-(2**31), lt=2**31)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    response_logprobs: bool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    response_mime_type: str | None = Field(default=None, max_length=255)
    response_schema: dict[str, Any] | None = None
    response_json_schema: dict[str, Any] | None = Field(
        default=None,
        validation_alias=AliasChoices(
            "responseJsonSchema", "response_json_schema", "_responseJsonSchema"
        ),
    )
    thinking_config: ThinkingConfig | None = None


class GenerateContentRequest(_Open):
    contents: list[Content] = Field(min_length=1)
    system_instruction: Content | None = None
    tools: list[GeminiTool] | None = None
    tool_config: ToolConfig | None = None
    generation_config: GenerationConfig | None = None
    safety_settings: list[dict[str, Any]] | None = None
    drop_params: bool = Field(
        default=False, validation_alias=AliasChoices("drop_params", "dropParams")
    )


# --- parts ---------------------------------------------------------------------------------


def _kind_of(mime_type: str, what: str) -> MediaKind:
    """The kind of media a mime type names: images, audio, PDF and text documents."""
    mime = mime_type.split(";", 1)[0].strip().lower()
    if mime.startswith("image/"):
        return "image"
    if mime.startswith("audio/"):
        return "audio"
    if mime == "application/pdf" or mime.startswith("text/"):
        return "document"
    raise InvalidRequest(
        f"{what} has mime type {mime_type!r}, which is not supported "
        "(images, audio, PDF and text documents are)"
    )


def standard_base64(data: str) -> str:
    """Base64 as every provider takes it. Protobuf's JSON mapping (which Gemini follows)
    allows the URL-safe alphabet and no padding, and the google-genai SDK sends that form."""
    data = data.translate(_URL_SAFE)
    return data + "=" * (-len(data) % 4)


def _media(inline: Blob | None, file: FileData | None, what: str) -> ContentPart:
    """An `inlineData` blob or a `fileData` reference as a canonical media part."""
    if inline is not None:
        kind = _kind_of(inline.mime_type, what)
        data = standard_base64(inline.data)
        return media_part(kind, what, data=data, media_type=inline.mime_type)
    assert file is not None
    if not file.file_uri.startswith(("http://", "https://")):
        scheme = file.file_uri.partition(":")[0][:20]
        raise InvalidRequest(
            f"{what}: fileUri must be an http(s) URL; {scheme!r} URIs are not supported"
        )
    if file.mime_type is None:
        raise InvalidRequest(f"{what}: fileData needs a mimeType")
    kind = _kind_of(file.mime_type, what)
    return media_part(kind, what, url=file.file_uri, media_type=file.mime_type)


def _unsupported(part: Part | FunctionResponsePart, what: str) -> InvalidRequest:
    kinds = ", ".join(sorted(set(part.model_extra or {}))) or "empty"
    return InvalidRequest(f"{what}: parts of type {kinds} are not supported")


def _text_only(content: Content, what: str) -> str:
    for p, part in enumerate(content.parts):
        if part.text is None:
            raise InvalidRequest(f"{what}.parts[{p}]: {what} may carry text parts only")
    return "".join(p.text or "" for p in content.parts if not p.thought)


def _response_parts(result: FunctionResponse, what: str) -> list[ContentPart]:
    """The media a multimodal function response carries."""
    parts = []
    for n, part in enumerate(result.parts or []):
        where = f"{what}.functionResponse.parts[{n}]"
        if part.inline_data is None and part.file_data is None:
            raise _unsupported(part, where)
        parts.append(_media(part.inline_data, part.file_data, where))
    return parts


class _Conversation:
    """Gemini contents as canonical messages. Calls without an id get one, and a function
    response without an id answers the earliest unanswered call of its name."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.pending: defaultdict[str, deque[str]] = defaultdict(deque)

    def model_turn(self, content: Content, what: str) -> None:
        texts: list[str] = []
        thinking: list[Thinking] = []
        calls: list[ToolCall] = []
        for n, part in enumerate(content.parts):
            where = f"{what}.parts[{n}]"
            signature = part.thought_signature
            if part.function_call is not None:
                call = part.function_call
                call_id = call.id or f"call_{call.name}_{n}"
                self.pending[call.name].append(call_id)
                calls.append(
                    ToolCall(
                        id=call_id,
                        name=call.name,
                        arguments=json_text(call.args, "functionCall args"),
                        signature=signature,
                    )
                )
            elif part.thought:
                if part.text or signature:
                    thinking.append(Thinking(text=part.text or "", signature=signature))
            elif part.text is not None or (signature and _bare(part)):
                # Gemini signs the first part of a turn, whatever it is.
                texts.append(part.text or "")
                if signature:
                    thinking.append(Thinking(signature=signature))
            elif part.inline_data or part.file_data or part.function_response:
                raise InvalidRequest(
                    f"{where}: model turns may carry text, thoughts and function calls only"
                )
            else:
                raise _unsupported(part, where)
        self.messages.append(
            Message(
                role="assistant",
                content="".join(texts),
                tool_calls=calls or None,
                thinking=thinking or None,
            )
        )

    def user_turn(self, content: Content, what: str) -> None:
        parts: list[ContentPart] = []
        answered = False
        for n, part in enumerate(content.parts):
            where = f"{what}.parts[{n}]"
            if part.function_response is not None:
                answered = True
                self.messages.append(self._tool_result(part.function_response, where))
            elif part.text is not None:
                if not part.thought:
                    parts.append(ContentPart(type="text", text=part.text))
            elif part.inline_data is not None or part.file_data is not None:
                parts.append(_media(part.inline_data, part.file_data, where))
            elif part.function_call is None:
                raise _unsupported(part, where)
        if any(p.text or p.type != "text" for p in parts) or not answered:
            self.messages.append(message("user", parts))

    def _tool_result(self, result: FunctionResponse, what: str) -> Message:
        queue = self.pending.get(result.name)
        call_id = result.id or (queue.popleft() if queue else result.name)
        text = json_text(result.response, "functionResponse response")
        media = _response_parts(result, what)
        parts = [ContentPart(type="text", text=text), *media]
        return message("tool", parts, name=result.name, tool_call_id=call_id)


def _bare(part: Part) -> bool:
    """A part with nothing but its signature (and perhaps the thought flag)."""
    return part.inline_data is None and part.file_data is None and not part.model_extra


def _messages(body: GenerateContentRequest) -> list[Message]:
    conversation = _Conversation()
    if body.system_instruction:
        text = _text_only(body.system_instruction, "systemInstruction")
        conversation.messages.append(Message(role="system", content=text))
    for c, content in enumerate(body.contents):
        if content.role == "model":
            conversation.model_turn(content, f"contents[{c}]")
        else:
            conversation.user_turn(content, f"contents[{c}]")
    return conversation.messages


# --- tools ---------------------------------------------------------------------------------


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


# --- response schema -----------------------------------------------------------------------

SCHEMA_TYPES = frozenset({"string", "number", "integer", "boolean", "array", "object", "null"})
_COPIED = frozenset({"format", "title", "description", "pattern", "default", "required", "enum"})
_COUNTS = frozenset(
    {"minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties"}
)


def _count(value: Any, where: str) -> int:
    # int64 fields arrive as JSON strings from clients that follow protobuf's JSON mapping.
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InvalidRequest(f"responseSchema {where} must be an integer") from None


def _schema_node(node: Any, where: str) -> dict[str, Any]:
    """One Gemini `Schema` (OpenAPI 3.0 subset) as JSON Schema."""
    if not isinstance(node, dict):
        raise InvalidRequest(f"responseSchema {where} must be an object")
    out: dict[str, Any] = {}
    nullable = False
    for raw_key, value in node.items():
        key = to_camel(raw_key) if "_" in raw_key else raw_key
        at = f"{where}.{raw_key}"
        if key == "type":
            kind = str(value).lower()
            if kind != "type_unspecified":
                if kind not in SCHEMA_TYPES:
                    raise InvalidRequest(f"responseSchema {at} {value!r} is not a schema type")
                out["type"] = kind
        elif key == "nullable":
            nullable = value is True
        elif key in _COPIED:
            out[key] = value
        elif key in _COUNTS:
            out[key] = _count(value, at)
        elif key in ("minimum", "maximum"):
            out[key] = value
        elif key == "example":
            out["examples"] = [value]
        elif key == "propertyOrdering":
            continue  # an ordering hint for Gemini's own decoder
        elif key == "items":
            out["items"] = _schema_node(value, at)
        elif key == "anyOf":
            out["anyOf"] = [_schema_node(v, f"{at}[{i}]") for i, v in enumerate(_list(value, at))]
        elif key in ("properties", "defs", "$defs"):
            out["properties" if key == "properties" else "$defs"] = {
                str(name): _schema_node(v, f"{at}.{name}") for name, v in _dict(value, at).items()
            }
        elif key == "additionalProperties":
            out[key] = _schema_node(value, at) if isinstance(value, dict) else value
        elif key in ("ref", "$ref"):
            out["$ref"] = str(value).replace("#/defs/", "#/$defs/", 1)
        else:
            raise InvalidRequest(f"responseSchema {at} is not a Schema field Spool can carry")
    if nullable:
        _allow_null(out)
    return out


def _allow_null(schema: dict[str, Any]) -> None:
    kind = schema.get("type")
    if isinstance(kind, str):
        schema["type"] = [kind, "null"]
        if isinstance(schema.get("enum"), list) and None not in schema["enum"]:
            schema["enum"] = [*schema["enum"], None]
    elif "anyOf" in schema:
        schema["anyOf"].append({"type": "null"})


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidRequest(f"responseSchema {where} must be a list")
    return value


def _dict(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidRequest(f"responseSchema {where} must be an object")
    return value


def json_schema_of(schema: dict[str, Any]) -> dict[str, Any]:
    """Gemini's `responseSchema` (OpenAPI 3.0 subset: upper-case type names, `nullable`) as
    the JSON Schema every provider takes."""
    json_text(schema, "generationConfig.responseSchema")  # depth and representability
    return _schema_node(schema, "root")


def _response_format(config: GenerationConfig) -> ResponseFormat | None:
    mime = config.response_mime_type
    if mime is not None and mime not in RESPONSE_MIME_TYPES:
        raise InvalidRequest(
            f"responseMimeType {mime!r} is not supported (text/plain or application/json)"
        )
    if config.response_schema is not None and config.response_json_schema is not None:
        raise InvalidRequest("set only one of responseSchema and responseJsonSchema")
    schema = config.response_json_schema
    if config.response_schema is not None:
        schema = json_schema_of(config.response_schema)
    if schema is not None:
        if mime == "text/plain":
            raise InvalidRequest("a response schema needs responseMimeType application/json")
        return ResponseFormat(type="json_schema", name="response", json_schema=schema)
    if mime == "application/json":
        return ResponseFormat(type="json_object")
    return None


# --- the request ---------------------------------------------------------------------------


def _reasoning(config: GenerationConfig) -> dict[str, Any]:
    thinking = config.thinking_config
    if thinking is None:
        return {}
    level = thinking.thinking_level
    effort = None
    if level is not None:
        if thinking.thinking_budget is not None:
            raise InvalidRequest("set only one of thinkingBudget and thinkingLevel")
        effort = level.lower()
        if effort == "thinking_level_unspecified":
            effort = None
        elif effort not in THINKING_LEVELS:
            raise InvalidRequest(
                f"thinkingLevel {level!r} is not supported (minimal, low, medium or high)"
            )
    budget = thinking.thinking_budget
    return {
        "reasoning": bool(thinking.include_thoughts),
        # Gemini's -1 means "dynamic": no fixed budget.
        "reasoning_budget": budget if budget and budget > 0 else None,
        "reasoning_effort": effort,
    }


def _extra(body: GenerateContentRequest, config: GenerationConfig) -> dict[str, Any]:
    """The request's fields Spool does not model, in the wire form they came in."""
    extra = dict(body.model_extra or {})
    if config.model_extra:
        extra["generationConfig"] = dict(config.model_extra)
    if body.tool_config is not None and body.tool_config.model_extra:
        extra["toolConfig"] = dict(body.tool_config.model_extra)
    other_tools = [dict(t.model_extra) for t in body.tools or [] if t.model_extra]
    if other_tools:
        extra["tools"] = other_tools
    if extra:
        json_text(extra, "the request")  # depth and representability
    return extra


def to_canonical(model: str, body: GenerateContentRequest) -> GenerationRequest:
    config = body.generation_config or GenerationConfig()
    if config.candidate_count not in (None, 1):
        raise InvalidRequest("only candidateCount 1 is supported")
    return GenerationRequest.build(
        model=model,
        messages=_messages(body),
        max_tokens=config.max_output_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        presence_penalty=config.presence_penalty,
        frequency_penalty=config.frequency_penalty,
        logprobs=config.response_logprobs,
        top_logprobs=config.logprobs,
        stop=list(config.stop_sequences or []),
        seed=config.seed,
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        response_format=_response_format(config),
        safety_settings=body.safety_settings,
        protocol="gemini",
        extra=_extra(body, config),
        drop_params=body.drop_params,
        **_reasoning(config),
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
