"""Anthropic: the Messages API (`POST /v1/messages`) streamed over SSE with httpx.

Every Anthropic event is named (`event: content_block_delta`) and repeats its name as the
`type` of its JSON data. A stream is `message_start`, then content blocks (each a
`content_block_start`, deltas and a `content_block_stop`), then `message_delta` (stop
reason, cumulative usage) and `message_stop`; `ping` and `event: error` may come anywhere.
"""

from __future__ import annotations

import base64
import contextlib
import functools
from collections.abc import AsyncGenerator
from typing import Any

import httpx

from shared import events as ev
from shared.errors import UpstreamError
from shared.media import TEXT_DOCUMENTS
from shared.model_table import ModelEntry
from shared.request import ContentPart, GenerationRequest, Message, parse_json_object
from worker.providers.http import EventParser, incomplete, read_to_the_end, stream_events
from worker.providers.media import DEFAULT_MAX_MEDIA_BYTES, MediaFetcher

DEFAULT_BASE_URL = "https://api.anthropic.com/v1"
API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
DEFAULT_THINKING_BUDGET = 1024
MIN_THINKING_BUDGET = 1024  # the API rejects a smaller budget_tokens
MAX_TEMPERATURE = 1.0  # Anthropic's range is 0..1; the canonical request allows up to 2
# `output_config.effort` for each canonical reasoning effort (Anthropic has no "minimal").
EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high"}

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


def _refused(message: str) -> UpstreamError:
    """What reaches here was judged carriable before enqueueing; should it not be, the
    stream ends with a clear error rather than a lossy request."""
    return UpstreamError(message, upstream_status=400)


def _text(data: str | None) -> str:
    """A text document's base64 as its text (Anthropic takes text documents as text)."""
    return base64.b64decode(data or "").decode("utf-8", "replace")


def _source(part: ContentPart) -> dict[str, Any]:
    if part.url is not None:
        return {"type": "url", "url": part.url}
    if part.type == "document" and part.media_type in TEXT_DOCUMENTS:
        return {"type": "text", "media_type": "text/plain", "data": _text(part.data)}
    return {"type": "base64", "media_type": part.media_type, "data": part.data}


def _part_blocks(parts: list[ContentPart]) -> list[dict[str, Any]]:
    """Content parts as Anthropic content blocks (empty text, which the API rejects, left
    out)."""
    blocks: list[dict[str, Any]] = []
    for part in parts:
        if part.type == "text":
            if not part.text:
                continue
            block: dict[str, Any] = {"type": "text", "text": part.text}
        elif part.type == "image" or part.type == "document":
            block = {"type": part.type, "source": _source(part)}
            if part.name and part.type == "document":
                block["title"] = part.name
        else:
            raise _refused(f"{part.type} input is not supported by the anthropic provider")
        if part.cache_control is not None:
            block["cache_control"] = part.cache_control
        blocks.append(block)
    return blocks


def _thinking_blocks(message: Message) -> list[dict[str, Any]]:
    """Earlier signed reasoning, passed back as it came (Anthropic checks the signature;
    unsigned reasoning, from another provider, cannot be passed back)."""
    blocks: list[dict[str, Any]] = []
    for thought in message.thinking or []:
        if thought.redacted is not None:
            blocks.append({"type": "redacted_thinking", "data": thought.redacted})
        elif thought.signature:
            blocks.append(
                {"type": "thinking", "thinking": thought.text, "signature": thought.signature}
            )
    return blocks


def _tool_result(message: Message) -> dict[str, Any]:
    result: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.tool_call_id or ""}
    if message.parts is not None:
        content = _part_blocks(message.parts)
        if content:
            result["content"] = content
    elif message.content:
        result["content"] = message.content
    if message.is_error:
        result["is_error"] = True
    return result


def _blocks(message: Message) -> tuple[str, list[dict[str, Any]]]:
    """The Anthropic role and content blocks of one canonical (non-system) message."""
    if message.role == "tool":
        return "user", [_tool_result(message)]
    blocks: list[dict[str, Any]] = []
    if message.thinking:
        blocks += _thinking_blocks(message)
    if message.parts is not None:
        blocks += _part_blocks(message.parts)
    elif message.content:  # the API rejects empty text blocks
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
        if len(blocks) == 1 and blocks[0]["type"] == "text" and "cache_control" not in blocks[0]:
            out.append({"role": role, "content": blocks[0]["text"]})
        else:
            out.append({"role": role, "content": blocks})
    return out


def _system(request: GenerationRequest) -> str | list[dict[str, Any]] | None:
    """The system prompt: plain text, or text blocks when any carries a cache marker."""
    system = [m for m in request.messages if m.role == "system"]
    if not any(m.parts is not None for m in system):
        return request.system_prompt or None
    blocks = _part_blocks([p for m in system for p in m.content_parts()])
    if any(b["type"] != "text" for b in blocks):
        raise _refused("the anthropic provider takes only text in system messages")
    return blocks or None


