"""OpenAI-compatible upstreams (OpenAI, Groq, Together, vLLM, Ollama …): Chat Completions
streamed over SSE with httpx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from shared import events as ev
from shared.errors import UpstreamError
from shared.request import GenerationRequest, Message
from shared.settings import ModelEntry
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


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.role == "assistant" and message.tool_calls:
        out["content"] = message.content or None
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.role == "tool":
        out["tool_call_id"] = message.tool_call_id or ""
    if message.name and message.role == "user":
        out["name"] = message.name
    return out


def _tool_choice(choice: str) -> str | dict[str, Any]:
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


def build_body(request: GenerationRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": [_message(m) for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    for name in ("temperature", "top_p", "seed", "user"):
        value = getattr(request, name)
        if value is not None:
            body[name] = value
    if request.stop:
        body["stop"] = request.stop
    if request.tools:
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
    return body


class _ChunkMapper:
    """Turns parsed `chat.completion.chunk` objects into canonical events."""

    def __init__(self) -> None:
        self.finish_reason: ev.FinishReason | None = None
        self.usage: ev.Usage | None = None

    def map(self, chunk: dict[str, Any]) -> list[ev.Event]:
        if chunk.get("error"):
            error = chunk["error"]
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise UpstreamError(f"upstream error mid-stream: {message}", code="upstream_error")
        out: list[ev.Event] = []
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = ev.Usage(
                input_tokens=int(usage.get("prompt_tokens") or 0),
                output_tokens=int(usage.get("completion_tokens") or 0),
            )
        for choice in chunk.get("choices") or []:
            if not isinstance(choice, dict) or choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str) and reasoning:
                out.append(ev.ReasoningDelta(text=reasoning))
            content = delta.get("content")
            if isinstance(content, str) and content:
                out.append(ev.TextDelta(text=content))
            for call in delta.get("tool_calls") or []:
                function = call.get("function") or {}
                out.append(
                    ev.ToolCallDelta(
                        index=int(call.get("index", 0)),
                        id=call.get("id"),
                        name=function.get("name"),
                        arguments=function.get("arguments") or "",
                    )
                )
            reason = choice.get("finish_reason")
            if isinstance(reason, str):
                self.finish_reason = FINISH_REASONS.get(reason, "stop")
        return out


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
        body = build_body(request, entry.model or request.model)
        mapper = _ChunkMapper()
        parser = EventParser()
        events = stream_events(self.client, url, body=body, headers=headers, entry=entry)
        async with contextlib.aclosing(events) as sses:
            async for sse in sses:
                if sse.data == "[DONE]":
                    await read_to_the_end(sses)
                    break
                for event in parser.parse(sse, mapper.map):
                    yield event
        if mapper.finish_reason is None:
            raise incomplete()
        yield ev.Finish(reason=mapper.finish_reason, usage=mapper.usage)
