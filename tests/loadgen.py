"""A fast HTTP/1.1 load client on raw asyncio, for the benchmark's thousands of streams.

Each `Connection` carries one request at a time and keeps its socket for the next. A
streamed response (`text/event-stream`, chunked or not) is parsed as it arrives: for each
request the client records the time to the first content delta, the content text, its
length, the number of JSON data events, whether `data: [DONE]` came, and the
`X-Spool-Stream-Id` header. Any other response keeps its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, cast

import orjson

MAX_HEAD_BYTES = 64 * 1024
HEAD, BODY, DONE = 0, 1, 2


class HTTPError(Exception):
    """The connection broke, or the server's answer was not HTTP this client reads."""


@dataclass(slots=True)
class Response:
    """One request's outcome. Times are seconds from sending the request."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    ttft: float | None = None
    elapsed: float = 0.0
    chars: int = 0
    chunks: int = 0
    parts: list[str] = field(default_factory=list)
    done: bool = False
    finish_reason: str | None = None
    error: Any = None
    body: bytes = b""

    @property
    def stream_id(self) -> str | None:
        return self.headers.get("x-spool-stream-id")

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def json(self) -> Any:
        return orjson.loads(self.body)


FirstContent = Callable[[Response], None]


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; `request` may be awaited again once the last
    answer is complete."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.authority = f"{host}:{port}".encode()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._waiter: asyncio.Future[Response] | None = None
        self.response = Response()  # the answer being read, filled in as it arrives
        self._on_first: FirstContent | None = None
        self._sent_at = 0.0
        self._state = DONE
        self._keep_alive = True
        self._head = bytearray()
        self._body = bytearray()
        self._chunked = False
        self._sse = False
        self._left = -1  # body bytes still expected; -1: until the connection closes
        self._chunk_buf = bytearray()
        self._chunk_left = 0
        self._chunk_crlf = False
        self._sse_buf = b""
        self._data: list[bytes] = []

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(lambda: cls(host, port), host, port)
        return protocol

    @property
    def usable(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # -- requests --------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        on_first_content: FirstContent | None = None,
    ) -> asyncio.Future[Response]:
        if self.transport is None or self.transport.is_closing():
            raise HTTPError("the connection is closed")
        if self._waiter is not None and not self._waiter.done():
            raise HTTPError("a request is already in flight on this connection")
        head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), path.encode(), self.authority)
        for name, value in headers:
            head += f"{name}: {value}\r\n".encode("latin-1")
        if body or method in ("POST", "PUT", "PATCH"):
            head += b"Content-Length: %d\r\n" % len(body)
        self._waiter = asyncio.get_running_loop().create_future()
        self.response = Response()
        self._on_first = on_first_content
        self._state = HEAD
        self._head.clear()
        self._sent_at = time.perf_counter()
        self.transport.write(head + b"\r\n" + body)
        return self._waiter

    def post_json(
        self,
        path: str,
        payload: Any,
        headers: Iterable[tuple[str, str]] = (),
        on_first_content: FirstContent | None = None,
    ) -> asyncio.Future[Response]:
        return self.request(
            "POST",
            path,
            orjson.dumps(payload),
            [("Content-Type", "application/json"), *headers],
            on_first_content,
        )

    # -- protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._state == BODY and not self._chunked and self._left < 0:
            self._finish()
        elif self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HTTPError(f"connection lost mid-response: {exc}"))
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        if self._state == HEAD:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD_BYTES:
                    self._fail("response headers too large")
                return
            rest = bytes(self._head[end + 4 :])
            if not self._parse_head(bytes(self._head[:end])):
                return
            if self._state != BODY or not rest:
                return
            data = rest
        if self._state != BODY:
            return  # bytes after a complete answer: nothing was asked for
        if self._chunked:
            self._dechunk(data)
        elif self._left < 0:
            self._payload(data)
        else:
            take = data[: self._left]
            self._left -= len(take)
            self._payload(take)
            if self._left == 0:
                self._finish()

    def _fail(self, reason: str) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(HTTPError(reason))
        self._state = DONE
        self.close()

    def _parse_head(self, raw: bytes) -> bool:
        lines = raw.decode("latin-1").split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
            self._fail(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
            return False
        response = self.response
        response.status = int(status_line[1])
        headers = response.headers
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        self._keep_alive = "close" not in connection and (
            status_line[0] == "HTTP/1.1" or "keep-alive" in connection
        )
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._sse = headers.get("content-type", "").startswith("text/event-stream")
        self._left = int(headers.get("content-length", "-1")) if not self._chunked else -1
        self._body.clear()
        self._chunk_buf.clear()
        self._chunk_left, self._chunk_crlf = 0, False
        self._sse_buf, self._data = b"", []
        self._state = BODY
        if self._left == 0 or response.status in (204, 304) or 100 <= response.status < 200:
            self._finish()
        return True

    def _dechunk(self, data: bytes) -> None:
        buf = self._chunk_buf
        buf += data
        pos, end = 0, len(buf)
        while pos < end:
            if self._chunk_left:
                take = min(self._chunk_left, end - pos)
                self._payload(bytes(buf[pos : pos + take]))
                pos += take
                self._chunk_left -= take
                if not self._chunk_left:
                    self._chunk_crlf = True
                continue
            if self._chunk_crlf:
                if end - pos < 2:
                    break
                pos += 2
                self._chunk_crlf = False
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size_field = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_field, 16)
            except ValueError:
                self._fail(f"bad chunk size {size_field[:20]!r}")
                return
            if size == 0:
                if buf.find(b"\r\n\r\n", pos) < 0:
                    break  # the trailer section is not complete yet
                del buf[:]
                self._finish()
                return
            pos = eol + 2
            self._chunk_left = size
        del buf[:pos]

    def _payload(self, data: bytes) -> None:
        if not self._sse:
            self._body += data
            return
        buf = self._sse_buf + data if self._sse_buf else data
        last = buf.rfind(b"\n")
        if last < 0:
            self._sse_buf = buf
            return
        self._sse_buf = buf[last + 1 :]
        for line in buf[:last].split(b"\n"):
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    self._event(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)

    def _event(self, data: bytes) -> None:
        response = self.response
        if data == b"[DONE]":
            response.done = True
            return
        if not data.startswith(b"{"):
            return
        response.chunks += 1
        try:
            event = orjson.loads(data)
        except orjson.JSONDecodeError:
            response.error = data.decode("utf-8", "replace")
            return
        if "error" in event:
            response.error = event["error"]
        choices = event.get("choices")
        if not choices:
            return
        choice = choices[0]
        if choice.get("finish_reason"):
            response.finish_reason = choice["finish_reason"]
        delta = choice.get("delta")
        content = delta.get("content") if delta else None
        if content:
            if response.ttft is None:
                response.ttft = time.perf_counter() - self._sent_at
                if self._on_first is not None:
                    self._on_first(response)
            response.chars += len(content)
            response.parts.append(content)

    def _finish(self) -> None:
        response = self.response
        response.elapsed = time.perf_counter() - self._sent_at
        if not self._sse:
            response.body = bytes(self._body)
        elif self._sse_buf or self._data:
            self._payload(b"\n\n")  # a last event the body ended without a blank line after
        self._state = DONE
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(response)
        if not self._keep_alive:
            self.close()


class Client:
    """A virtual client: one connection, reopened when the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.connection: Connection | None = None

    async def connect(self) -> Connection:
        if self.connection is None or not self.connection.usable:
            self.connection = await Connection.open(self.host, self.port)
        return self.connection

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Iterable[tuple[str, str]] = (),
        on_first_content: FirstContent | None = None,
    ) -> Response:
        connection = await self.connect()
        try:
            return await connection.request(method, path, body, headers, on_first_content)
        except asyncio.CancelledError:
            connection.close()  # an unfinished answer would confuse the next request
            raise

    async def post_json(
        self,
        path: str,
        payload: Any,
        headers: Iterable[tuple[str, str]] = (),
        on_first_content: FirstContent | None = None,
    ) -> Response:
        return await self.request(
            "POST",
            path,
            orjson.dumps(payload),
            [("Content-Type", "application/json"), *headers],
            on_first_content,
        )

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


