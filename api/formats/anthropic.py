"""Anthropic Messages: named SSE events `message_start`, `ping`, `content_block_start`,
`content_block_delta` (`text_delta`, `thinking_delta`, `signature_delta`,
`input_json_delta`), `content_block_stop`, `message_delta`, `message_stop`, and `error`."""

from __future__ import annotations

import re
from typing import Any

import orjson

from api.formats import PING, Frame
from shared import events as ev
from shared.errors import SpoolError, error_status
from shared.request import parse_json_object
from shared.store import JobRecord
from shared.transcript import ToolCall, Transcript

STOP_REASONS: dict[str, str] = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "content_filter": "refusal",
    "cancelled": "cancelled",
}
ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    410: "invalid_request_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    return ERROR_TYPES.get(status, "api_error")


def _frame(name: str, value: dict[str, Any]) -> Frame:
    return Frame(orjson.dumps({"type": name, **value}), event=name)


def usage_object(transcript_usage: ev.Usage | None) -> dict[str, int]:
    """Anthropic counts input read from the cache apart from the rest of the input."""
    usage = transcript_usage or ev.Usage()
    cached = usage.cached_input_tokens
    if cached is None:
        return {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    return {
        "input_tokens": max(0, usage.input_tokens - cached),
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": cached,
    }


_NOT_ID = re.compile(r"[^A-Za-z0-9_-]")


def tool_use_id(call_id: str | None, index: int) -> str:
    """A tool call's id as Anthropic's look (`toolu_…`), the same wherever it is rendered:
    another provider's id gets the prefix, with what Anthropic's ids cannot hold replaced."""
    if not call_id:
        return f"toolu_{index}"
    if call_id.startswith("toolu_"):
        return call_id
    return "toolu_" + _NOT_ID.sub("_", call_id)


class AnthropicFormat:
    surface = "anthropic.messages"
    stateful = True  # content blocks are numbered and opened/closed as the stream goes
    sse_ids = True
    sequence_ids = False
    keepalive = PING

    def renderer(self, render: dict[str, Any]) -> _MessagesRenderer:
        return _MessagesRenderer(render)

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        content: list[dict[str, Any]] = []
        if transcript.reasoning:
            content.append(
                {
                    "type": "thinking",
                    "thinking": transcript.reasoning_content,
                    "signature": transcript.reasoning_signature or "",
                }
            )
        if transcript.text:
            content.append({"type": "text", "text": transcript.content})
        for call in sorted(transcript.tool_calls.values(), key=lambda c: c.index):
            if call.server is not None:
                content += mcp_blocks(call)
                continue
            content.append(
                {
                    "type": "tool_use",
                    "id": tool_use_id(call.id, call.index),
                    "name": call.name,
                    "input": parse_json_object(call.arguments) or {},
                }
            )
        reason = transcript.finish_reason
        return {
            "id": record.render["id"],
            "type": "message",
            "role": "assistant",
            "model": record.render["model"],
            "content": content,
            "stop_reason": STOP_REASONS.get(reason) if reason else None,
            "stop_sequence": None,
            "usage": usage_object(transcript.usage),
        }

    def error_body(self, error: SpoolError) -> dict[str, Any]:
        return {
            "type": "error",
            "error": {"type": error_type(error.status_code), "message": error.message},
        }


def mcp_use(call_id: str, index: int, name: str, server: str, arguments: str) -> dict[str, Any]:
    return {
        "type": "mcp_tool_use",
        "id": tool_use_id(call_id, index),
        "name": name,
        "server_name": server,
        "input": parse_json_object(arguments) or {},
    }


def mcp_result(call_id: str, index: int, output: str, is_error: bool) -> dict[str, Any]:
    return {
        "type": "mcp_tool_result",
        "tool_use_id": tool_use_id(call_id, index),
        "is_error": is_error,
        "content": [{"type": "text", "text": output}],
    }


def mcp_blocks(call: ToolCall) -> list[dict[str, Any]]:
    """A call the worker ran on an MCP server, as Anthropic's MCP connector shows one."""
    use = mcp_use(call.id, call.index, call.name, call.server or "", call.arguments)
    return [use, mcp_result(call.id, call.index, call.result or "", call.is_error)]


class _MessagesRenderer:
    state_tag = "anthropic.messages.1"

    def __init__(self, render: dict[str, Any]) -> None:
        self.render = render
        self.started = False
        self.next_index = 0
        self.open: tuple[str, int] | None = None  # (block kind, tool call index or -1)

    def snapshot(self) -> bytes:
        return orjson.dumps([self.started, self.next_index, self.open])

    def restore(self, state: bytes) -> None:
        started, next_index, open_block = orjson.loads(state)
        self.started = bool(started)
        self.next_index = int(next_index)
        self.open = (str(open_block[0]), int(open_block[1])) if open_block else None

    def _start(self, event: ev.Event) -> list[Frame]:
        if self.started:
            return []
        self.started = True
        told = event.input_tokens if isinstance(event, ev.Start) else None
        message = {
            "id": self.render["id"],
            "type": "message",
            "role": "assistant",
            "model": self.render["model"],
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": told or 0, "output_tokens": 0},
        }
        return [_frame("message_start", {"message": message}), _frame("ping", {})]

    def _close(self) -> list[Frame]:
        if self.open is None:
            return []
        self.open = None
        return [_frame("content_block_stop", {"index": self.next_index - 1})]

    def _block(self, kind: str, key: int, content_block: dict[str, Any]) -> list[Frame]:
        if self.open == (kind, key):
            return []
        out = self._close()
        out.append(
            _frame(
                "content_block_start", {"index": self.next_index, "content_block": content_block}
            )
        )
        self.open = (kind, key)
        self.next_index += 1
        return out

    def _delta(self, delta: dict[str, Any]) -> Frame:
        return _frame("content_block_delta", {"index": self.next_index - 1, "delta": delta})

    def frames(self, entry_id: str, event: ev.Event) -> list[Frame]:
        if isinstance(event, ev.Error):
            status = event.status or error_status(event.code)
            error = {"type": error_type(status), "message": event.message}
            return [_frame("error", {"error": error})]
        out = self._start(event)
        match event:
            case ev.TextDelta():
                out += self._block("text", -1, {"type": "text", "text": ""})
                out.append(self._delta({"type": "text_delta", "text": event.text}))
            case ev.ReasoningDelta():
                thinking = {"type": "thinking", "thinking": "", "signature": ""}
                out += self._block("thinking", -1, thinking)
                if event.text:
                    out.append(self._delta({"type": "thinking_delta", "thinking": event.text}))
                if event.signature:
                    out.append(
                        self._delta({"type": "signature_delta", "signature": event.signature})
                    )
            case ev.ToolCallDelta():
                tool_use: dict[str, Any] = {
                    "type": "tool_use",
                    "id": tool_use_id(event.id, event.index),
                    "name": event.name or "",
                    "input": {},
                }
                if event.server is not None:
                    tool_use["type"] = "mcp_tool_use"
                    tool_use["server_name"] = event.server
                out += self._block("tool_use", event.index, tool_use)
                if event.arguments:
                    out.append(
                        self._delta({"type": "input_json_delta", "partial_json": event.arguments})
                    )
            case ev.ToolsRunning():
                out += self._close()  # the calls are whole: they run now
            case ev.ToolResult():
                result = mcp_result(event.id, event.index, event.output, event.is_error)
                out += self._block("mcp_tool_result", event.index, result)
                out += self._close()
            case ev.Finish():
                out += self._close()
                delta = {
                    "stop_reason": STOP_REASONS.get(event.reason, event.reason),
                    "stop_sequence": None,
                }
                out.append(
                    _frame("message_delta", {"delta": delta, "usage": usage_object(event.usage)})
                )
                out.append(_frame("message_stop", {}))
        return out
