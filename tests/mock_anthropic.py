"""A scriptable Anthropic Messages API upstream (`POST /v1/messages`) for tests.

`handle_messages` is a Starlette handler. The request body's `model` picks the behaviour
(see `SCRIPTS`); what it saw is recorded in `upstream.seen`, like `MockUpstream.handle`.
Streams are framed as Anthropic frames them: `event: <type>\\ndata: <json>\\n\\n`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.mock_upstream import MockUpstream, Seen, trickle

TEXT_PIECES = ["héllo", " wörld", " 日本語", " ✓"]
TEXT = "".join(TEXT_PIECES)  # "héllo wörld 日本語 ✓"
INPUT_TOKENS = 11
OUTPUT_TOKENS = 7
TOOL_ID = "toolu_01"
TOOL_NAME = "get_weather"
TOOL_JSON_PIECES = ['{"city": ', '"Paris", "unit": "c', 'elsius"}']
THINKING_PIECES = ["Let me think", " about 27 * 453."]
SIGNATURE = "sig-abc"
THINKING_ANSWER = "27 * 453 = 12,231"
OVERLOADED = {"type": "overloaded_error", "message": "Overloaded"}

Frame = tuple[str, dict[str, Any]]


def frame(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


# --- scripts: each a list of (event name, data) ---------------------------------------------


def message_start(model: str) -> Frame:
    return (
        "message_start",
        {
            "type": "message_start",
            "message": {
                "id": "msg_mock01",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": INPUT_TOKENS, "output_tokens": 1},
            },
        },
    )


def ping() -> Frame:
    return ("ping", {"type": "ping"})


def block_start(index: int, block: dict[str, Any]) -> Frame:
    return (
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": block},
    )


def block_delta(index: int, delta: dict[str, Any]) -> Frame:
    return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})


def block_stop(index: int) -> Frame:
    return ("content_block_stop", {"type": "content_block_stop", "index": index})


def text_block(index: int, pieces: list[str]) -> list[Frame]:
    return [
        block_start(index, {"type": "text", "text": ""}),
        *(block_delta(index, {"type": "text_delta", "text": p}) for p in pieces),
        block_stop(index),
    ]


def message_end(stop_reason: str, output_tokens: int = OUTPUT_TOKENS) -> list[Frame]:
    return [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]


def text_script(model: str) -> list[Frame]:
    return [
        message_start(model),
        ping(),
        *text_block(0, TEXT_PIECES),
        *message_end("end_turn"),
    ]


def json_script(model: str) -> list[Frame]:
    from tests.mock_upstream import JSON_ANSWER

    return [message_start(model), *text_block(0, JSON_ANSWER), *message_end("end_turn")]


def tools_script(model: str) -> list[Frame]:
    return [
        message_start(model),
        *text_block(0, ["Let me", " look."]),
        block_start(1, {"type": "tool_use", "id": TOOL_ID, "name": TOOL_NAME, "input": {}}),
        block_delta(1, {"type": "input_json_delta", "partial_json": ""}),
        *(
            block_delta(1, {"type": "input_json_delta", "partial_json": p})
            for p in TOOL_JSON_PIECES
        ),
        block_stop(1),
        *message_end("tool_use"),
    ]


def thinking_script(model: str) -> list[Frame]:
    return [
        message_start(model),
        block_start(0, {"type": "thinking", "thinking": "", "signature": ""}),
        *(block_delta(0, {"type": "thinking_delta", "thinking": p}) for p in THINKING_PIECES),
        block_delta(0, {"type": "signature_delta", "signature": SIGNATURE}),
        block_stop(0),
        *text_block(1, [THINKING_ANSWER]),
        *message_end("end_turn"),
    ]


def max_tokens_script(model: str) -> list[Frame]:
    return [
        message_start(model),
        *text_block(0, ["This answer is cut", " short"]),
        *message_end("max_tokens", output_tokens=5),
    ]


def overloaded_script(model: str) -> list[Frame]:
    return [
        message_start(model),
        block_start(0, {"type": "text", "text": ""}),
        block_delta(0, {"type": "text_delta", "text": "partial"}),
        ("error", {"type": "error", "error": OVERLOADED}),
    ]


SCRIPTS: dict[str, Callable[[str], list[Frame]]] = {
    "claude-text": text_script,
    "claude-split": text_script,
    "claude-tools": tools_script,
    "claude-json": json_script,
    "claude-thinking": thinking_script,
    "claude-max-tokens": max_tokens_script,
    "claude-overloaded": overloaded_script,
}


def assemble(frames: list[Frame]) -> dict[str, Any]:
    """The non-streaming Message a script's stream adds up to."""
    message: dict[str, Any] = {}
    partial_json: dict[int, str] = {}
    for _, data in frames:
        kind = data["type"]
        if kind == "message_start":
            message = orjson.loads(orjson.dumps(data["message"]))
        elif kind == "content_block_start":
            message["content"].append(dict(data["content_block"]))
        elif kind == "content_block_delta":
            block, delta = message["content"][data["index"]], data["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            elif delta["type"] == "input_json_delta":
                partial_json[data["index"]] = (
                    partial_json.get(data["index"], "") + delta["partial_json"]
                )
        elif kind == "content_block_stop" and data["index"] in partial_json:
            message["content"][data["index"]]["input"] = orjson.loads(partial_json[data["index"]])
        elif kind == "message_delta":
            message.update(data["delta"])
            message["usage"]["output_tokens"] = data["usage"]["output_tokens"]
    return message


# --- the handler -----------------------------------------------------------------------------


async def _whole(frames: list[Frame]) -> AsyncIterator[bytes]:
    for name, data in frames:
        yield frame(name, data)


async def _split(frames: list[Frame]) -> AsyncIterator[bytes]:
    """The same bytes, 1-3 at a time: events and UTF-8 characters split across writes."""
    async for piece in trickle(b"".join(frame(name, data) for name, data in frames)):
        yield piece


def _error(status: int, kind: str, message: str) -> Response:
    return JSONResponse(error_body(kind, message), status_code=status)


async def handle_messages(upstream: MockUpstream, request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        return _error(400, "invalid_request_error", "request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "invalid_request_error", "request body must be a JSON object")
    model = str(body.get("model", ""))
    upstream.seen.append(Seen(model=model, body=body, headers=dict(request.headers)))
    if "max_tokens" not in body:
        return _error(400, "invalid_request_error", "max_tokens: Field required")
    if not body.get("messages"):
        return _error(400, "invalid_request_error", "messages: Field required")
    if model == "claude-529":
        return JSONResponse(error_body(OVERLOADED["type"], OVERLOADED["message"]), status_code=529)
    script = SCRIPTS.get(model)
    if script is None:
        return _error(404, "not_found_error", f"model: {model}")
    frames = script(model)
    if not body.get("stream"):
        if model == "claude-overloaded":
            return JSONResponse(
                error_body(OVERLOADED["type"], OVERLOADED["message"]), status_code=529
            )
        return JSONResponse(assemble(frames))
    stream = _split(frames) if model == "claude-split" else _whole(frames)
    return StreamingResponse(stream, media_type="text/event-stream")
