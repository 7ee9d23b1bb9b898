"""Response classes: JSON through orjson, and Server-Sent Event streams with the headers
proxies need to pass them through unbuffered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

STREAM_ID_HEADER = "X-Spool-Stream-Id"
_STREAM_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def _ignore() -> None:
    return None


class EventStream(Response):
    """An SSE response written straight to the server, one write per chunk the body
    yields. It costs one small task per open stream (the one that notices the client
    leaving, which calls `on_disconnect`), not a task group; `on_close` runs once the
    response is over, however it ended, even if the body never started."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        stream_id: str,
        *,
        on_disconnect: Callable[[], None] = _ignore,
        on_close: Callable[[], None] = _ignore,
    ) -> None:
        self.events = body
        self.status_code = 200
        self.background = None
        self.raw_headers = [*_STREAM_HEADERS, (b"x-spool-stream-id", stream_id.encode())]
        self.on_disconnect = on_disconnect
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        watcher = asyncio.ensure_future(_until_disconnect(receive))
        watcher.add_done_callback(self._watched)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            self.on_close()

    def _watched(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            self.on_disconnect()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
