"""Response classes: JSON through orjson, and Server-Sent Event streams with the headers
proxies need to pass them through unbuffered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from api.http_protocol import WATCH_DISCONNECT

Watch = Callable[[Callable[[], None] | None], None]  # see WATCH_DISCONNECT

STREAM_ID_HEADER = "X-Spool-Stream-Id"
# The request fields that were dropped because the model's provider cannot honour them
# (`drop_params`), comma-separated.
DROPPED_PARAMS_HEADER = "X-Spool-Dropped-Params"
# The deployment that served a generation (one upstream of a model group).
DEPLOYMENT_HEADER = "X-Spool-Deployment"
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


def _never() -> bool:
    return False


DEFERRED = "spool.deferred_stream"
"""Scope key under which `DeferredStreams` hands an `EventStream` its place to wait."""


class EventStream(Response):
    """An SSE response written straight to the server, one write per chunk the body
    yields. It costs one small task per open stream (the one that notices the client
    leaving, which calls `on_disconnect`), not a task group; `on_close` runs once the
    response is over, however it ended, even if the body never started.

    Under `DeferredStreams` it does not stream inside the framework's call stack: it
    leaves itself in the scope and returns, and is run once that stack (its middleware
    frames, the request object, the parsed body) is gone, so an open stream holds only
    what it needs."""

    def __init__(
        self,
        body: AsyncIterator[bytes],
        stream_id: str,
        *,
        on_disconnect: Callable[[], None] = _ignore,
        on_close: Callable[[], None] = _ignore,
        late_headers: Callable[[], list[tuple[bytes, bytes]]] | None = None,
        ends: Callable[[], bool] = _never,
    ) -> None:
        self.events = body
        self.status_code = 200
        self.background = None
        self.raw_headers = [*_STREAM_HEADERS, (b"x-spool-stream-id", stream_id.encode())]
        self.on_disconnect = on_disconnect
        self.on_close = on_close
        # With `late_headers`, the response head waits for the body's first chunk (an
        # event or a keep-alive) and carries what is known by then.
        self.late_headers = late_headers
        # Asked after each chunk the body yields: whether it was the last one.
        self.ends = ends

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        deferred = scope.get(DEFERRED)
        if deferred is not None:
            deferred.append(self)
            return
        await self.run(receive, send, scope.get(WATCH_DISCONNECT))

    async def run(self, receive: Receive, send: Send, watch: Watch | None = None) -> None:
        """Stream to `send`. The client's leaving is noticed through `watch` (the server's
        `WATCH_DISCONNECT`), else by a task waiting on `receive()`."""
        watcher: asyncio.Future[None] | None = None
        if watch is not None:
            watch(self.on_disconnect)
        else:
            watcher = asyncio.ensure_future(_until_disconnect(receive))
            watcher.add_done_callback(self._watched)
        try:
            head_sent = self.late_headers is None
            if head_sent:
                await send(self._head())
            ended = False
            async for chunk in self.events:
                if not head_sent:
                    await send(self._head())
                    head_sent = True
                # The last chunk ends the response in the same write.
                ended = self.ends()
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
                del chunk  # held no longer than it takes to write it
                if ended:
                    break
            if not head_sent:
                await send(self._head())
            if not ended:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            if watcher is not None:
                watcher.cancel()
            else:
                assert watch is not None
                watch(None)
            aclose = getattr(self.events, "aclose", None)
            if aclose is not None:
                await aclose()
            self.on_close()

    def _head(self) -> dict[str, Any]:
        headers = self.raw_headers
        if self.late_headers is not None:
            headers = [*headers, *self.late_headers()]
        return {"type": "http.response.start", "status": 200, "headers": headers}

    def _watched(self, watcher: asyncio.Future[None]) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            self.on_disconnect()


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class DeferredStreams:
    """The outermost ASGI layer: runs an `EventStream` after the application's own call
    (middleware, routing, the route) has returned, with the server's send and receive."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deferred: list[EventStream] = []
        scope[DEFERRED] = deferred
        await self.app(scope, receive, send)
        if deferred:
            stream = deferred.pop()
            watch = scope.get(WATCH_DISCONNECT)
            # The server keeps the scope as long as the connection: let go of what the
            # framework put in it (routes, exit stacks, handlers) before streaming, and of
            # the room it took (a dict never shrinks as keys go; cleared, it does).
            kept = {key: scope[key] for key in _ASGI_SCOPE_KEYS if key in scope}
            scope.clear()
            scope.update(kept)
            del kept
            await stream.run(receive, send, watch)


_ASGI_SCOPE_KEYS = frozenset(
    ("type", "asgi", "http_version", "server", "client", "scheme", "method", "root_path",
     "path", "raw_path", "query_string", "headers", "state", "extensions")
)  # fmt: skip
