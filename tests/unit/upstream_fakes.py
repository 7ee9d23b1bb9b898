"""In-process upstreams for provider unit tests: responses whose bodies arrive in exactly
the reads a test chooses, and a record of the requests made."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx


class ChunkStream(httpx.AsyncByteStream):
    """A response body delivered in exactly the reads we choose."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.consumed = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.consumed += 1
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


class Upstream:
    """Records the requests it gets and answers each with the configured response."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response]) -> None:
        self.respond = respond
        self.requests: list[httpx.Request] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.respond(request)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handler))


def sse_upstream(chunks: list[bytes], status: int = 200) -> Upstream:
    return Upstream(
        lambda _: httpx.Response(
            status, headers={"content-type": "text/event-stream"}, stream=ChunkStream(chunks)
        )
    )