def _tool_choice(choice: str) -> dict[str, Any]:
    if choice == "auto":
        return {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    return {"type": "tool", "name": choice}


def _tools(request: GenerationRequest, body: dict[str, Any]) -> None:
    tools = []
    for t in request.tools:
        tool: dict[str, Any] = {"name": t.name}
        if t.description:
            tool["description"] = t.description
        tool["input_schema"] = t.parameters
        if t.cache_control is not None:
            tool["cache_control"] = t.cache_control
        tools.append(tool)
    body["tools"] = tools
    choice = None if request.tool_choice is None else _tool_choice(request.tool_choice)
    if request.parallel_tool_calls is False:
        choice = choice or {"type": "auto"}
        if choice["type"] != "none":
            choice["disable_parallel_tool_use"] = True
    if choice is not None:
        body["tool_choice"] = choice


def _output_config(request: GenerationRequest) -> dict[str, Any] | None:
    config: dict[str, Any] = {}
    fmt = request.response_format
    if fmt is not None and fmt.type == "json_schema":
        config["format"] = {"type": "json_schema", "schema": fmt.json_schema}
    elif fmt is not None and fmt.type == "json_object":
        config["format"] = {"type": "json_schema", "schema": {"type": "object"}}
    if request.reasoning_effort is not None:
        config["effort"] = EFFORTS[request.reasoning_effort]
    return config or None


def _thinking(request: GenerationRequest, body: dict[str, Any]) -> None:
    max_tokens = body["max_tokens"]
    budget = max(request.reasoning_budget or DEFAULT_THINKING_BUDGET, MIN_THINKING_BUDGET)
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    if max_tokens <= budget:
        # max_tokens counts the thinking too: keep the asked-for room for the answer.
        body["max_tokens"] = budget + max_tokens


def build_body(request: GenerationRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": upstream_model,
        "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": _messages(request),
        "stream": True,
    }
    system = _system(request)
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, MAX_TEMPERATURE)
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.top_k is not None:
        body["top_k"] = request.top_k
    if request.stop:
        body["stop_sequences"] = request.stop
    if request.user:
        body["metadata"] = {"user_id": request.user}
    if request.service_tier is not None:
        body["service_tier"] = request.service_tier
    if request.tools:
        _tools(request, body)
    output_config = _output_config(request)
    if output_config is not None:
        body["output_config"] = output_config
    if request.reasoning:
        _thinking(request, body)
    if request.extra and request.protocol == "anthropic":
        for name, value in request.extra.items():
            body.setdefault(name, value)
    return body


# --- the stream ----------------------------------------------------------------------------


def _count(usage: dict[str, Any], *names: str) -> int:
    # Clamped, so an absurd count from upstream cannot make the finish unstorable.
    return min(ev.MAX_TOKENS, sum(max(0, int(usage.get(name) or 0)) for name in names))


class _EventMapper:
    """Turns parsed Anthropic stream events into canonical events. The input count that
    message_start tells goes out as a `Usage` just before the first content, so it rides on
    the stream's Start (an upstream that fails before any content can still be retried)."""

    def __init__(self) -> None:
        self.stopped = False
        self.stop_reason: str | None = None
        self.input_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.output_tokens: int | None = None
        self.tool_index: dict[int, int] = {}  # content block index -> tool call index
        self.told: ev.Usage | None = None  # the early input count, until content comes

    @property
    def usage(self) -> ev.Usage | None:
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return ev.Usage(
            input_tokens=self.input_tokens or 0,
            output_tokens=self.output_tokens or 0,
            cached_input_tokens=self.cached_tokens,
        )

    @property
    def finish(self) -> ev.Finish:
        reason = FINISH_REASONS.get(self.stop_reason or "", "stop")
        return ev.Finish(reason=reason, usage=self.usage)

    def _usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        # Counts are cumulative, so the largest seen is the count (some upstreams send a
        # zero input count in message_delta). Input read from or written to the cache is
        # still input.
        inputs = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")
        if any(usage.get(name) is not None for name in inputs):
            self.input_tokens = max(self.input_tokens or 0, _count(usage, *inputs))
        if usage.get("cache_read_input_tokens") is not None:
            cached = _count(usage, "cache_read_input_tokens")
            self.cached_tokens = max(self.cached_tokens or 0, cached)
        if usage.get("output_tokens") is not None:
            self.output_tokens = max(self.output_tokens or 0, _count(usage, "output_tokens"))

    def _first_content(self, events: list[ev.Event]) -> list[ev.Event]:
        """`events`, led by the early input count when they are the first content."""
        if not events or self.told is None:
            return events
        told, self.told = self.told, None
        return [told, *events]

    def map(self, data: dict[str, Any], name: str) -> list[ev.Event]:
        kind = data.get("type") or name
        if kind == "content_block_delta":
            events = self._delta(data)
            return events if self.told is None else self._first_content(events)
        if kind == "content_block_start":
            return self._first_content(self._block_start(data))
        if kind == "message_start":
            message = data.get("message") or {}
            self._usage(message.get("usage"))
            if self.input_tokens is not None:
                self.told = ev.Usage(
                    input_tokens=self.input_tokens, cached_input_tokens=self.cached_tokens
                )
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
            return [ev.text_delta(text)] if isinstance(text, str) and text else []
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


def _needs_bytes(part: ContentPart) -> bool:
    """Anthropic takes images and PDFs by URL; any other document it needs inline."""
    return part.type != "image" and part.media_type != "application/pdf"


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
        if request.has_media_urls:
            request = await self.media.inline(request, needs=_needs_bytes)
        body = build_body(request, entry.model or request.model)
        mapper = _EventMapper()
        parser = EventParser()
        events = stream_events(self.client, url, body=body, headers=headers, entry=entry)
        async with contextlib.aclosing(events) as reads:
            async for read in reads:
                for sse in read:
                    for event in parser.parse(sse, functools.partial(mapper.map, name=sse.event)):
                        yield event
                    if mapper.stopped:
                        break
                if mapper.stopped:
                    await read_to_the_end(reads)
                    break
        if not mapper.stopped:
            raise incomplete()
        yield mapper.finish
