"""Anthropic: the Messages API (`POST /v1/messages`) streamed over SSE with httpx.

Every Anthropic event is named (`event: content_block_delta`) and repeats its name as the
`type` of its JSON data. A stream is `message_start`, then content blocks (each a
`content_block_start`, deltas and a `content_block_stop`), then `message_delta` (stop
reason, cumulative usage) and `message_stop`; `ping` and `event: error` may come anywhere.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from shared import events as ev
from shared.errors import UpstreamError
from shared.request import GenerationRequest, Message, parse_json_object
from shared.settings import ModelEntry
from worker.providers.http import EventParser, incomplete, read_to_the_end, stream_events
from worker.providers.media import DEFAULT_MAX_MEDIA_BYTES, MediaFetcher

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_THINKING_BUDGET = 1024
MIN_THINKING_BUDGET = 1024  # the API rejects a smaller budget_tokens
MAX_TEMPERATURE = 1.0  # Anthropic's range is 0..1; the canonical request allows up to 2

FINISH_REASONS: dict[str, ev.FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}
# Error types of an `event: error` that a fresh attempt may get past, and the HTTP status
# each would have had outside a stream.
RETRYABLE_ERRORS = frozenset({"overloaded_error", "api_error", "rate_limit_error", "timeout_error"})
ERROR_STATUSES = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


# --- the request ---------------------------------------------------------------------------


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and content blocks of one canonical (non-system) message."""
    if message.role == "tool":
        result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
        if message.content:
            result["content"] = message.content
        return "user", [result]
    blocks: list[dict[str, Any]] = []
    if message.content:  # the API rejects empty text blocks
        blocks.append({"type": "text", "text": message.content})
    if message.role == "assistant":
        blocks += [
            {
                "type": "tool_use",
                "id": c.id,
                "name": c.name,
                "input": parse_json_object(c.arguments) or {},
            }
            for c in message.tool_calls or []
        ]
    return message.role, blocks


