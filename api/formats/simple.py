"""The simple token API (`POST /api/chat`): one JSON object per `data:` event.

- token: `{"token", "done": false, "model", "timestamp"}`
- tool call: `{"tool_name", "tool_input", "tool_result": null, "token": "", "done": false}`;
  a call the worker ran on an MCP server comes once, with its `tool_result`
- completion: `{"done": true, "total_tokens", "finish_reason", "response_time"}`
- error: `{"error", "error_code", "done": true, "retry_after"}`

Timestamps come from the events' Redis ids, so a resumed stream renders identically.
"""

from __future__ import annotations

from typing import Any

import orjson

from api.formats import PING, Frame, entry_ms, restore_calls, snapshot_calls
from shared import events as ev
from shared.errors import SpoolError
from shared.request import parse_json_object
from shared.store import JobRecord
from shared.transcript import ToolCall, Transcript, merge_tool_call


def _frame(value: dict[str, Any]) -> Frame:
    return Frame(orjson.dumps(value))


def _tool_input(arguments: str) -> Any:
    parsed = parse_json_object(arguments)
    return arguments if parsed is None else parsed


class SimpleFormat:
    surface = "simple"
    stateful = True  # tool calls are sent whole, once their arguments are complete
    sse_ids = True
    sequence_ids = False
    keepalive = PING

    def renderer(self, render: dict[str, Any]) -> _SimpleRenderer:
        return _SimpleRenderer(render)

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        usage = transcript.usage
        finished = record.finished_at or record.created_at
        return {
            "response": transcript.content,
            "model": record.render["model"],
            "done": record.status.terminal,
            "tool_calls": [
                {
                    "tool_name": c.name,
                    "tool_input": _tool_input(c.final_arguments()),
                    "tool_result": c.result,
                }
                for c in sorted(transcript.tool_calls.values(), key=lambda c: c.index)
            ],
            "total_tokens": usage.total_tokens if usage else 0,
            "finish_reason": transcript.finish_reason,
            "response_time": round(max(0.0, finished - record.render["created_at"]), 3),
        }

    def error_body(self, error: SpoolError) -> dict[str, Any]:
        retry_after = getattr(error, "retry_after", None)
        return {
            "error": error.message,
            "error_code": error.code,
            "done": True,
            "retry_after": retry_after,
        }


class _SimpleRenderer:
    state_tag = "simple.2"  # held calls with their signatures (api.formats.snapshot_calls)

    def __init__(self, render: dict[str, Any]) -> None:
        self.render = render
        self.calls: dict[int, ToolCall] = {}  # fragments of calls not sent yet

    def snapshot(self) -> bytes:
        return snapshot_calls(self.calls)

    def restore(self, state: bytes) -> None:
        self.calls = restore_calls(state)

    def _flush_calls(self) -> list[Frame]:
        out = [
            _frame(
                {
                    "tool_name": call.name,
                    "tool_input": _tool_input(call.arguments),
                    "tool_result": None,
                    "token": "",
                    "done": False,
                }
            )
            for _, call in sorted(self.calls.items())
        ]
        self.calls.clear()
        return out

    def frames(self, entry_id: str, event: ev.Event) -> list[Frame]:
        if isinstance(event, ev.ToolCallDelta):
            if event.server is None:  # a server's call is shown with its result
                merge_tool_call(self.calls, event)
            return []
        out = self._flush_calls()
        at = entry_ms(entry_id) / 1000
        match event:
            case ev.TextDelta():
                out.append(
                    _frame(
                        {
                            "token": event.text,
                            "done": False,
                            "model": self.render["model"],
                            "timestamp": at,
                        }
                    )
                )
            case ev.ToolResult():
                out.append(
                    _frame(
                        {
                            "tool_name": event.name,
                            "tool_input": _tool_input(event.arguments),
                            "tool_result": event.output,
                            "token": "",
                            "done": False,
                        }
                    )
                )
            case ev.Finish():
                usage = event.usage
                out.append(
                    _frame(
                        {
                            "done": True,
                            "total_tokens": usage.total_tokens if usage else 0,
                            "finish_reason": event.reason,
                            "response_time": round(max(0.0, at - self.render["created_at"]), 3),
                        }
                    )
                )
            case ev.Error():
                out.append(
                    _frame(
                        {
                            "error": event.message,
                            "error_code": event.code,
                            "done": True,
                            "retry_after": event.retry_after,
                        }
                    )
                )
        return out
