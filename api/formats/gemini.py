"""Gemini `streamGenerateContent?alt=sse`: one `GenerateContentResponse` per `data:` event,
`finishReason` and `usageMetadata` on the last one, no `[DONE]`. Function calls go out
whole (Gemini never streams them in fragments), so their fragments are held until the
call is complete. Thought signatures ride on the part they sign (`thoughtSignature`): on
function calls, and on thought parts for reasoning deltas that carry one."""

from __future__ import annotations

from typing import Any

import orjson

from api.formats import Frame, restore_calls, snapshot_calls
from shared import events as ev
from shared.errors import SpoolError, error_status
from shared.request import parse_json_object
from shared.store import JobRecord
from shared.transcript import ToolCall, Transcript, merge_tool_call

FINISH_REASONS: dict[str, str] = {
    "stop": "STOP",
    "tool_calls": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "cancelled": "OTHER",
}
STATUSES: dict[int, str] = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    402: "RESOURCE_EXHAUSTED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    410: "NOT_FOUND",
    413: "INVALID_ARGUMENT",
    422: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def function_call_part(call: ToolCall) -> dict[str, Any]:
    part: dict[str, Any] = {
        "functionCall": {
            "id": call.id,
            "name": call.name,
            "args": parse_json_object(call.arguments) or {},
        }
    }
    if call.signature:
        part["thoughtSignature"] = call.signature
    return part


def thought_part(text: str, signature: str | None) -> dict[str, Any]:
    part: dict[str, Any] = {"text": text, "thought": True}
    if signature:
        part["thoughtSignature"] = signature
    return part


def usage_metadata(usage: ev.Usage | None) -> dict[str, int]:
    usage = usage or ev.Usage()
    out = {
        "promptTokenCount": usage.input_tokens,
        "candidatesTokenCount": usage.output_tokens - (usage.reasoning_tokens or 0),
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cached_input_tokens is not None:
        out["cachedContentTokenCount"] = usage.cached_input_tokens
    if usage.reasoning_tokens is not None:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


def logprobs_result(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """OpenAI-form log probabilities (`TextDelta.logprobs`) as Gemini's `logprobsResult`."""
    return {
        "topCandidates": [
            {
                "candidates": [
                    {"token": t.get("token"), "logProbability": t.get("logprob")}
                    for t in e.get("top_logprobs") or []
                ]
            }
            for e in entries
        ],
        "chosenCandidates": [
            {"token": e.get("token"), "logProbability": e.get("logprob")} for e in entries
        ],
    }


def error_object(status: int, message: str) -> dict[str, Any]:
    return {
        "error": {"code": status, "message": message, "status": STATUSES.get(status, "UNKNOWN")}
    }


class GeminiFormat:
    """The official google-genai SDK reads any line other than `data:` or a blank line as
    raw JSON, so this surface sends neither `id:` lines nor comments: each event's resume
    id travels in `responseId` (the SDK's `response_id`), and keep-alives are blank lines,
    which every SSE client ignores and proxies still count as traffic."""

    surface = "gemini"
    stateful = True  # function call fragments are held until the call is whole
    sse_ids = False
    sequence_ids = False
    keepalive = b"\n"

    def renderer(self, render: dict[str, Any]) -> _GeminiRenderer:
        return _GeminiRenderer(render)

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        if transcript.reasoning_content or transcript.reasoning_signature:
            parts.append(thought_part(transcript.reasoning_content, transcript.reasoning_signature))
        if transcript.text:
            parts.append({"text": transcript.content})
        parts += [function_call_part(c) for c in transcript.client_calls]
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
        if transcript.logprobs:
            candidate["logprobsResult"] = logprobs_result(transcript.logprobs)
        if transcript.finish_reason:
            candidate["finishReason"] = FINISH_REASONS[transcript.finish_reason]
        return {
            "candidates": [candidate],
            "usageMetadata": usage_metadata(transcript.usage),
            "modelVersion": record.render["model"],
            "responseId": record.render["id"],
        }

    def error_body(self, error: SpoolError) -> dict[str, Any]:
        return error_object(error.status_code, error.message)


class _GeminiRenderer:
    state_tag = "gemini.2"  # held calls with their signatures (api.formats.snapshot_calls)

    def __init__(self, render: dict[str, Any]) -> None:
        self.render = render
        self.calls: dict[int, ToolCall] = {}

    def snapshot(self) -> bytes:
        return snapshot_calls(self.calls)

    def restore(self, state: bytes) -> None:
        self.calls = restore_calls(state)

    def _response(
        self,
        entry_id: str,
        parts: list[dict[str, Any]],
        usage: dict[str, int] | None = None,
        **candidate: Any,
    ) -> Frame:
        body: dict[str, Any] = {
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0, **candidate}],
            "modelVersion": self.render["model"],
            "responseId": entry_id,
        }
        if usage is not None:
            body["usageMetadata"] = usage
        return Frame(orjson.dumps(body))

    def _whole_calls(self) -> list[dict[str, Any]]:
        parts = [function_call_part(self.calls[i]) for i in sorted(self.calls)]
        self.calls.clear()
        return parts

    def frames(self, entry_id: str, event: ev.Event) -> list[Frame]:
        match event:
            case ev.ToolCallDelta():
                if event.server is None:  # a call the worker runs is not the client's
                    merge_tool_call(self.calls, event)
                return []
            case ev.TextDelta():
                parts = [*self._whole_calls(), {"text": event.text}]
                if event.logprobs:
                    logprobs = logprobs_result(event.logprobs)
                    return [self._response(entry_id, parts, logprobsResult=logprobs)]
                return [self._response(entry_id, parts)]
            case ev.ReasoningDelta() if event.text or event.signature:
                thought = thought_part(event.text, event.signature)
                return [self._response(entry_id, [*self._whole_calls(), thought])]
            case ev.Finish():
                parts = self._whole_calls() or [{"text": ""}]
                usage = usage_metadata(event.usage)
                finish = FINISH_REASONS[event.reason]
                return [self._response(entry_id, parts, usage, finishReason=finish)]
            case ev.Error():
                status = event.status or error_status(event.code)
                return [Frame(orjson.dumps(error_object(status, event.message)))]
            case _:
                return []
