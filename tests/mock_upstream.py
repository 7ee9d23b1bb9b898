"""A scriptable OpenAI-compatible upstream for tests and the benchmark.

The upstream model name picks the behaviour (see `SCRIPTS`). It runs in a thread of the
test process, so tests can read what it saw: requests, headers, and when a client hung up.
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shared.redis.embedded import free_port
from tests.threaded_server import ThreadedServer

INSTANT_TEXT = ["Hello", " from", " the", " mock", " upstream", "."]
SPLIT_TEXT = "héllo wörld, 日本語 ✓ café 🎉"
TOOLS_TEXT = ["Let me", " look."]
TOOL_CALL = ("get_weather", '{"city": "Paris"}')
# What every mock's `json` script answers: valid against `tests.media.WEATHER`'s schema.
JSON_ANSWER = ['{"city": "Pa', 'ris", "temperature": 21.5,', ' "conditions": "sunny"}']


async def trickle(raw: bytes) -> AsyncIterator[bytes]:
    """The same bytes 1, 2, 3, 1, 2, 3 … at a time, with a pause every few writes so they
    reach the client as separate reads: events and UTF-8 characters split across reads."""
    step = 0
    while raw:
        size = 1 + step % 3
        yield raw[:size]
        raw = raw[size:]
        step += 1
        if step % 7 == 0:
            await asyncio.sleep(0.001)


def sse(data: Any) -> bytes:
    payload = data if isinstance(data, str) else orjson.dumps(data).decode()
    return f"data: {payload}\n\n".encode()


def chunk(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def usage_chunk(model: str, completion_tokens: int) -> dict[str, Any]:
    return {
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "choices": [],
        "usage": {
            "prompt_tokens": 3,
            "completion_tokens": completion_tokens,
            "total_tokens": 3 + completion_tokens,
        },
    }


def text_stream(model: str, pieces: list[str]) -> list[bytes]:
    out = [sse(chunk(model, {"role": "assistant", "content": ""}))]
    out += [sse(chunk(model, {"content": p})) for p in pieces]
    out += [sse(chunk(model, {}, "stop")), sse(usage_chunk(model, len(pieces))), sse("[DONE]")]
    return out


# --- OpenAI's Responses API (`POST /v1/responses`) -------------------------------------------

RESPONSES_TEXT = ["Héllo", " from", " the", " Responses", " API ✓"]
RESPONSES_TOOLS_TEXT = "Let me check."
# The first call's arguments stream as deltas; the second's arrive whole when it is done.
RESPONSES_CALLS = [
    ("call_r1", "get_weather", ['{"city": ', '"Paris"', "}"]),
    ("call_r2", "get_time", ['{"zone": "CET"}']),
]
RESPONSES_SUMMARY = [["Weighing", " the options."], ["Settling on", " an answer."]]
RESPONSES_ANSWER = ["Forty", "-two."]
RESPONSES_USAGE = {"input_tokens": 13, "output_tokens": 8, "cached": 4, "reasoning": 5}
RESPONSES_FAILURE = {"code": "server_error", "message": "the responses model is overloaded"}

ResponsesFrame = tuple[str, dict[str, Any]]


def responses_usage() -> dict[str, Any]:
    u = RESPONSES_USAGE
    return {
        "input_tokens": u["input_tokens"],
        "input_tokens_details": {"cached_tokens": u["cached"]},
        "output_tokens": u["output_tokens"],
        "output_tokens_details": {"reasoning_tokens": u["reasoning"]},
        "total_tokens": u["input_tokens"] + u["output_tokens"],
    }


def response_object(model: str, status: str, **fields: Any) -> dict[str, Any]:
    return {"id": "resp_mock", "object": "response", "created_at": 1, "model": model,
            "status": status, "output": [], **fields}  # fmt: skip


def responses_start(model: str) -> list[ResponsesFrame]:
    return [
        ("response.created", {"response": response_object(model, "in_progress")}),
        ("response.in_progress", {"response": response_object(model, "in_progress")}),
    ]


def responses_message(output_index: int, pieces: list[str]) -> list[ResponsesFrame]:
    item_id = f"msg_{output_index}"
    item = {"id": item_id, "type": "message", "role": "assistant", "status": "in_progress",
            "content": []}  # fmt: skip
    at = {"item_id": item_id, "output_index": output_index, "content_index": 0}
    text = "".join(pieces)
    return [
        ("response.output_item.added", {"output_index": output_index, "item": item}),
        ("response.content_part.added", {**at, "part": {"type": "output_text", "text": ""}}),
        *(("response.output_text.delta", {**at, "delta": p, "logprobs": []}) for p in pieces),
        ("response.output_text.done", {**at, "text": text, "logprobs": []}),
        ("response.content_part.done", {**at, "part": {"type": "output_text", "text": text}}),
        ("response.output_item.done", {"output_index": output_index, "item": {
            **item, "status": "completed",
            "content": [{"type": "output_text", "text": text, "annotations": []}]}}),
    ]  # fmt: skip


def responses_call(
    output_index: int, call_id: str, name: str, pieces: list[str], *, streamed: bool
) -> list[ResponsesFrame]:
    item_id = f"fc_{output_index}"
    item = {"id": item_id, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": "", "status": "in_progress"}  # fmt: skip
    at = {"item_id": item_id, "output_index": output_index}
    arguments = "".join(pieces)
    deltas = [("response.function_call_arguments.delta", {**at, "delta": p}) for p in pieces]
    return [
        ("response.output_item.added", {"output_index": output_index, "item": item}),
        *(deltas if streamed else []),
        ("response.output_item.done", {"output_index": output_index,
         "item": {**item, "arguments": arguments, "status": "completed"}}),
    ]  # fmt: skip


def responses_reasoning(output_index: int) -> list[ResponsesFrame]:
    item_id = f"rs_{output_index}"
    item = {"id": item_id, "type": "reasoning", "summary": []}
    frames: list[ResponsesFrame] = [
        ("response.output_item.added", {"output_index": output_index, "item": item})
    ]
    for summary_index, pieces in enumerate(RESPONSES_SUMMARY):
        at = {"item_id": item_id, "output_index": output_index, "summary_index": summary_index}
        part = {"type": "summary_text", "text": ""}
        frames.append(("response.reasoning_summary_part.added", {**at, "part": part}))
        frames += [("response.reasoning_summary_text.delta", {**at, "delta": p}) for p in pieces]
        frames.append(("response.reasoning_summary_text.done", {**at, "text": "".join(pieces)}))
    frames.append(("response.output_item.done", {"output_index": output_index, "item": item}))
    return frames


def responses_completed(model: str) -> ResponsesFrame:
    return ("response.completed", {"response": response_object(
        model, "completed", usage=responses_usage())})  # fmt: skip


def responses_text_script(model: str) -> list[ResponsesFrame]:
    return [*responses_start(model), *responses_message(0, RESPONSES_TEXT),
            responses_completed(model)]  # fmt: skip


def responses_json_script(model: str) -> list[ResponsesFrame]:
    return [*responses_start(model), *responses_message(0, JSON_ANSWER),
            responses_completed(model)]  # fmt: skip


def responses_tools_script(model: str) -> list[ResponsesFrame]:
    frames = [*responses_start(model), *responses_message(0, [RESPONSES_TOOLS_TEXT])]
    for i, (call_id, name, pieces) in enumerate(RESPONSES_CALLS):
        frames += responses_call(i + 1, call_id, name, pieces, streamed=i == 0)
    return [*frames, responses_completed(model)]


def responses_reasoning_script(model: str) -> list[ResponsesFrame]:
    return [*responses_start(model), *responses_reasoning(0),
            *responses_message(1, RESPONSES_ANSWER), responses_completed(model)]  # fmt: skip


def responses_incomplete_script(model: str) -> list[ResponsesFrame]:
    details = {"reason": "max_output_tokens"}
    response = response_object(model, "incomplete", incomplete_details=details,
                               usage=responses_usage())  # fmt: skip
    return [*responses_start(model), *responses_message(0, ["Cut", " short"]),
            ("response.incomplete", {"response": response})]  # fmt: skip


def responses_failed_script(model: str) -> list[ResponsesFrame]:
    response = response_object(model, "failed", error=RESPONSES_FAILURE)
    return [*responses_start(model), *responses_message(0, ["partial"])[:3],
            ("response.failed", {"response": response})]  # fmt: skip


def responses_error_script(model: str) -> list[ResponsesFrame]:
    error = {**RESPONSES_FAILURE, "param": None}
    return [*responses_start(model), *responses_message(0, ["partial"])[:3], ("error", error)]


def responses_no_terminal_script(model: str) -> list[ResponsesFrame]:
    return [*responses_start(model), *responses_message(0, ["cut"])]


RESPONSES_SCRIPTS: dict[str, Callable[[str], list[ResponsesFrame]]] = {
    "responses-text": responses_text_script,
    "responses-split": responses_text_script,
    "responses-json": responses_json_script,
    "responses-tools": responses_tools_script,
    "responses-reasoning": responses_reasoning_script,
    "responses-incomplete": responses_incomplete_script,
    "responses-failed": responses_failed_script,
    "responses-error": responses_error_script,
    "responses-no-terminal": responses_no_terminal_script,
}


def responses_frames(frames: list[ResponsesFrame]) -> bytes:
    """A script as the Responses API frames it: named events, numbered in order."""
    out = b""
    for number, (kind, data) in enumerate(frames):
        payload = orjson.dumps({"type": kind, **data, "sequence_number": number})
        out += b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"
    return out


@dataclass
class Seen:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    started: float = field(default_factory=time.monotonic)

    @property
    def prompt(self) -> str:
        messages = self.body.get("messages") or [{}]
        return str(messages[-1].get("content", ""))

    closed_early_at: float | None = None
    closed_early: threading.Event = field(default_factory=threading.Event)


class MockUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.seen: list[Seen] = []
        self._server: ThreadedServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def requests_for(self, model: str, prompt: str | None = None) -> list[Seen]:
        return [s for s in self.seen if s.model == model and (prompt is None or s.prompt == prompt)]

    # -- scripts ---------------------------------------------------------------------------

    async def _instant(self, seen: Seen) -> AsyncIterator[bytes]:
        for frame in text_stream(seen.model, INSTANT_TEXT):
            yield frame

    async def _json(self, seen: Seen) -> AsyncIterator[bytes]:
        for frame in text_stream(seen.model, JSON_ANSWER):
            yield frame

    async def _tools(self, seen: Seen) -> AsyncIterator[bytes]:
        model = seen.model
        yield sse(chunk(model, {"role": "assistant", "content": ""}))
        for piece in TOOLS_TEXT:
            yield sse(chunk(model, {"content": piece}))
        name, arguments = TOOL_CALL
        first = {"index": 0, "id": "call_w", "type": "function",
                 "function": {"name": name, "arguments": ""}}  # fmt: skip
        yield sse(chunk(model, {"tool_calls": [first]}))
        for i in range(0, len(arguments), 7):
            fragment = {"index": 0, "function": {"arguments": arguments[i : i + 7]}}
            yield sse(chunk(model, {"tool_calls": [fragment]}))
        yield sse(chunk(model, {}, "tool_calls"))
        yield sse(usage_chunk(model, 6))
        yield sse("[DONE]")

    async def _split_utf8(self, seen: Seen) -> AsyncIterator[bytes]:
        pieces = [SPLIT_TEXT[i : i + 3] for i in range(0, len(SPLIT_TEXT), 3)]
        raw = b"".join(text_stream(seen.model, pieces)).replace(b"\n\n", b"\r\n\r\n", 2)
        raw = b": keep-alive comment\n\n" + raw
        async for piece in trickle(raw):
            yield piece

    async def _slow(self, seen: Seen) -> AsyncIterator[bytes]:
        try:
            yield sse(chunk(seen.model, {"role": "assistant", "content": ""}))
            for i in range(400):
                yield sse(chunk(seen.model, {"content": f" t{i}"}))
                await asyncio.sleep(0.05)
            yield sse(chunk(seen.model, {}, "stop"))
            yield sse("[DONE]")
        except (asyncio.CancelledError, GeneratorExit):
            seen.closed_early_at = time.monotonic()
            seen.closed_early.set()
            raise

    async def _midstream_error(self, seen: Seen) -> AsyncIterator[bytes]:
        yield sse(chunk(seen.model, {"role": "assistant", "content": "partial"}))
        yield sse({"error": {"message": "the model is overloaded", "type": "server_error"}})

    async def _garbage(self, seen: Seen) -> AsyncIterator[bytes]:
        yield sse(chunk(seen.model, {"role": "assistant", "content": "before"}))
        yield b"data: {not json at all\n\n"
        yield b"\xff\xfe garbage line without a field separator\n\n"
        yield sse(chunk(seen.model, {"content": " after"}))
        yield sse(chunk(seen.model, {}, "stop"))
        yield sse("[DONE]")

    async def _no_finish(self, seen: Seen) -> AsyncIterator[bytes]:
        yield sse(chunk(seen.model, {"role": "assistant", "content": "cut"}))

    async def _stall(self, seen: Seen) -> AsyncIterator[bytes]:
        yield sse(chunk(seen.model, {"role": "assistant", "content": "before"}))
        yield sse(chunk(seen.model, {"content": " the stall"}))
        await asyncio.sleep(3600)

    async def _endless_line(self, seen: Seen) -> AsyncIterator[bytes]:
        yield sse(chunk(seen.model, {"role": "assistant", "content": "then"}))
        yield b"data: "
        for _ in range(80):
            yield b"x" * 65536

    async def _many_malformed(self, seen: Seen) -> AsyncIterator[bytes]:
        yield sse(chunk(seen.model, {"role": "assistant", "content": "noise"}))
        for i in range(30):
            yield f"data: not json {i}\n\n".encode()
        yield sse(chunk(seen.model, {}, "stop"))

    @staticmethod
    def _rate_limited(retry_after: str) -> Response:
        return JSONResponse(
            {"error": {"message": "rate limited", "type": "rate_limit_error"}},
            status_code=429,
            headers={"Retry-After": retry_after},
        )

    async def handle(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        seen = Seen(model=body.get("model", ""), body=body, headers=dict(request.headers))
        self.seen.append(seen)
        attempt = len(self.requests_for(seen.model, seen.prompt))
        if seen.model == "status-429":
            return self._rate_limited("7")
        if seen.model == "echo-key":  # as real upstreams do on a bad key
            quoted = seen.headers.get("authorization", "").removeprefix("Bearer ")
            return JSONResponse(
                {"error": {"message": f"Incorrect API key provided: {quoted}"}}, status_code=401
            )
        if seen.model == "echo-key-midstream":
            quoted = seen.headers.get("authorization", "").removeprefix("Bearer ")
            frames = [
                sse(chunk(seen.model, {"role": "assistant", "content": "partial"})),
                sse({"error": {"message": f"key {quoted} was rejected"}}),
            ]
            return StreamingResponse(iter(frames), media_type="text/event-stream")
        if seen.model == "always-429":
            return self._rate_limited("1")
        if seen.model == "429-then-ok" and attempt == 1:
            return self._rate_limited("1")
        if seen.model == "503-then-ok" and attempt == 1:
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if seen.model in ("429-then-ok", "503-then-ok"):
            return StreamingResponse(self._instant(seen), media_type="text/event-stream")
        scripts: dict[str, Callable[[Seen], AsyncIterator[bytes]]] = {
            "instant": self._instant,
            "json": self._json,
            "tools": self._tools,
            "split-utf8": self._split_utf8,
            "slow": self._slow,
            "midstream-error": self._midstream_error,
            "garbage": self._garbage,
            "no-finish": self._no_finish,
            "stall": self._stall,
            "endless-line": self._endless_line,
            "many-malformed": self._many_malformed,
        }
        script = scripts.get(seen.model)
        if script is None:
            return JSONResponse({"error": {"message": "unknown model"}}, status_code=404)
        return StreamingResponse(script(seen), media_type="text/event-stream")

    async def handle_responses(self, request: Request) -> Response:
        """`POST /v1/responses`: the script the model names, streamed (`responses-split` a
        few bytes at a time); a request that is not a streamed Responses request is a 400."""
        body = orjson.loads(await request.body())
        seen = Seen(model=body.get("model", ""), body=body, headers=dict(request.headers))
        self.seen.append(seen)
        if body.get("stream") is not True or not isinstance(body.get("input"), list):
            message = "the mock takes streamed requests with an input list"
            return JSONResponse({"error": {"message": message}}, status_code=400)
        script = RESPONSES_SCRIPTS.get(seen.model)
        if script is None:
            return JSONResponse({"error": {"message": "unknown model"}}, status_code=404)
        raw = responses_frames(script(seen.model))
        if seen.model == "responses-split":
            return StreamingResponse(trickle(raw), media_type="text/event-stream")
        return StreamingResponse(iter([raw]), media_type="text/event-stream")

    # -- lifecycle -------------------------------------------------------------------------

    async def media(self, request: Request) -> Response:
        """Test media by name (`tests.media.FILES`), as a web server would serve them."""
        from tests.media import FILES

        found = FILES.get(request.path_params["name"])
        if found is None:
            return Response(status_code=404)
        media_type, content = found
        return Response(content(), media_type=media_type)

    def app(self) -> Starlette:
        from tests.mock_anthropic import handle_messages
        from tests.mock_gemini import handle_generate

        return Starlette(
            routes=[
                Route("/media/{name}", self.media, methods=["GET"]),
                Route("/v1/chat/completions", self.handle, methods=["POST"]),
                Route("/v1/responses", self.handle_responses, methods=["POST"]),
                Route("/v1/messages", functools.partial(handle_messages, self), methods=["POST"]),
                Route(
                    "/v1beta/models/{target}",
                    functools.partial(handle_generate, self),
                    methods=["POST"],
                ),
            ]
        )

    def start(self) -> MockUpstream:
        self._server = ThreadedServer(self.app(), self.port, "mock-upstream")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Spool's mock OpenAI-compatible upstream")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    upstream = MockUpstream()
    upstream.port = args.port
    uvicorn.run(upstream.app(), host="127.0.0.1", port=args.port, log_level="warning", lifespan="off",
                loop="uvloop", http="httptools")  # fmt: skip


if __name__ == "__main__":
    main()
