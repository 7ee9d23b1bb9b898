"""SSE responses: open ones under Spool's HTTP protocol, served by uvicorn in this event loop:
an open stream costs one task (the request's own), not a second one waiting on
`receive()`, and a client that goes is still noticed at once, while its stream waits for
an event that never comes. Under another server (no `WATCH_DISCONNECT`), the stream
watches `receive()` itself. A body's last chunk ends the response in the same message."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import pytest
import uvicorn
from starlette.types import Receive, Scope, Send

from api.http_protocol import GuardedHttpProtocol
from api.responses import DeferredStreams, EventStream
from shared.redis.embedded import free_port
from shared.settings import Settings

STREAMS = 20


class Streams:
    """An app whose every request is an SSE stream that sends one event, then waits for
    its client to go (as a tail waits for the stream's next event)."""

    def __init__(self) -> None:
        self.gone: list[int] = []
        self.closed: list[int] = []
        self.all_closed = asyncio.Event()
        self.waiting: list[asyncio.Event] = []  # each stream's; all set at the end
        self.opened = 0
        self.expected = 0

    async def body(self, left: asyncio.Event) -> AsyncIterator[bytes]:
        yield b"data: hello\n\n"
        await left.wait()

    def release(self) -> None:
        for left in self.waiting:
            left.set()

    def _gone(self, n: int, left: asyncio.Event) -> None:
        self.gone.append(n)
        left.set()

    def _closed(self, n: int) -> None:
        self.closed.append(n)
        if len(self.closed) == self.expected:
            self.all_closed.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        n = self.opened = self.opened + 1
        left = asyncio.Event()
        self.waiting.append(left)
        stream = EventStream(
            self.body(left),
            f"s{n}",
            on_disconnect=lambda: self._gone(n, left),
            on_close=lambda: self._closed(n),
        )
        await stream(scope, receive, send)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Streams, int]]:
    app = Streams()
    port = free_port()
    config = uvicorn.Config(
        DeferredStreams(app),
        host="127.0.0.1",
        port=port,
        http=GuardedHttpProtocol.configured(Settings()),
        lifespan="off",
        log_level="warning",
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 (uvicorn offers nothing to wait on)
            await asyncio.sleep(0.01)
    yield app, port
    app.release()
    server.should_exit = True
    await serving


async def open_stream(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /stream HTTP/1.1\r\nHost: spool\r\n\r\n")
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    assert b"data: hello" in await reader.readuntil(b"\n\n")
    return reader, writer


async def test_an_open_stream_costs_one_task_and_a_leaving_client_is_noticed(
    served: tuple[Streams, int],
) -> None:
    app, port = served
    app.expected = STREAMS
    before = len(asyncio.all_tasks())
    clients = [await open_stream(port) for _ in range(STREAMS)]
    assert len(asyncio.all_tasks()) - before == STREAMS  # uvicorn's task per request, no more
    assert app.gone == [] and app.closed == []

    for _, writer in clients:
        writer.close()
    await asyncio.wait_for(app.all_closed.wait(), 5)
    assert sorted(app.gone) == sorted(app.closed) == list(range(1, STREAMS + 1))
    assert len(asyncio.all_tasks()) == before


async def test_without_the_protocol_a_stream_watches_receive_itself() -> None:
    app = Streams()
    app.expected = 1
    went = asyncio.Event()
    streaming = asyncio.Event()
    sent: list[MutableMapping[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await went.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)
        if message.get("body"):
            streaming.set()

    scope = {"type": "http", "method": "GET", "path": "/stream", "headers": []}
    before = len(asyncio.all_tasks())
    running = asyncio.create_task(DeferredStreams(app)(scope, receive, send))
    await asyncio.wait_for(streaming.wait(), 5)
    assert len(asyncio.all_tasks()) - before == 2  # the request, and its watch on receive()
    went.set()
    await asyncio.wait_for(app.all_closed.wait(), 5)
    await running
    assert app.gone == [1] and app.closed == [1]
    assert sent[0]["status"] == 200 and sent[-1] == {
        "type": "http.response.body",
        "body": b"",
        "more_body": False,
    }


async def test_the_last_chunk_ends_the_response_in_the_same_message() -> None:
    """A body that says its chunk was the last (a tail at its stream's terminal event) ends
    the response with that chunk: no empty message after it, one write fewer."""
    chunks = [b"data: 1\n\n", b"data: 2\n\n"]
    sent_chunks = 0
    closed: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent_chunks
        for chunk in chunks:
            sent_chunks += 1
            yield chunk
        yield b"never sent"

    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    stream = EventStream(
        body(), "s1", on_close=lambda: closed.append(True), ends=lambda: sent_chunks == 2
    )
    await asyncio.wait_for(stream.run(receive, send), 5)
    assert [(m["type"], m.get("body"), m.get("more_body")) for m in sent] == [
        ("http.response.start", None, None),
        ("http.response.body", b"data: 1\n\n", True),
        ("http.response.body", b"data: 2\n\n", False),
    ]
    assert closed == [True]
