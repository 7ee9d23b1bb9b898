"""OpenAI-compatible upstreams (OpenAI, Groq, Together, vLLM, Ollama …): Chat Completions
streamed over SSE with httpx."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from shared import events as ev
from shared.errors import UpstreamError
from shared.media import TEXT_DOCUMENTS
from shared.model_table import ModelEntry
from shared.request import ContentPart, GenerationRequest, Message, ResponseFormat, ToolCall
from worker.providers.http import EventParser, incomplete, read_to_the_end, stream_events
from worker.providers.media import DEFAULT_MAX_MEDIA_BYTES, MediaFetcher

DEFAULT_BASE_URL = "https://api.openai.com/v1"
FINISH_REASONS: dict[str, ev.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


# OpenAI's `input_audio.format` for each audio media type it takes.
AUDIO_FORMAT_OF = {"audio/wav": "wav", "audio/mpeg": "mp3", "audio/mp3": "mp3"}
DEFAULT_FILENAME = "document.pdf"  # OpenAI needs a file name with inline file data
# Sampling and control fields sent as they are when set.
PLAIN_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "seed",
    "user",
    "metadata",
    "service_tier",
    "reasoning_effort",
)


def _data_url(part: ContentPart) -> str:
    return f"data:{part.media_type};base64,{part.data}"


def _document(part: ContentPart) -> dict[str, Any]:
    if part.media_type in TEXT_DOCUMENTS:
        text = base64.b64decode(part.data or "").decode("utf-8", errors="replace")
        return {"type": "text", "text": text}
    return {
        "type": "file",
        "file": {"filename": part.name or DEFAULT_FILENAME, "file_data": _data_url(part)},
    }


def _part(part: ContentPart) -> dict[str, Any]:
    """A canonical part in Chat Completions' form. URL parts other than images were
    fetched inline before the body is built."""
    if part.type == "text":
        return {"type": "text", "text": part.text or ""}
    if part.type == "image":
        image: dict[str, Any] = {"url": part.url or _data_url(part)}
        if part.detail is not None:
            image["detail"] = part.detail
        return {"type": "image_url", "image_url": image}
    if part.type == "audio":
        audio_format = AUDIO_FORMAT_OF.get(part.media_type or "", "wav")
        return {"type": "input_audio", "input_audio": {"data": part.data, "format": audio_format}}
    return _document(part)


def _tool_call(call: ToolCall) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": call.id,
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }
    if call.signature is not None:
        # Gemini's OpenAI-compatible API takes a call's thought signature back here.
        out["extra_content"] = {"google": {"thought_signature": call.signature}}
    return out


def _message(message: Message) -> dict[str, Any]:
    content: str | list[dict[str, Any]] | None = message.content
    if message.role != "tool" and message.media:
        content = [_part(p) for p in message.content_parts()]
    out: dict[str, Any] = {"role": message.role, "content": content}
    if message.role == "assistant" and message.tool_calls:
        out["content"] = content or None
        out["tool_calls"] = [_tool_call(c) for c in message.tool_calls]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id or ""
        if message.is_error:  # Chat Completions has no flag for a failed call: say so
            out["content"] = f"Error: {message.content}"
    if message.name and message.role == "user":
        out["name"] = message.name
    return out


def _messages(messages: list[Message]) -> list[dict[str, Any]]:
    """The conversation in Chat Completions' form. A tool result keeps its text; its media
    follow the run of tool messages as a user turn (the only turn that takes images)."""
    out: list[dict[str, Any]] = []
    pending: list[dict[str, Any]] = []
    for message in messages:
        if pending and message.role != "tool":
            out.append({"role": "user", "content": pending})
            pending = []
        out.append(_message(message))
        if message.role == "tool" and message.parts is not None:
            pending.extend(_part(p) for p in message.media)
    if pending:
        out.append({"role": "user", "content": pending})
    return out


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def _response_format(fmt: ResponseFormat) -> dict[str, Any]:
    if fmt.type != "json_schema":
        return {"type": fmt.type}
    spec: dict[str, Any] = {"name": fmt.name or "response"}
    if fmt.description is not None:
        spec["description"] = fmt.description
    if fmt.json_schema is not None:
        spec["schema"] = fmt.json_schema
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def _tools(request: GenerationRequest, body: dict[str, Any]) -> None:
    body["tools"] = [
        {
            "type": "function",
            "function": {
                "name": t.name,
                **({"description": t.description} if t.description else {}),
                "parameters": t.parameters,
            },
        }
        for t in request.tools
    ]
    if request.tool_choice is not None:
        body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is not None:
        body["parallel_tool_calls"] = request.parallel_tool_calls


def build_body(request: GenerationRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": _messages(request.messages),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    for name in PLAIN_FIELDS:
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = request.stop
    if request.tools:
        _tools(request, body)
    if request.response_format is not None:
        body["response_format"] = _response_format(request.response_format)
    if request.extra and request.protocol == "openai":
        for key, value in request.extra.items():
            body.setdefault(key, value)
    return body


def _needs_bytes(part: ContentPart) -> bool:
    """Chat Completions takes images by URL, and every other kind only inline."""
    return part.type != "image"


class _ChunkMapper:
    """Turns parsed `chat.completion.chunk` objects into canonical events."""

    def __init__(self) -> None:
        self.finish_reason: ev.FinishReason | None = None
        self.usage: ev.Usage | None = None

    def map(self, chunk: dict[str, Any]) -> list[ev.Event]:
        # Nearly every chunk: one choice whose delta is text alone, and nothing else to
        # note. What `_map` makes of it, with fewer lookups (this runs for every token).
        choices = chunk.get("choices")
        if (
            type(choices) is list
            and len(choices) == 1
            and not chunk.get("error")
            and chunk.get("usage") is None
        ):
            choice = choices[0]
            if type(choice) is dict:
                delta = choice.get("delta")
                if (
                    type(delta) is dict
                    and len(delta) == 1
                    and choice.get("finish_reason") is None
                    and not choice.get("logprobs")
                    and choice.get("index", 0) == 0
                ):
                    content = delta.get("content")
                    if type(content) is str and content:
                        return [ev.text_delta(content)]
        return self._map(chunk)

    def _map(self, chunk: dict[str, Any]) -> list[ev.Event]:
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError(f"upstream error mid-stream: {message}", code="upstream_error")
        out: list[ev.Event] = []
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = _usage(usage)
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(ev.ReasoningDelta(text=reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                logprobs = choice.get("logprobs")
                if logprobs:
                    out.append(ev.TextDelta(text=content, logprobs=_logprobs(logprobs)))
                else:
                    out.append(ev.text_delta(content))
            for call in delta.get("tool_calls") or []:
                out.append(_tool_call_delta(call))
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.finish_reason = FINISH_REASONS.get(reason, "stop")
        return out


def _detail(usage: dict[str, Any], details: str, name: str) -> int | None:
    found = usage.get(details)
    value = found.get(name) if isinstance(found, dict) else None
    return value if isinstance(value, int) else None


def _usage(usage: dict[str, Any]) -> ev.Usage:
    return ev.Usage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        cached_input_tokens=_detail(usage, "prompt_tokens_details", "cached_tokens"),
        reasoning_tokens=_detail(usage, "completion_tokens_details", "reasoning_tokens"),
    )


def _logprobs(logprobs: Any) -> list[dict[str, Any]] | None:
    """A choice's `logprobs.content` entries, when they are what OpenAI sends."""
    content = logprobs.get("content") if isinstance(logprobs, dict) else None
    if isinstance(content, list) and content and all(isinstance(e, dict) for e in content):
        return content
    return None


