"""OpenAI-compatible upstreams (OpenAI, Groq, Together, vLLM, Ollama …): Chat Completions
streamed over SSE with httpx."""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

from shared import events as ev
from shared.errors import UpstreamError
from shared.request import GenerationRequest
from shared.settings import ModelEntry
from shared.sse import ServerSentEvent, SSEDecoder

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_UPSTREAM_LINE_CHARS = 4 * 1024 * 1024
MAX_MALFORMED_EVENTS = 20
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
FINISH_REASONS: dict[str, ev.FinishReason] = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "function_call": "tool_calls",
    "content_filter": "content_filter",
}


def build_body(request: GenerationRequest, upstream_model: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": upstream_model,
        "messages": [m.model_dump(exclude_none=True) for m in request.messages],
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
    return body


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _error_message(payload: bytes) -> str:
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload[:200].decode("utf-8", "replace") or "no body"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return "upstream returned an error"


class _ChunkMapper:
    """Turns parsed `chat.completion.chunk` objects into canonical events."""

    def __init__(self) -> None:
        self.finish_reason: ev.FinishReason | None = None
        self.usage: ev.Usage | None = None
        self.malformed = 0

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

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        url = (entry.base_url or DEFAULT_BASE_URL).rstrip("/") + "/chat/completions"
        headers = {"Accept": "text/event-stream", **entry.extra_headers}
        key = entry.api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        body = build_body(request, entry.model or request.model)
        # The read timeout applies to each read: an upstream silent that long has stalled.
        timeout = httpx.Timeout(
            entry.idle_timeout_s, connect=entry.connect_timeout_s, read=entry.idle_timeout_s
        )
        mapper = _ChunkMapper()
        try:
            async with self.client.stream(
                "POST", url, content=orjson.dumps(body), headers=headers, timeout=timeout
            ) as response:
                if response.status_code >= 400:
                    payload = await response.aread()
                    raise UpstreamError(
                        f"upstream answered {response.status_code}: {_error_message(payload)}",
                        upstream_status=response.status_code,
                        retry_after=parse_retry_after(response.headers.get("retry-after")),
                        retryable=response.status_code in RETRYABLE_STATUSES,
                    )
                decoder = SSEDecoder(max_line_chars=MAX_UPSTREAM_LINE_CHARS)
                done = False
                async for raw in response.aiter_bytes():
                    for sse in self._feed(decoder, raw):
                        done = done or sse.data == "[DONE]"
                        if not done:
                            for event in self._events(sse, mapper):
                                yield event
                    if done:
                        break
        except httpx.ConnectTimeout as exc:
            raise UpstreamError(
                f"could not connect to the upstream within {entry.connect_timeout_s:g}s",
                retryable=True,
                code="upstream_timeout",
            ) from exc
        except httpx.TimeoutException as exc:
            raise UpstreamError(
                f"the upstream went silent for {entry.idle_timeout_s:g}s",
                retryable=True,
                code="upstream_timeout",
            ) from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"upstream connection failed: {type(exc).__name__}",
                retryable=True,
                code="upstream_connect_error",
            ) from exc
        if mapper.finish_reason is None:
            raise UpstreamError(
                "the upstream stream ended before a finish reason",
                retryable=True,
                code="upstream_incomplete",
            )
        yield ev.Finish(reason=mapper.finish_reason, usage=mapper.usage)

    @staticmethod
    def _feed(decoder: SSEDecoder, raw: bytes) -> list[ServerSentEvent]:
        try:
            return list(decoder.feed(raw))
        except ValueError as exc:
            # An endless line means the framing itself is broken: nothing after it is trusted.
            raise UpstreamError(
                f"malformed upstream stream: {exc}", code="upstream_malformed"
            ) from exc

    @staticmethod
    def _events(sse: ServerSentEvent, mapper: _ChunkMapper) -> list[ev.Event]:
        try:
            chunk = orjson.loads(sse.data)
            if not isinstance(chunk, dict):
                raise TypeError("not a JSON object")
            return mapper.map(chunk)
        except UpstreamError:
            raise
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError) as exc:
            # One bad event in a well-framed stream: skip it, unless they keep coming.
            mapper.malformed += 1
            log.warning("skipping a malformed upstream event (%d bytes): %s", len(sse.data), exc)
            if mapper.malformed > MAX_MALFORMED_EVENTS:
                raise UpstreamError(
                    f"the upstream sent more than {MAX_MALFORMED_EVENTS} malformed events",
                    code="upstream_malformed",
                ) from exc
            return []