async def open_clients(host: str, port: int, count: int, parallel: int = 512) -> list[Client]:
    """`count` connected clients, at most `parallel` connection attempts at a time (so the
    server's listen backlog does not overflow into SYN retries)."""
    clients = [Client(host, port) for _ in range(count)]
    gate = asyncio.Semaphore(parallel)

    async def connect(client: Client) -> None:
        async with gate:
            await client.connect()

    await asyncio.gather(*(connect(c) for c in clients))
    return clients


async def fetch_all(
    host: str,
    port: int,
    requests: list[tuple[str, str, bytes]],
    concurrency: int = 64,
    timeout_s: float | None = None,
) -> list[Response | None]:
    """Runs (method, path, body) requests over `concurrency` keep-alive connections and
    returns the answers in order: None for a request that failed, or had no answer when
    `timeout_s` ran out."""
    results: list[Response | None] = [None] * len(requests)
    queue = iter(enumerate(requests))

    async def drain(client: Client) -> None:
        try:
            for i, (method, path, body) in queue:
                headers = [("Content-Type", "application/json")] if body else []
                with contextlib.suppress(OSError, HTTPError):
                    results[i] = await client.request(method, path, body, headers)
        finally:
            client.close()

    clients = [Client(host, port) for _ in range(max(1, min(concurrency, len(requests))))]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(drain(c) for c in clients)), timeout_s)
    return results


def run(coro: Any) -> Any:
    """Runs `coro` on uvloop when it is installed, else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
