"""In-process upstreams for provider unit tests: responses whose bodies arrive in exactly
the reads a test chooses, and a record of the requests made."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from shared import events as ev
from shared.errors import UpstreamError
from shared.model_table import ModelEntry
from shared.request import GenerationRequest
from worker.providers import Provider

ProviderFactory = Callable[[httpx.AsyncClient], Provider]


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


def make_request(**kw: Any) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {"model": "public-name", "messages": [{"role": "user", "content": "hi"}], **kw}
    )


async def run_provider(
    factory: ProviderFactory, upstream: Upstream, request: GenerationRequest, entry: ModelEntry
) -> list[ev.Event]:
    """Every canonical event the provider makes of the upstream's answer."""
    async with upstream.client() as client:
        return [e async for e in factory(client).stream(request, entry)]


async def run_provider_until_error(
    factory: ProviderFactory, upstream: Upstream, request: GenerationRequest, entry: ModelEntry
) -> tuple[list[ev.Event], UpstreamError]:
    """The events before the provider's `UpstreamError`, and the error."""
    got: list[ev.Event] = []
    async with upstream.client() as client:
        with pytest.raises(UpstreamError) as info:
            async for e in factory(client).stream(request, entry):
                got.append(e)
    return got, info.value
