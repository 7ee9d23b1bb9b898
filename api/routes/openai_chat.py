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
from shared.media import AUDIO_FORMATS, MediaKind, media_part, parse_data_url
from shared.request import (
    ContentPart,
    GenerationRequest,
    Message,
    ResponseFormat,
    Thinking,
    Tool,
    ToolCall,
    message,
)

router = APIRouter(tags=["openai"])
SURFACE = "openai.chat"
PROTOCOL = "openai"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class ImageURL(_Strict):
    url: str
    detail: Literal["auto", "low", "high"] | None = None


class InputAudio(_Strict):
    data: str
    format: str


class FileRef(_Strict):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class ContentPartIn(_Strict):
    """A content part of any type; which fields count depends on `type`."""

    type: str
    text: str | None = None
    refusal: str | None = None
    image_url: ImageURL | str | None = None
    input_audio: InputAudio | None = None
    file: FileRef | None = None


class FunctionCall(_Strict):
    name: str
    arguments: str = "{}"


class ToolCallIn(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall
    # Gemini's OpenAI-compatible API carries a call's thought signature here.
    extra_content: dict[str, Any] | None = None


class ThinkingBlock(_Strict):
    type: Literal["thinking", "redacted_thinking"]
    thinking: str | None = None
    signature: str | None = None
    data: str | None = None


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPartIn] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    thinking_blocks: list[ThinkingBlock] | None = None
    # The reasoning a stream sent as reasoning_content deltas: the text of a signed block
    # that came (as streams send it) with its signature alone.
    reasoning_content: str | None = None


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


class JSONSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormatIn(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None


Penalty = Annotated[float, Field(ge=-2, le=2)]
LogitBias = dict[str, Annotated[float, Field(ge=-100, le=100)]]


class ChatCompletionRequest(_Strict):
    # Fields Spool does not model are kept (`model_extra`) and passed on verbatim to
    # OpenAI-compatible upstreams.
    model_config = ConfigDict(strict=True, extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=10_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logit_bias: LogitBias | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), lt=2**63)
    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormatIn | None = None
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    drop_params: bool = False


# The part types each role may carry.
USER_PARTS = frozenset({"text", "image_url", "input_audio", "file"})
ROLE_PARTS: dict[str, frozenset[str]] = {
    "system": frozenset({"text"}),
    "developer": frozenset({"text"}),
    "user": USER_PARTS,
    "assistant": frozenset({"text", "refusal"}),
    "tool": frozenset({"text", "image_url", "file"}),
}


def _kind_of(media_type: str) -> MediaKind:
    if media_type.startswith("image/"):
        return "image"
    if media_type.startswith("audio/"):
        return "audio"
    return "document"


def _file_part(ref: FileRef | None, what: str) -> ContentPart:
    if ref is None:
        raise InvalidRequest(f"{what} needs a file object")
    if ref.file_id is not None:
        raise InvalidRequest(f"{what}: file ids are not supported: send file_data")
    if ref.file_data is None:
        raise InvalidRequest(f"{what} needs file.file_data (a base64 data URL)")
    media_type, data = parse_data_url(ref.file_data, what)
    return media_part(
        _kind_of(media_type), what, data=data, media_type=media_type, name=ref.filename
    )


def _audio_part(audio: InputAudio | None, what: str) -> ContentPart:
    if audio is None:
        raise InvalidRequest(f"{what} needs an input_audio object")
    media_type = AUDIO_FORMATS.get(audio.format)
    if media_type is None:
        formats = ", ".join(AUDIO_FORMATS)
        raise InvalidRequest(f"{what}: input_audio format {audio.format!r} is not one of {formats}")
    return media_part("audio", what, data=audio.data, media_type=media_type)


def _image_part(image: ImageURL | str | None, what: str) -> ContentPart:
    if image is None:
        raise InvalidRequest(f"{what} needs an image_url object")
    if isinstance(image, str):
        return media_part("image", what, url=image)
    return media_part("image", what, url=image.url, detail=image.detail)


def _part(part: ContentPartIn, role: str, what: str) -> ContentPart:
    if part.type not in ROLE_PARTS[role]:
        if part.type in USER_PARTS or part.type == "refusal":
            raise InvalidRequest(f"{what}: {role} messages cannot carry {part.type!r} parts")
        raise InvalidRequest(f"{what}: content parts of type {part.type!r} are not supported")
    match part.type:
        case "text" | "refusal":
            text = part.text if part.type == "text" else part.refusal
            if text is None:
                raise InvalidRequest(f"{what} needs its {part.type}")
            return ContentPart(type="text", text=text)
        case "image_url":
            return _image_part(part.image_url, what)
        case "input_audio":
            return _audio_part(part.input_audio, what)
        case _:
            return _file_part(part.file, what)


