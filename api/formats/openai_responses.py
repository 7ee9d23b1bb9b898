"""OpenAI Responses: named `response.*` events, each with a `sequence_number` counting from
0 that is also its SSE id (the resume cursor), and the response object they describe.

A stream opens with `response.created` (and `response.queued` in background mode), which
the tail sends before reading anything, so they are numbered 0 and 1 whether or not a
worker has started. The stream's events follow: output items (a reasoning summary, a
message, function calls) are added, filled with deltas and closed with their whole text,
then one of `response.completed`, `response.incomplete` (cut at `max_output_tokens`, by a
content filter, or cancelled: status `cancelled`) or `response.failed` ends it.
"""

from __future__ import annotations

from typing import Any

import orjson

from api.formats import PING, Frame, entry_ms
from shared import events as ev
from shared.errors import SpoolError
from shared.store import JobRecord, Status
from shared.transcript import Transcript

SURFACE = "openai.responses"
RESPONSE_PREFIX = "resp_"

# The item types of a response's output, by the prefix of their ids.
_ITEM_PREFIX = {
    "message": "msg",
    "reasoning": "rs",
    "function_call": "fc",
    "mcp_call": "mcp",
    "mcp_list_tools": "mcpl",
}
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def stream_id_of(response_id: str) -> str:
    return response_id.removeprefix(RESPONSE_PREFIX)


def item_id(render: dict[str, Any], kind: str, output_index: int) -> str:
    """Output item ids: stable for a response whichever replica renders it, however often."""
    return f"{_ITEM_PREFIX[kind]}_{stream_id_of(render['id'])}_{output_index}"


def usage_object(usage: ev.Usage | None) -> dict[str, Any] | None:
    if usage is None:
        return None
    return {
        "input_tokens": usage.input_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_input_tokens or 0},
        "output_tokens": usage.output_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens or 0},
        "total_tokens": usage.total_tokens,
    }


def response_object(
    render: dict[str, Any],
    status: str,
    output: list[dict[str, Any]],
    *,
    usage: ev.Usage | None = None,
    error: dict[str, Any] | None = None,
    incomplete: str | None = None,
    completed_at: int | None = None,
) -> dict[str, Any]:
    """The response object, with the request's own settings echoed from `render`."""
    return {
        "id": render["id"],
        "object": "response",
        "created_at": render["created_at"],
        "status": status,
        "background": render.get("background", False),
        "completed_at": completed_at,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "model": render["model"],
        "output": output,
        **render.get("echo", {}),
        "usage": usage_object(usage),
    }


def message_item(render: dict[str, Any], index: int, text: str, status: str) -> dict[str, Any]:
    part: dict[str, Any] = {"type": "output_text", "text": text, "annotations": []}
    if render.get("logprobs"):
        part["logprobs"] = []
    return {
        "id": item_id(render, "message", index),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [part],
    }


def reasoning_item(
    render: dict[str, Any], index: int, text: str, signature: str | None, status: str
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": item_id(render, "reasoning", index),
        "type": "reasoning",
        "status": status,
        "summary": [{"type": "summary_text", "text": text}],
    }
    if signature and render.get("encrypted_reasoning"):
        # A signed thinking block's signature: sent back as input, it lets the next turn
        # hand the provider its own reasoning unchanged.
        item["encrypted_content"] = signature
    return item


