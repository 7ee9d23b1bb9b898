"""OpenAI Chat Completions: `chat.completion.chunk` events ending in `data: [DONE]`."""

from __future__ import annotations

from typing import Any

import orjson

from api.formats import PING, Frame
from shared import events as ev
from shared.errors import SpoolError, error_type
from shared.store import JobRecord
from shared.transcript import ToolCall, Transcript

DONE = Frame(b"[DONE]")
# The field in which the chat format shows tool calls the worker ran on MCP servers (a
# delta's, and the message's list of them): not OpenAI's, so clients that do not know it
# ignore it, and `tool_calls` keeps only what the client is to run.
TOOL_STEP_FIELD = "spool_tool_steps"


def tool_step(step: ev.ToolResult | ToolCall) -> dict[str, Any]:
    output = step.output if isinstance(step, ev.ToolResult) else step.result
    return {
        "id": step.id,
        "server": step.server,
        "name": step.name,
        "arguments": step.arguments,
        "output": output,
        "is_error": step.is_error,
    }


def _json(value: dict[str, Any]) -> bytes:
    return orjson.dumps(value)


def usage_object(usage: ev.Usage | None) -> dict[str, Any]:
    usage = usage or ev.Usage()
    out: dict[str, Any] = {
        "prompt_tokens": usage.input_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cached_input_tokens is not None:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cached_input_tokens}
    if usage.reasoning_tokens is not None:
        out["completion_tokens_details"] = {"reasoning_tokens": usage.reasoning_tokens}
    return out


def logprobs_object(logprobs: list[dict[str, Any]] | None) -> dict[str, Any] | None:
    return {"content": logprobs, "refusal": None} if logprobs else None


def thinking_block(text: str, signature: str) -> dict[str, str]:
    """Signed reasoning as a client sends it back (`thinking_blocks`), so the signature
    survives into the next turn."""
    return {"type": "thinking", "thinking": text, "signature": signature}


def signed(call: dict[str, Any], signature: str | None) -> dict[str, Any]:
    """A tool call with its thought signature where Gemini's OpenAI-compatible API has it."""
    if signature is not None:
        call["extra_content"] = {"google": {"thought_signature": signature}}
    return call


class OpenAIChatFormat:
    surface = "openai.chat"
    stateful = False
    sse_ids = True
    sequence_ids = False
    keepalive = PING

    def renderer(self, render: dict[str, Any]) -> _ChatRenderer:
        return _ChatRenderer(self, render)

    def _chunk(self, render: dict[str, Any], choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": render["id"],
            "object": "chat.completion.chunk",
            "created": render["created"],
            "model": render["model"],
            "system_fingerprint": None,
            "choices": choices,
        }
        if render.get("include_usage"):
            chunk["usage"] = None
        return chunk

    def _delta(self, render: dict[str, Any], delta: dict[str, Any], logprobs: Any = None) -> Frame:
        choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": None}
        return Frame(_json(self._chunk(render, [choice])))

    def _reasoning(self, render: dict[str, Any], event: ev.ReasoningDelta) -> Frame:
        if event.signature is None:
            return self._delta(render, {"reasoning_content": event.text})
        delta: dict[str, Any] = {"reasoning_content": event.text} if event.text else {}
        delta["thinking_blocks"] = [thinking_block(event.text, event.signature)]
        return self._delta(render, delta)

    def frames(self, event: ev.Event, render: dict[str, Any]) -> list[Frame]:
        match event:
            case ev.Start():
                return [self._delta(render, {"role": "assistant", "content": ""})]
            case ev.TextDelta():
                if event.logprobs:
                    logprobs = logprobs_object(event.logprobs)
                    return [self._delta(render, {"content": event.text}, logprobs)]
                return [self._delta(render, {"content": event.text})]
            case ev.ReasoningDelta():
                return [self._reasoning(render, event)]
            case ev.ToolCallDelta() if event.server is None:
                call: dict[str, Any] = {"index": event.index}
                if event.id is not None:
                    call["id"] = event.id
                    call["type"] = "function"
                function: dict[str, str] = {"arguments": event.arguments}
                if event.name is not None:
                    function["name"] = event.name
                call["function"] = function
                if event.signature is not None:
                    signed(call, event.signature)
                return [self._delta(render, {"tool_calls": [call]})]
            case ev.ToolResult():
                # A step the worker ran itself, whole, in a field SDKs pass over.
                return [self._delta(render, {TOOL_STEP_FIELD: [tool_step(event)]})]
            case ev.Finish():
                choice = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": event.reason}
                out = [Frame(_json(self._chunk(render, [choice])))]
                if render.get("include_usage"):
                    usage_chunk = self._chunk(render, [])
                    usage_chunk["usage"] = usage_object(event.usage)
                    out.append(Frame(_json(usage_chunk)))
                return [*out, DONE]
            case ev.Error():
                error = {
                    "message": event.message,
                    "type": error_type(event.code),
                    "code": event.code,
                }
                return [Frame(_json({"error": error})), DONE]
            case _:
                return []

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        render = record.render
        calls = transcript.client_calls
        content = transcript.content or (None if calls else "")
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if transcript.reasoning:
            message["reasoning_content"] = transcript.reasoning_content
        if transcript.reasoning_signature:
            block = thinking_block(transcript.reasoning_content, transcript.reasoning_signature)
            message["thinking_blocks"] = [block]
        if calls:
            message["tool_calls"] = [
                signed(
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.final_arguments()},
                    },
                    call.signature,
                )
                for call in calls
            ]
        if transcript.server_calls:
            message[TOOL_STEP_FIELD] = [tool_step(c) for c in transcript.server_calls]
        return {
            "id": render["id"],
            "object": "chat.completion",
            "created": render["created"],
            "model": render["model"],
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": logprobs_object(transcript.logprobs),
                    "finish_reason": transcript.finish_reason,
                }
            ],
            "usage": usage_object(transcript.usage),
        }

    def error_body(self, error: SpoolError) -> dict[str, Any]:
        return {"error": {"message": error.message, "type": error.type, "code": error.code}}


class _ChatRenderer:
    """One stream's renderer. A text delta (nearly every event) is the stream's chunk with
    its content spliced in: the same bytes as `fmt.frames` writes, without building and
    serialising the whole chunk each time (and, with `text_event`, without the stored
    event being decoded)."""

    __slots__ = ("fmt", "render", "text_prefix", "text_suffix")

    def __init__(self, fmt: OpenAIChatFormat, render: dict[str, Any]) -> None:
        self.fmt = fmt
        self.render = render
        empty = fmt._delta(render, {"content": ""}).data
        marker = b'"delta":{"content":""}'
        at = empty.index(marker) + len(marker) - 3  # at the empty string's opening quote
        self.text_prefix, self.text_suffix = empty[:at], empty[at + 2 :]

    def frames(self, entry_id: str, event: ev.Event) -> list[Frame]:
        if type(event) is ev.TextDelta and not event.logprobs:
            return [Frame(self.text_prefix + orjson.dumps(event.text) + self.text_suffix)]
        return self.fmt.frames(event, self.render)

    def text_event(self, entry_id: str, text: bytes) -> bytes:
        return b"".join(
            (b"data: ", self.text_prefix, b'"', text, b'"', self.text_suffix, b"\nid: ",
             entry_id.encode(), b"\n\n")
        )  # fmt: skip
