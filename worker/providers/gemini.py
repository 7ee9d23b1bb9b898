"""Google Gemini (the Gemini API, generativelanguage.googleapis.com): `streamGenerateContent`
with `alt=sse`, over httpx.

Each SSE `data:` is one whole `GenerateContentResponse`; there is no `[DONE]`. Function calls
arrive whole (name and an `args` object), so each becomes a single `ToolCallDelta`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from typing import Any

import httpx
import orjson

from shared import events as ev
from shared.errors import UpstreamError
from shared.request import GenerationRequest, Message, parse_json_object
from shared.settings import ModelEntry
from worker.providers.http import EventParser, incomplete, stream_events
from worker.providers.media import DEFAULT_MAX_MEDIA_BYTES, MediaFetcher

DEFAULT_BASE_URL = "https://generativelanguage.googleapis.com/v1beta"
FINISH_REASONS: dict[str, ev.FinishReason] = {
    "STOP": "stop",
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}
TOOL_MODES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}
RETRYABLE_ERROR_CODES = frozenset({429, 500, 503, 504})


def _tool_name(message: Message, call_names: dict[str, str]) -> str:
    if message.name:
        return message.name
    if message.tool_call_id:
        return call_names.get(message.tool_call_id, "")
    return ""


def _contents(request: GenerationRequest) -> list[dict[str, Any]]:
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}  # tool call id -> function name, for tool results
    for message in request.turns:
        parts: list[dict[str, Any]] = []
        if message.role == "tool":
            role = "user"
            response = parse_json_object(message.content) if message.content.strip() else None
            if response is None:
                response = {"result": message.content}
            name = _tool_name(message, call_names)
            parts.append({"functionResponse": {"name": name, "response": response}})
        elif message.role == "assistant":
            role = "model"
            if message.content:
                parts.append({"text": message.content})
            for call in message.tool_calls or []:
                call_names[call.id] = call.name
                args = parse_json_object(call.arguments)
                parts.append({"functionCall": {"name": call.name, "args": args or {}}})
        else:
            role = "user"
            if message.content:
                parts.append({"text": message.content})
        if not parts:
            continue
        # Gemini wants alternating turns: parallel tool results, or a tool result followed
        # by a user message, become one "user" turn.
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents


def _tool_config(choice: str) -> dict[str, Any]:
    mode = TOOL_MODES.get(choice)
    if mode is not None:
        return {"functionCallingConfig": {"mode": mode}}
    return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [choice]}}


def build_body(request: GenerationRequest) -> dict[str, Any]:
    body: dict[str, Any] = {"contents": _contents(request)}
    system = request.system_prompt
    if system:
        body["systemInstruction"] = {"parts": [{"text": system}]}
    if request.tools:
        body["tools"] = [
            {
                "functionDeclarations": [
                    {
                        "name": t.name,
                        **({"description": t.description} if t.description else {}),
                        "parameters": t.parameters,
                    }
                    for t in request.tools
                ]
            }
        ]
        if request.tool_choice is not None:
            body["toolConfig"] = _tool_config(request.tool_choice)
    config: dict[str, Any] = {}
    if request.max_tokens is not None:
        config["maxOutputTokens"] = request.max_tokens
    if request.temperature is not None:
        config["temperature"] = request.temperature
    if request.top_p is not None:
        config["topP"] = request.top_p
    if request.stop:
        config["stopSequences"] = request.stop
    if request.seed is not None:
        config["seed"] = request.seed
    if request.reasoning:
        thinking: dict[str, Any] = {"includeThoughts": True}
        if request.reasoning_budget is not None:
            thinking["thinkingBudget"] = request.reasoning_budget
        config["thinkingConfig"] = thinking
    if config:
        body["generationConfig"] = config
    return body


def _error(error: Any) -> UpstreamError:
    if not isinstance(error, dict):
        return UpstreamError(f"upstream error mid-stream: {error}", code="upstream_error")
    status: int | None
    try:
        status = int(error["code"])
    except (KeyError, TypeError, ValueError):
        status = None
    message = error.get("message") or error.get("status") or "unknown error"
    return UpstreamError(
        f"upstream error mid-stream: {message}",
        upstream_status=status,
        retryable=status in RETRYABLE_ERROR_CODES,
        code="upstream_error",
    )


class _ResponseMapper:
    """Turns parsed `GenerateContentResponse` objects into canonical events."""

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.blocked = False
        self.usage: ev.Usage | None = None
        self.calls = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None or self.blocked

    def finish(self) -> ev.Finish:
        if self.finish_reason is None:  # the prompt itself was blocked
            reason: ev.FinishReason = "content_filter"
        else:
            reason = FINISH_REASONS.get(self.finish_reason, "stop")
            if reason == "stop" and self.calls:
                reason = "tool_calls"
        return ev.Finish(reason=reason, usage=self.usage)

    def map(self, response: dict[str, Any]) -> list[ev.Event]:
        if response.get("error"):
            raise _error(response["error"])
        usage = response.get("usageMetadata")
        if isinstance(usage, dict):
            self.usage = ev.Usage(
                input_tokens=int(usage.get("promptTokenCount") or 0),
                output_tokens=int(usage.get("candidatesTokenCount") or 0)
                + int(usage.get("thoughtsTokenCount") or 0),
            )
        feedback = response.get("promptFeedback")
        if isinstance(feedback, dict) and feedback.get("blockReason"):
            self.blocked = True
        out: list[ev.Event] = []
        for candidate in response.get("candidates") or []:
            if not isinstance(candidate, dict) or candidate.get("index", 0) != 0:
                continue
            content = candidate.get("content")
            parts = content.get("parts") if isinstance(content, dict) else None
            for part in parts or []:
                if isinstance(part, dict):
                    out.extend(self._part(part))
            reason = candidate.get("finishReason")
            if isinstance(reason, str) and reason:
                self.finish_reason = reason
        return out

    def _part(self, part: dict[str, Any]) -> list[ev.Event]:
        call = part.get("functionCall")
        if isinstance(call, dict):
            index = self.calls
            self.calls += 1
            args = call.get("args")
            return [
                ev.ToolCallDelta(
                    index=index,
                    id=str(call.get("id") or f"call_{index}"),
                    name=str(call.get("name") or ""),
                    arguments=orjson.dumps(args if isinstance(args, dict) else {}).decode(),
                )
            ]
        text = part.get("text")
        if not isinstance(text, str) or not text:
            return []
        if part.get("thought") is True:
            return [ev.ReasoningDelta(text=text)]
        return [ev.TextDelta(text=text)]


class GeminiProvider:
    name = "gemini"

    def __init__(self, client: httpx.AsyncClient, media: MediaFetcher | None = None) -> None:
        self.client = client
        self.media = media or MediaFetcher(client, DEFAULT_MAX_MEDIA_BYTES)

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        model = (entry.model or request.model).removeprefix("models/")
        base = (entry.base_url or DEFAULT_BASE_URL).rstrip("/")
        url = f"{base}/models/{model}:streamGenerateContent"
        headers = {}
        key = entry.api_key()
        if key:
            headers["x-goog-api-key"] = key
        mapper = _ResponseMapper()
        parser = EventParser()
        events = stream_events(
            self.client,
            url,
            body=build_body(request),
            headers=headers,
            entry=entry,
            params={"alt": "sse"},
        )
        async with contextlib.aclosing(events) as sses:
            async for sse in sses:
                for event in parser.parse(sse, mapper.map):
                    yield event
        if not mapper.done:
            raise incomplete()
        yield mapper.finish()