def _messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The conversation as alternating user / assistant turns: consecutive messages of the
    same Anthropic role (tool results are user turns) become one turn."""
    merged: list[tuple[str, list[dict[str, Any]]]] = []
    for message in request.turns:
        role, blocks = _blocks(message)
        if not blocks:
            continue
        if merged and merged[-1][0] == role:
            merged[-1][1].extend(blocks)
        else:
            merged.append((role, blocks))
    out: list[dict[str, Any]] = []
    for role, blocks in merged:
        if role == "user":
            # Tool results must open the user turn that follows the assistant's tool uses.
            blocks.sort(key=lambda b: b["type"] != "tool_result")
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            out.append({"role": role, "content": blocks[0]["text"]})
        else:
            out.append({"role": role, "content": blocks})
    return out


def _tool_choice(choice: str) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": choice}


def build_body(request: GenerationRequest, upstream_model: str) -> dict[str, Any]:
    max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": max_tokens,
        "messages": _messages(request),
        "stream": True,
    }
    system = request.system_prompt
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, MAX_TEMPERATURE)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.tools:
        body["tools"] = [
            {
                "name": t.name,
                **({"description": t.description} if t.description else {}),
                "input_schema": t.parameters,
            }
            for t in request.tools
        ]
        if request.tool_choice is not None:
            body["tool_choice"] = _tool_choice(request.tool_choice)
    if request.reasoning:
        budget = max(request.reasoning_budget or DEFAULT_THINKING_BUDGET, MIN_THINKING_BUDGET)
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}
        if max_tokens <= budget:
            # max_tokens counts the thinking too: keep the asked-for room for the answer.
            body["max_tokens"] = budget + max_tokens
    return body


# --- the stream ----------------------------------------------------------------------------


def _count(usage: dict[str, Any], *names: str) -> int:
    # Clamped, so an absurd count from upstream cannot make the finish unstorable.
    return min(ev.MAX_TOKENS, sum(max(0, int(usage.get(name) or 0)) for name in names))


class _EventMapper:
    """Turns parsed Anthropic stream events into canonical events."""

    def __init__(self) -> None:
        self.stopped = False
        self.stop_reason: str | None = None
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.tool_index: dict[int, int] = {}  # content block index -> tool call index

    @property
    def finish(self) -> ev.Finish:
        usage = None
        if self.input_tokens is not None or self.output_tokens is not None:
            usage = ev.Usage(
                input_tokens=self.input_tokens or 0, output_tokens=self.output_tokens or 0
            )
        reason = FINISH_REASONS.get(self.stop_reason or "", "stop")
        return ev.Finish(reason=reason, usage=usage)

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        # Counts are cumulative, so the largest seen is the count (some upstreams send a
        # zero input count in message_delta). Input read from or written to the cache is
        # still input.
        inputs = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        if any(usage.get(name) is not None for name in inputs):
            self.input_tokens = max(self.input_tokens or 0, _count(usage, *inputs))
        if usage.get("output_tokens") is not None:
            self.output_tokens = max(self.output_tokens or 0, _count(usage, "output_tokens"))

    def map(self, data: dict[str, Any], name: str) -> list[ev.Event]:
        kind = data.get("type") or name
        if kind == "content_block_delta":
            return self._delta(data)
        if kind == "content_block_start":
            return self._block_start(data)
        if kind == "message_start":
            message = data.get("message") or {}
            self._usage(message.get("usage"))
        elif kind == "message_delta":
            reason = (data.get("delta") or {}).get("stop_reason")
            if isinstance(reason, str):
                self.stop_reason = reason
            self._usage(data.get("usage"))
        elif kind == "message_stop":
            self.stopped = True
        elif kind == "error":
            raise _stream_error(data.get("error"))
        # ping, content_block_stop and event types added later carry nothing for us.
        return []

    def _block_start(self, data: dict[str, Any]) -> list[ev.Event]:
        block = data.get("content_block") or {}
        kind = block.get("type")
        if kind == "tool_use":
            index = len(self.tool_index)
            self.tool_index[int(data.get("index", index))] = index
            return [ev.ToolCallDelta(index=index, id=block.get("id"), name=block.get("name"))]
        # Text and thinking blocks start empty; should one not, its start text counts.
        if kind == "text" and block.get("text"):
            return [ev.TextDelta(text=str(block["text"]))]
        if kind == "thinking" and block.get("thinking"):
            return [ev.ReasoningDelta(text=str(block["thinking"]))]
        return []

    def _delta(self, data: dict[str, Any]) -> list[ev.Event]:
        delta = data.get("delta") or {}
        kind = delta.get("type")
        if kind == "text_delta":
            text = delta.get("text")
            return [ev.TextDelta(text=text)] if isinstance(text, str) and text else []
        if kind == "thinking_delta":
            text = delta.get("thinking")
            return [ev.ReasoningDelta(text=text)] if isinstance(text, str) and text else []
        if kind == "signature_delta":
            signature = delta.get("signature")
            if isinstance(signature, str) and signature:
                return [ev.ReasoningDelta(text="", signature=signature)]
            return []
        if kind == "input_json_delta":
            index = self.tool_index.get(int(data.get("index", -1)))
            fragment = delta.get("partial_json")
            if index is not None and isinstance(fragment, str) and fragment:
                return [ev.ToolCallDelta(index=index, arguments=fragment)]
        return []


def _stream_error(error: Any) -> UpstreamError:
    if isinstance(error, dict):
        kind = str(error.get("type") or "error")
        message = str(error.get("message") or "no message")
    else:
        kind, message = "error", str(error)
    return UpstreamError(
        f"upstream error mid-stream: {kind}: {message}",
        upstream_status=ERROR_STATUSES.get(kind),
        retryable=kind in RETRYABLE_ERRORS,
        code="upstream_error",
    )


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, client: httpx.AsyncClient, media: MediaFetcher | None = None) -> None:
        self.client = client
        self.media = media or MediaFetcher(client, DEFAULT_MAX_MEDIA_BYTES)

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        url = (entry.base_url or DEFAULT_BASE_URL).rstrip("/") + "/messages"
        headers = {"anthropic-version": API_VERSION}
        key = entry.api_key()
        if key:
            headers["x-api-key"] = key
        body = build_body(request, entry.model or request.model)
        mapper = _EventMapper()
        parser = EventParser()
        events = stream_events(self.client, url, body=body, headers=headers, entry=entry)
        async with contextlib.aclosing(events) as sses:
            async for sse in sses:
                for event in parser.parse(sse, functools.partial(mapper.map, name=sse.event)):
                    yield event
                if mapper.stopped:
                    await read_to_the_end(sses)
                    break
        if not mapper.stopped:
            raise incomplete()
        yield mapper.finish