def call_item(
    render: dict[str, Any], index: int, call_id: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    return {
        "id": item_id(render, "function_call", index),
        "type": "function_call",
        "status": status,
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }


def mcp_item(
    render: dict[str, Any], index: int, server: str, name: str, arguments: str, status: str
) -> dict[str, Any]:
    """A call the worker runs on an MCP server: its output comes with it once it ran."""
    return {
        "id": item_id(render, "mcp_call", index),
        "type": "mcp_call",
        "status": status,
        "server_label": server,
        "name": name,
        "arguments": arguments,
        "output": None,
        "error": None,
    }


def mcp_outcome(item: dict[str, Any], output: str, is_error: bool) -> None:
    if is_error:
        item["status"] = "failed"
        item["error"] = {
            "type": "mcp_tool_execution_error",
            "content": [{"type": "text", "text": output}],
        }
    else:
        item["status"] = "completed"
        item["output"] = output


def list_item(render: dict[str, Any], index: int, server: str, tools: Any) -> dict[str, Any]:
    return {
        "id": item_id(render, "mcp_list_tools", index),
        "type": "mcp_list_tools",
        "server_label": server,
        "tools": tools,
        "error": None,
    }


def error_object(error: ev.Error) -> dict[str, Any]:
    return {"code": error.code, "message": error.message}


def output_items(
    render: dict[str, Any], transcript: Transcript, status: str
) -> list[dict[str, Any]]:
    """A transcript's output as items, each with `status`: its reasoning, its text, then
    its calls (the order a stream adds them in)."""
    items: list[dict[str, Any]] = []
    for server, tools in transcript.server_tools.items():
        items.append(list_item(render, len(items), server, tools))
    if transcript.reasoning or transcript.reasoning_signature:
        text, signature = transcript.reasoning_content, transcript.reasoning_signature
        items.append(reasoning_item(render, len(items), text, signature, status))
    for call in transcript.server_calls:
        item = mcp_item(render, len(items), call.server or "", call.name, call.arguments, status)
        if call.result is not None:
            mcp_outcome(item, call.result, call.is_error)
        items.append(item)
    if transcript.text:
        items.append(message_item(render, len(items), transcript.content, status))
        if transcript.logprobs and render.get("logprobs"):
            items[-1]["content"][0]["logprobs"] = transcript.logprobs
    for call in transcript.client_calls:
        arguments = call.arguments if status == "in_progress" else call.final_arguments()
        items.append(call_item(render, len(items), call.id, call.name, arguments, status))
    return items


def item_status(response_status: str) -> str:
    """Output items of a response that ended short of its end are `incomplete`."""
    if response_status in ("queued", "in_progress"):
        return "in_progress"
    return "completed" if response_status == "completed" else "incomplete"


def terminal_status(status: Status, transcript: Transcript) -> tuple[str, str | None]:
    """The response's status, and why it is incomplete when it is."""
    match status:
        case Status.QUEUED:
            return "queued", None
        case Status.RUNNING:
            return "in_progress", None
        case Status.FAILED:
            return "failed", None
        case Status.CANCELLED:
            return "cancelled", None
    reason = INCOMPLETE_REASONS.get(transcript.finish_reason or "")
    if transcript.finish_reason == "cancelled":
        return "cancelled", None
    return ("incomplete", reason) if reason else ("completed", None)


class OpenAIResponsesFormat:
    surface = SURFACE
    stateful = True
    sse_ids = True
    sequence_ids = True
    keepalive = PING

    def renderer(self, render: dict[str, Any]) -> ResponsesRenderer:
        return ResponsesRenderer(render)

    def opening(self, render: dict[str, Any]) -> list[Frame]:
        """What a stream starts with before any of its events: numbered 0 (and 1)."""
        status = "queued" if render.get("background") else "in_progress"
        created = response_object(render, status, [])
        frames = [_frame("response.created", 0, {"response": created})]
        if render.get("background"):
            frames.append(_frame("response.queued", 1, {"response": created}))
        return frames

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        render = record.render
        status, incomplete = terminal_status(record.status, transcript)
        output = output_items(render, transcript, item_status(status))
        error = error_object(transcript.error) if transcript.error else None
        completed_at = (
            int(record.finished_at) if status == "completed" and record.finished_at else None
        )
        return response_object(
            render,
            status,
            output,
            usage=transcript.usage,
            error=error,
            incomplete=incomplete,
            completed_at=completed_at,
        )

    def error_body(self, error: SpoolError) -> dict[str, Any]:
        return {
            "error": {
                "message": error.message,
                "type": error.type,
                "code": error.code,
                "param": None,
            }
        }


def _frame(kind: str, seq: int, fields: dict[str, Any]) -> Frame:
    return Frame(
        orjson.dumps({"type": kind, "sequence_number": seq, **fields}), event=kind, id=str(seq)
    )


class ResponsesRenderer:
    """Renders one response's events. Its state: the next sequence number, the output
    items so far (the last one possibly still open, its text kept as pieces until it
    closes), which item each tool call index went to, and the latest usage."""

    state_tag = "responses.2"
    __slots__ = ("awaiting", "calls", "items", "n", "open", "pieces", "render", "usage")

    def __init__(self, render: dict[str, Any]) -> None:
        self.render = render
        self.n = 2 if render.get("background") else 1  # after the opening frames
        self.items: list[dict[str, Any]] = []
        self.open = False  # whether the last item is still being written
        self.pieces: list[str] = []  # the open item's text or arguments so far
        self.calls: dict[int, int] = {}  # tool call index -> output index
        self.awaiting: list[int] = []  # MCP calls closed, their results yet to come
        self.usage: ev.Usage | None = None

    # -- state ---------------------------------------------------------------------------

    def snapshot(self) -> bytes:
        return orjson.dumps(
            {
                "n": self.n,
                "items": self.items,
                "open": self.open,
                "pieces": "".join(self.pieces),
                "calls": [[k, v] for k, v in self.calls.items()],
                "awaiting": self.awaiting,
                "usage": self.usage.model_dump(exclude_none=True) if self.usage else None,
            }
        )

    def restore(self, state: bytes) -> None:
        data = orjson.loads(state)
        self.n = int(data["n"])
        self.items = data["items"]
        self.open = bool(data["open"])
        self.pieces = [data["pieces"]] if data["pieces"] else []
        self.calls = {int(k): int(v) for k, v in data["calls"]}
        self.awaiting = [int(i) for i in data["awaiting"]]
        self.usage = ev.Usage(**data["usage"]) if data["usage"] else None

    # -- rendering -----------------------------------------------------------------------

    def _emit(self, out: list[Frame], kind: str, **fields: Any) -> None:
        out.append(_frame(kind, self.n, fields))
        self.n += 1

    def frames(self, entry_id: str, event: ev.Event) -> list[Frame]:
        out: list[Frame] = []
        match event:
            case ev.Start():
                response = response_object(self.render, "in_progress", [])
                self._emit(out, "response.in_progress", response=response)
            case ev.TextDelta():
                self._text(out, event)
            case ev.ReasoningDelta():
                self._reasoning(out, event)
            case ev.ToolCallDelta():
                self._call(out, event)
            case ev.ToolsRunning():
                self._close(out)  # the calls are whole: they run now
            case ev.ToolResult():
                self._result(out, event)
            case ev.ServerTools():
                self._listing(out, event)
            case ev.Usage():
                self.usage = event
            case ev.Finish():
                self.usage = event.usage or self.usage
                self._close(
                    out, "completed" if event.reason in ("stop", "tool_calls") else "incomplete"
                )
                self._unfinished(out)
                self._finish(out, event.reason, entry_ms(entry_id) // 1000)
            case ev.Error():
                self._close(out, "incomplete")
                self._unfinished(out)
                response = response_object(
                    self.render, "failed", self.items, usage=self.usage, error=error_object(event)
                )
                self._emit(out, "response.failed", response=response)
            case _:
                pass
        return out

    def _current(self, kind: str) -> dict[str, Any] | None:
        if self.open and self.items[-1]["type"] == kind:
            return self.items[-1]
        return None

    def _add(self, out: list[Frame], item: dict[str, Any]) -> int:
        self._close(out)
        index = len(self.items)
        self.items.append(item)
        self.open = True
        self._emit(out, "response.output_item.added", output_index=index, item=item)
        return index

    def _text(self, out: list[Frame], event: ev.TextDelta) -> None:
        item = self._current("message")
        if item is None:
            index = len(self.items)
            item = message_item(self.render, index, "", "in_progress")
            self._add(out, item)
            part = item["content"][0]
            self._emit(
                out,
                "response.content_part.added",
                item_id=item["id"],
                output_index=index,
                content_index=0,
                part=part,
            )
        if event.logprobs and self.render.get("logprobs"):
            item["content"][0].setdefault("logprobs", []).extend(event.logprobs)
        self.pieces.append(event.text)
        self._emit(
            out,
            "response.output_text.delta",
            item_id=item["id"],
            output_index=len(self.items) - 1,
            content_index=0,
            delta=event.text,
            logprobs=event.logprobs or [],
        )

    def _reasoning(self, out: list[Frame], event: ev.ReasoningDelta) -> None:
        item = self._current("reasoning")
        index = len(self.items) - 1
        if item is None:
            index = len(self.items)
            item = reasoning_item(self.render, index, "", None, "in_progress")
            self._add(out, item)
            self._emit(
                out,
                "response.reasoning_summary_part.added",
                item_id=item["id"],
                output_index=index,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        if event.signature:
            item["signature"] = item.get("signature", "") + event.signature
        if event.text:
            self.pieces.append(event.text)
            self._emit(
                out,
                "response.reasoning_summary_text.delta",
                item_id=item["id"],
                output_index=index,
                summary_index=0,
                delta=event.text,
            )

    def _call(self, out: list[Frame], event: ev.ToolCallDelta) -> None:
        index = self.calls.get(event.index)
        kind = "response.function_call_arguments.delta"
        if index is None:
            index = len(self.items)
            self.calls[event.index] = index
            name = event.name or ""
            if event.server is not None:
                item = mcp_item(self.render, index, event.server, name, "", "in_progress")
                self._add(out, item)
                self._emit(
                    out, "response.mcp_call.in_progress", item_id=item["id"], output_index=index
                )
            else:
                item = call_item(self.render, index, event.id or "", name, "", "in_progress")
                self._add(out, item)
        elif not (self.open and index == len(self.items) - 1):
            # A late fragment of a call already closed (providers send calls one by one):
            # its arguments were final when it closed.
            return
        if self.items[index]["type"] == "mcp_call":
            kind = "response.mcp_call_arguments.delta"
        if event.arguments:
            self.pieces.append(event.arguments)
            self._emit(
                out,
                kind,
                item_id=self.items[index]["id"],
                output_index=index,
                delta=event.arguments,
            )

    def _close(self, out: list[Frame], status: str = "completed") -> None:
        """Close the open item: its text is whole now (`incomplete` when the response
        ended before the item did)."""
        if not self.open:
            return
        self.open = False
        index = len(self.items) - 1
        item = self.items[index]
        text = "".join(self.pieces)
        self.pieces = []
        fields = {"item_id": item["id"], "output_index": index}
        if item["type"] == "message":
            part = item["content"][0]
            part["text"] = text
            self._emit(
                out,
                "response.output_text.done",
                **fields,
                content_index=0,
                text=text,
                logprobs=part.get("logprobs", []),
            )
            self._emit(out, "response.content_part.done", **fields, content_index=0, part=part)
        elif item["type"] == "reasoning":
            signature = item.pop("signature", None)
            summary = {"type": "summary_text", "text": text}
            self._emit(
                out, "response.reasoning_summary_text.done", **fields, summary_index=0, text=text
            )
            self._emit(
                out, "response.reasoning_summary_part.done", **fields, summary_index=0, part=summary
            )
            item.update(reasoning_item(self.render, index, text, signature, status))
        elif item["type"] == "mcp_call":
            item["arguments"] = text or "{}"
            self._emit(
                out, "response.mcp_call_arguments.done", **fields, arguments=item["arguments"]
            )
            self.awaiting.append(index)  # done once its result is in
            return
        else:
            item["arguments"] = text or "{}"
            self._emit(
                out,
                "response.function_call_arguments.done",
                **fields,
                name=item["name"],
                arguments=item["arguments"],
            )
        item["status"] = status
        self._emit(out, "response.output_item.done", output_index=index, item=item)

    def _result(self, out: list[Frame], event: ev.ToolResult) -> None:
        index = self.calls.get(event.index)
        if index is None or self.items[index]["type"] != "mcp_call":
            return
        if self.open and index == len(self.items) - 1:
            self._close(out)
        if index not in self.awaiting:
            return
        self.awaiting.remove(index)
        item = self.items[index]
        mcp_outcome(item, event.output, event.is_error)
        kind = "response.mcp_call.failed" if event.is_error else "response.mcp_call.completed"
        self._emit(out, kind, item_id=item["id"], output_index=index)
        self._emit(out, "response.output_item.done", output_index=index, item=item)

    def _listing(self, out: list[Frame], event: ev.ServerTools) -> None:
        self._close(out)
        index = len(self.items)
        item = list_item(self.render, index, event.server, event.tools)
        self.items.append(item)
        fields = {"item_id": item["id"], "output_index": index}
        self._emit(out, "response.output_item.added", output_index=index, item=item)
        self._emit(out, "response.mcp_list_tools.in_progress", **fields)
        self._emit(out, "response.mcp_list_tools.completed", **fields)
        self._emit(out, "response.output_item.done", output_index=index, item=item)

    def _unfinished(self, out: list[Frame]) -> None:
        """MCP calls the response ended before they ran: done, incomplete."""
        for index in self.awaiting:
            item = self.items[index]
            item["status"] = "incomplete"
            self._emit(out, "response.output_item.done", output_index=index, item=item)
        self.awaiting = []

    def _finish(self, out: list[Frame], reason: ev.FinishReason, at: int) -> None:
        if reason == "cancelled":
            kind, status, incomplete = "response.incomplete", "cancelled", None
        elif reason in INCOMPLETE_REASONS:
            kind, status, incomplete = (
                "response.incomplete",
                "incomplete",
                INCOMPLETE_REASONS[reason],
            )
        else:
            kind, status, incomplete = "response.completed", "completed", None
        response = response_object(
            self.render,
            status,
            self.items,
            usage=self.usage,
            incomplete=incomplete,
            completed_at=at if status == "completed" else None,
        )
        self._emit(out, kind, response=response)
