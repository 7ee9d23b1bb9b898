"""A minimal, fast OpenAI-compatible streaming upstream for the benchmark, on raw asyncio.

    python -m tests.bench_upstream --port P

`POST /v1/chat/completions` with `"stream": true` answers, in one write, a role chunk with
empty content, `max_tokens` (64 when absent) content chunks of one short word each
(" tok0", " tok1", …), a finish chunk, a usage chunk (`choices: []`) and `data: [DONE]`,
each SSE event as one HTTP/1.1 chunk. Without `"stream": true` it answers the same text as
one `chat.completion`. Connections are kept alive until the client closes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
from typing import Any, cast

import orjson

DEFAULT_TOKENS = 64
MAX_TOKENS = 100_000
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
COMPLETION_ID = "chatcmpl-bench"
CREATED = 1_700_000_000


def token(i: int) -> str:
    return f" tok{i}"


def expected_text(tokens: int = DEFAULT_TOKENS) -> str:
    """The content a stream of `tokens` tokens carries, concatenated."""
    return "".join(token(i) for i in range(tokens))


def _chunk(model: str, choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "id": COMPLETION_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "choices": choices,
        **extra,
    }


def _delta(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return _chunk(model, [{"index": 0, "delta": delta, "finish_reason": finish}])


def _http_chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _sse(data: Any) -> bytes:
    payload = data if isinstance(data, bytes) else orjson.dumps(data)
    return b"data: " + payload + b"\n\n"


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 3, "completion_tokens": tokens, "total_tokens": 3 + tokens}


@functools.lru_cache(maxsize=256)
def streaming_body(model: str, tokens: int) -> bytes:
    """The whole chunked response body of a streamed completion, terminator included."""
    events = [_delta(model, {"role": "assistant", "content": ""})]
    events += [_delta(model, {"content": token(i)}) for i in range(tokens)]
    events.append(_delta(model, {}, "stop"))
    events.append(_chunk(model, [], usage=_usage(tokens)))
    frames = [_http_chunk(_sse(e)) for e in events]
    frames.append(_http_chunk(_sse(b"[DONE]")))
    return b"".join(frames) + b"0\r\n\r\n"


@functools.lru_cache(maxsize=256)
def completion_body(model: str, tokens: int) -> bytes:
    message = {"role": "assistant", "content": expected_text(tokens)}
    return orjson.dumps(
        {
            "id": COMPLETION_ID,
            "object": "chat.completion",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": _usage(tokens),
        }
    )


def _response(status: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    head = [f"HTTP/1.1 {status}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def _json_response(status: str, payload: bytes, close: bool = False) -> bytes:
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
    if close:
        headers.append(("Connection", "close"))
    return _response(status, headers, payload)


def _error(status: str, message: str, close: bool = False) -> bytes:
    return _json_response(status, orjson.dumps({"error": {"message": message}}), close)


STREAM_HEAD = _response(
    "200 OK",
    [
        ("Content-Type", "text/event-stream"),
        ("Cache-Control", "no-cache"),
        ("Transfer-Encoding", "chunked"),
    ],
)


def answer(method: str, path: str, body: bytes) -> bytes:
    """The full response to one request."""
    if path.partition("?")[0] != "/v1/chat/completions":
        return _error("404 Not Found", f"no route {path}")
    if method != "POST":
        return _error("405 Method Not Allowed", "POST only")
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        return _error("400 Bad Request", "the body is not JSON")
    if not isinstance(request, dict):
        return _error("400 Bad Request", "the body must be a JSON object")
    model = str(request.get("model") or "bench")
    tokens = request.get("max_tokens")
    if tokens is None:
        tokens = request.get("max_completion_tokens", DEFAULT_TOKENS)
    if not isinstance(tokens, int) or isinstance(tokens, bool) or not 1 <= tokens <= MAX_TOKENS:
        return _error("400 Bad Request", "max_tokens must be an integer from 1 to 100000")
    if request.get("stream"):
        return STREAM_HEAD + streaming_body(model, tokens)
    return _json_response("200 OK", completion_body(model, tokens))


class UpstreamProtocol(asyncio.Protocol):
    """One client connection: requests parsed from the byte stream (pipelining allowed),
    each answered in full as soon as its body is complete."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.head: tuple[str, str, bool] | None = None  # method, path, keep-alive
        self.body_left = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None and not self.transport.is_closing():
            if self.head is None and not self._parse_head():
                return
            if len(self.buffer) < self.body_left:
                return
            assert self.head is not None
            method, path, keep_alive = self.head
            body = bytes(self.buffer[: self.body_left])
            del self.buffer[: self.body_left]
            self.head, self.body_left = None, 0
            self.transport.write(answer(method, path, body))
            if not keep_alive:
                self.transport.close()

    def _parse_head(self) -> bool:
        """Parses a request line and headers off the buffer; False until they are all in."""
        assert self.transport is not None
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                self._refuse("431 Request Header Fields Too Large", "headers too large")
            return False
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._refuse("400 Bad Request", "malformed request line")
            return False
        method, path, version = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                self._refuse("400 Bad Request", "malformed header line")
                return False
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._refuse("411 Length Required", "send the body with a Content-Length")
            return False
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self._refuse("400 Bad Request", "bad Content-Length")
            return False
        connection = headers.get("connection", "").lower()
        keep_alive = "close" not in connection and (
            version == "HTTP/1.1" or "keep-alive" in connection
        )
        self.head, self.body_left = (method, path, keep_alive), length
        return True

    def _refuse(self, status: str, message: str) -> None:
        assert self.transport is not None
        self.transport.write(_error(status, message, close=True))
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096)
    async with server:
        await server.serve_forever()


def run(coro: Any) -> None:
    """Runs `coro` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(coro)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