def _parts(m: ChatMessage, index: int) -> list[ContentPart]:
    if m.content is None or isinstance(m.content, str):
        return [ContentPart(type="text", text=m.content)] if m.content else []
    return [
        _part(part, m.role, f"messages[{index}].content[{j}] ({part.type})")
        for j, part in enumerate(m.content)
    ]


def _signature(call: ToolCallIn) -> str | None:
    google = (call.extra_content or {}).get("google")
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) else None


def _thinking(blocks: list[ThinkingBlock], index: int, streamed: str | None) -> list[Thinking]:
    out = []
    for j, block in enumerate(blocks):
        if block.type == "redacted_thinking":
            if block.data is None:
                raise InvalidRequest(f"messages[{index}].thinking_blocks[{j}] needs its data")
            out.append(Thinking(redacted=block.data))
        else:
            text = block.thinking or ""
            if not text and block.signature and streamed and len(blocks) == 1:
                text = streamed
            out.append(Thinking(text=text, signature=block.signature))
    return out


def _message(m: ChatMessage, index: int) -> Message:
    calls = None
    if m.tool_calls:
        calls = [
            ToolCall(
                id=c.id,
                name=c.function.name,
                arguments=c.function.arguments,
                signature=_signature(c),
            )
            for c in m.tool_calls
        ]
    thinking = None
    if m.thinking_blocks:
        if m.role != "assistant":
            raise InvalidRequest(
                f"messages[{index}]: only assistant messages carry thinking_blocks"
            )
        thinking = _thinking(m.thinking_blocks, index, m.reasoning_content)
    return message(
        "system" if m.role == "developer" else m.role,
        _parts(m, index),
        name=m.name,
        tool_call_id=m.tool_call_id,
        tool_calls=calls,
        thinking=thinking,
    )


def stop_list(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > 4:
        raise InvalidRequest("at most 4 stop sequences are allowed")
    return stops


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


def _response_format(fmt: ResponseFormatIn | None) -> ResponseFormat | None:
    if fmt is None:
        return None
    if fmt.type != "json_schema":
        return ResponseFormat(type=fmt.type)
    spec = fmt.json_schema
    if spec is None:
        raise InvalidRequest("response_format of type json_schema needs its json_schema object")
    return ResponseFormat(
        type="json_schema",
        name=spec.name,
        description=spec.description,
        json_schema=spec.schema_,
        strict=spec.strict,
    )


def check_logprobs(logprobs: bool | None, top_logprobs: int | None) -> None:
    if top_logprobs is not None and not logprobs:
        raise InvalidRequest("top_logprobs needs logprobs set to true")


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


def _tool_choice(body: ChatCompletionRequest) -> str | None:
    choice = body.tool_choice
    if not isinstance(choice, NamedToolChoice):
        return choice
    name = choice.function.get("name")
    if not name:
        raise InvalidRequest("tool_choice.function.name is required")
    return name


def to_canonical(body: ChatCompletionRequest) -> GenerationRequest:
    if body.n not in (None, 1):
        raise InvalidRequest("only n=1 is supported")
    check_logprobs(body.logprobs, body.top_logprobs)
    return GenerationRequest.build(
        model=body.model,
        messages=[_message(m, i) for i, m in enumerate(body.messages)],
        max_tokens=body.max_completion_tokens or body.max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        logit_bias=body.logit_bias,
        logprobs=body.logprobs,
        top_logprobs=body.top_logprobs,
        stop=stop_list(body.stop),
        seed=body.seed,
        user=body.user,
        metadata=body.metadata,
        service_tier=body.service_tier,
        tools=_tools(body),
        tool_choice=_tool_choice(body),
        parallel_tool_calls=body.parallel_tool_calls,
        response_format=_response_format(body.response_format),
        reasoning=body.reasoning_effort is not None and body.reasoning_effort != "minimal",
        reasoning_effort=body.reasoning_effort,
        protocol=PROTOCOL,
        extra=dict(body.model_extra or {}),
        drop_params=body.drop_params,
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