def _tool_call_delta(call: dict[str, Any]) -> ev.ToolCallDelta:
    function = call.get("function") or {}
    signature = None
    extra = call.get("extra_content")
    if extra:  # Gemini's OpenAI-compatible API signs its calls here
        google = extra.get("google") if isinstance(extra, dict) else None
        found = google.get("thought_signature") if isinstance(google, dict) else None
        signature = found if isinstance(found, str) else None
    return ev.ToolCallDelta(
        index=int(call.get("index", 0)),
        id=call.get("id"),
        name=function.get("name"),
        arguments=function.get("arguments") or "",
        signature=signature,
    )


class OpenAIProvider:
    name = "openai"

    def __init__(self, client: httpx.AsyncClient, media: MediaFetcher | None = None) -> None:
        self.client = client
        self.media = media or MediaFetcher(client, DEFAULT_MAX_MEDIA_BYTES)

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        url = (entry.base_url or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"
        headers = {}
        key = entry.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if request.has_media_urls:
            request = await self.media.inline(request, needs=_needs_bytes)
        body = build_body(request, entry.model or request.model)
        mapper = _ChunkMapper()
        parser = EventParser()
        events = stream_events(self.client, url, body=body, headers=headers, entry=entry)
        done = False
        async with contextlib.aclosing(events) as reads:
            async for read in reads:
                for sse in read:
                    if sse.data == "[DONE]":
                        done = True
                        break
                    for event in parser.parse(sse, mapper.map):
                        yield event
                if done:
                    await read_to_the_end(reads)
                    break
        if mapper.finish_reason is None:
            raise incomplete()
        yield ev.Finish(reason=mapper.finish_reason, usage=mapper.usage)
