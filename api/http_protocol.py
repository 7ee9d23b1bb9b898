"""The HTTP/1.1 connection Spool serves: uvicorn's httptools protocol with the request head
bounded in size and in time while it is read, and idle connections let go first when file
descriptors run short.

uvicorn buffers a request head without limit and waits for it forever. Here:
- a head larger than `max_header_bytes` (plus room for the request line) is answered 431
  and the connection closed, after at most one more read: nothing past the limit is kept;
- a connection that has not sent a complete head `header_timeout_s` after it opened (or
  after its last response) is closed, however slowly it trickles bytes;
- a request body nobody reads (the answer came first) is dropped as it arrives, up to a
  bound;
- when the open connections reach `max_connections` (from the descriptor limit), the
  connection that has waited longest for a head is closed to make room, so clients that
  only hold sockets cannot keep others out.

It also tells a response when its client goes (`WATCH_DISCONNECT` in the scope), so an
open stream needs no task of its own waiting on `receive()` for that.
"""

from __future__ import annotations

import asyncio
import resource
from collections.abc import Callable
from typing import Any, ClassVar

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.settings import Settings

# Room over `max_header_bytes` for the request line and framing; the exact header limit,
# answered in the surface's own error shape, is `api.request_limits.RequestLimits`'.
HEAD_SLACK_BYTES = 8 * 1024
# How much of an unwanted body (in `max_body_bytes`) is read and dropped before the
# connection is dropped instead.
DISCARD_BODIES = 4
# Descriptors kept for what is not a client connection: Redis, upstreams, logs, files.
RESERVED_DESCRIPTORS = 64


WATCH_DISCONNECT = "spool.watch_disconnect"
"""Scope key: `watch(callback)` calls `callback()` once, when the client of this
request disconnects (at once, if it already has); `watch(None)` stops watching."""


def descriptor_budget(reserved: int = RESERVED_DESCRIPTORS) -> int:
    """How many client connections this process can hold: its descriptor limit less a
    reserve for everything else."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(16, soft - reserved)


_HEAD_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
    b"content-type: application/json\r\n"
    b"connection: close\r\n"
    b"content-length: %d\r\n\r\n%s"
)
_HEAD_TOO_LARGE_BODY = (
    b'{"error":{"message":"the request head exceeds %d bytes",'
    b'"type":"invalid_request_error","code":"headers_too_large"}}'
)


def _lean(event: asyncio.Event) -> None:
    """Keep the waiters of an event a connection holds while it is open in a list, not a
    deque: an empty deque is 760 bytes, a list 56, and an open stream holds two such
    events. (`asyncio.Event` only appends to, removes from and walks its waiters, which a
    list does as well.)"""
    if not event._waiters:
        event._waiters = []  # type: ignore[assignment]


class GuardedHttpProtocol(HttpToolsProtocol):
    """One client connection. Configure a subclass per server with `configured`."""

    max_head_bytes = 16 * 1024 + HEAD_SLACK_BYTES
    header_timeout_s = 10.0
    max_connections = 1000
    max_discard_bytes = 4 * 4 * 1024 * 1024
    # Connections waiting for a request head, oldest first (a dict keeps insertion order).
    # Each configured subclass has its own.
    waiting: ClassVar[dict[GuardedHttpProtocol, None]] = {}

    @classmethod
    def configured(cls, settings: Settings, max_connections: int | None = None) -> type[Any]:
        attributes = {
            "max_head_bytes": settings.max_header_bytes + HEAD_SLACK_BYTES,
            "header_timeout_s": settings.header_timeout_s,
            "max_connections": max_connections or descriptor_budget(),
            "max_discard_bytes": DISCARD_BODIES * settings.max_body_bytes,
            "waiting": {},
        }
        return type("SpoolHttpProtocol", (cls,), attributes)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0
        self._in_head = False
        self._head_began_here = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._discarded = 0
        self._on_lost: Callable[[], None] | None = None

    # Connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        _lean(self.flow._is_writable_event)
        self._begin_head(timed=True)
        excess = len(self.connections) - self.max_connections
        if excess > 0:
            self._make_room(excess)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()

    def watch_disconnect(self, callback: Callable[[], None] | None) -> None:
        gone = self.cycle is None or self.cycle.disconnected or self.transport.is_closing()
        if callback is not None and gone:
            self.loop.call_soon(callback)  # gone already
            return
        self._on_lost = callback

    def _make_room(self, excess: int) -> None:
        for connection in list(self.waiting)[:excess]:
            connection._stop_waiting()
            connection.transport.abort()
            self.connections.discard(connection)  # counted out now, not when the loop says
            excess -= 1
        if excess > 0:
            # Every connection is busy with a request: this one cannot be served.
            self._stop_waiting()
            self.transport.abort()
            self.connections.discard(self)

    # The request head

    def _begin_head(self, timed: bool) -> None:
        self._in_head = True
        self._head_bytes = 0
        if timed and self._head_timer is None:
            self._head_timer = self.loop.call_later(self.header_timeout_s, self._head_timeout)
            self.waiting[self] = None

    def _stop_waiting(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        self.waiting.pop(self, None)

    def _head_timeout(self) -> None:
        self._head_timer = None
        self.waiting.pop(self, None)
        if not self.transport.is_closing():
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.parser is None:  # refused or lost: nothing more is read
            return
        self._head_began_here = False
        super().data_received(data)
        # A head that began inside this read (after a pipelined request's end) is counted
        # from the next read on: the bytes before it were the previous request's.
        if self._in_head and not self._head_began_here and self.parser is not None:
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes and not self.transport.is_closing():
                self._refuse_head()

    def _refuse_head(self) -> None:
        self._stop_waiting()
        if self.cycle is None or self.cycle.response_complete:
            body = _HEAD_TOO_LARGE_BODY % (self.max_head_bytes - HEAD_SLACK_BYTES)
            self.transport.write(_HEAD_TOO_LARGE % (len(body), body))
        # else: a pipelined head behind a response still being written; an answer now
        # would land inside that response, so the connection just closes.
        self.transport.close()
        self.parser = None  # type: ignore[assignment]  # parse nothing more of it

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._discarded = 0
        self._stop_waiting()
        self.scope[WATCH_DISCONNECT] = self.watch_disconnect  # type: ignore[literal-required]
        super().on_headers_complete()
        if self.cycle is not None:
            _lean(self.cycle.message_event)

    def on_body(self, body: bytes) -> None:
        # A body the answer did not need (a refusal, a 404) is read and dropped so the
        # client, still sending, gets to read the answer; up to a bound, then the
        # connection is dropped instead.
        if self.cycle is not None and self.cycle.response_complete:
            self._discarded += len(body)
            if self._discarded > self.max_discard_bytes and not self.transport.is_closing():
                self.transport.abort()
            return
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # Whatever follows is the next request's head; its clock starts with the response's end.
        self._begin_head(timed=False)
        self._head_began_here = True

    def on_response_complete(self) -> None:
        self._on_lost = None  # what watched was this response's; the next one is another
        super().on_response_complete()
        if not self.transport.is_closing() and self._in_head:
            self._begin_head(timed=True)
