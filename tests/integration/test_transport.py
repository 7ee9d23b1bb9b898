"""The providers' HTTP/1.1 transport against a scripted server on loopback: keep-alive
reuse, chunked, sized and close-delimited bodies, bodies split across reads, timeouts,
refused and truncated connections, and a response closed before its end."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest

from worker.providers.http import _sent
from worker.providers.transport import FastTransport, body_reads

Replies = list[tuple[list[bytes], bool]]
Serve = Callable[[Replies], Awaitable[tuple["Server", httpx.AsyncClient]]]


class Server:
    """Answers each request with the next scripted reply: a list of byte strings written
    with a short pause between them (so they arrive as separate reads), and whether to
    close afterwards."""

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.connections = 0
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                parts, close = self.replies.pop(0)
                for part in parts:
                    writer.write(part)
                    await writer.drain()
                    await asyncio.sleep(0.01)
                if close:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    servers: list[asyncio.Server] = []
    clients: list[httpx.AsyncClient] = []

    async def start(replies: Replies) -> tuple[Server, httpx.AsyncClient]:
        script = Server(replies)
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        client = httpx.AsyncClient(transport=FastTransport(), base_url=f"http://127.0.0.1:{port}")
        clients.append(client)
        return script, client

    yield start
    for client in clients:
        await client.aclose()
    for server in servers:
        server.close()


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def body_of(client: httpx.AsyncClient, **kwargs: object) -> tuple[int, bytes, int]:
    pieces = 0
    data = b""
    async with client.stream("POST", "/v1/x", content=b'{"a": 1}', **kwargs) as response:  # type: ignore[arg-type]
        async for piece in response.aiter_bytes():
            pieces += 1
            data += piece
    return response.status_code, data, pieces


async def test_chunked_bodies_split_across_reads_and_keep_alive(serve: Serve) -> None:
    events = [b"data: %d\n\n" % i for i in range(5)]
    split = (
        CHUNKED + chunk(events[0])[:3],
        chunk(events[0])[3:] + chunk(events[1]) + chunk(events[2]),
    )
    replies = [
        ([*split, chunk(events[3]) + chunk(events[4]) + b"0\r\n\r\n"], False),
        ([b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel", b"lo"], False),
    ]
    server, client = await serve(replies)
    status, data, pieces = await body_of(client)
    assert status == 200 and data == b"".join(events)
    assert pieces <= 3  # what one read brought comes as one piece, not one per chunk
    assert (await body_of(client))[:2] == (200, b"hello")
    assert server.connections == 1  # the connection was reused
    assert server.requests[0].startswith(b"POST /v1/x HTTP/1.1\r\n")
    assert server.requests[0].endswith(b'\r\n\r\n{"a": 1}')


async def test_a_body_that_ends_with_the_connection(serve: Serve) -> None:
    _, client = await serve([([b"HTTP/1.1 200 OK\r\n\r\n", b"to the end"], True)])
    assert (await body_of(client))[:2] == (200, b"to the end")


async def test_a_truncated_chunked_body_is_a_protocol_error(serve: Serve) -> None:
    _, client = await serve([([CHUNKED + chunk(b"data: 1\n\n") + b"20\r\nhalf"], True)])
    with pytest.raises(httpx.RemoteProtocolError):
        await body_of(client)


async def test_an_interim_answer_is_skipped(serve: Serve) -> None:
    reply = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 429 Too Many\r\nContent-Length: 2\r\n\r\nno"
    _, client = await serve([([reply], False)])
    assert (await body_of(client))[:2] == (429, b"no")


async def test_a_silent_server_is_a_read_timeout(serve: Serve) -> None:
    _, client = await serve([([CHUNKED + chunk(b"data: 1\n\n")], False), ([b""], False)])
    with pytest.raises(httpx.ReadTimeout):
        # Only the read is timed: a loaded machine may take a while to connect.
        await body_of(client, timeout=httpx.Timeout(0.3, connect=10.0))


async def test_a_refused_connection_is_a_connect_error() -> None:
    async with httpx.AsyncClient(transport=FastTransport()) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get("http://127.0.0.1:9/")


async def test_a_response_closed_before_its_end_closes_its_connection(serve: Serve) -> None:
    parts = [CHUNKED + chunk(b"data: 1\n\n"), chunk(b"data: 2\n\n") + b"0\r\n\r\n"]
    server, client = await serve([(parts, False), ([b"HTTP/1.1 204 No Content\r\n\r\n"], False)])
    async with client.stream("POST", "/v1/x", content=b"{}") as response:
        async for _ in response.aiter_bytes():
            break  # the caller stops reading (a cancel)
    assert (await body_of(client))[0] == 204
    assert server.connections == 2  # the half-read connection was not reused


async def reads_of(client: httpx.AsyncClient) -> tuple[list[bytes], bool]:
    """A body through `body_reads`, and whether it came straight from the connection (the
    request sent as the providers send theirs)."""
    request = httpx.Request("POST", client.base_url.join("/v1/x"), content=b"{}")
    async with _sent(client, request) as response:
        reads = body_reads(response)
        straight = reads.__qualname__ != "Response.aiter_bytes"  # type: ignore[attr-defined]
        return [piece async for piece in reads], straight


async def test_body_reads_come_straight_from_the_connection_when_nothing_needs_decoding(
    serve: Serve,
) -> None:
    events = [b"data: %d\n\n" % i for i in range(4)]
    body = chunk(events[0]) + chunk(events[1]), chunk(events[2]) + chunk(events[3]) + b"0\r\n\r\n"
    gzipped = gzip.compress(b"".join(events))
    replies = [
        ([CHUNKED + body[0], body[1]], False),
        ([b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
          % len(gzipped) + gzipped], False),
    ]  # fmt: skip
    server, client = await serve(replies)
    pieces, straight = await reads_of(client)
    assert straight and b"".join(pieces) == b"".join(events) and len(pieces) == 2
    pieces, straight = await reads_of(client)  # decoded by httpx, as before
    assert not straight and b"".join(pieces) == b"".join(events)
    assert server.connections == 1  # the straight read still gave the connection back
