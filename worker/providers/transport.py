"""An HTTP/1.1 transport for httpx, on httptools' C parser, for the providers' streamed
upstream responses: keep-alive connections per host, and a response body handed over as
whatever each network read brought, not one piece per chunk of the chunked encoding.

httpx's own transport (httpcore, h11, anyio) costs more per chunk than everything else a
worker does with an event; upstreams send one chunk per SSE event. Failures are raised as
httpx's exceptions, so callers cannot tell the two transports apart.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator

import httptools
import httpx

MAX_IDLE_PER_HOST = 100
MAX_HEAD_BYTES = 64 * 1024
Key = tuple[str, str, int]


class _Connection(asyncio.Protocol):
    """One connection; one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._parser = httptools.HttpResponseParser(self)
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_done = False
        self.complete = False
        self.keep_alive = False
        self.length_known = False  # Content-Length or chunked: the end is in the bytes
        self.error: Exception | None = None
        self.body: deque[bytes] = deque()
        self.head_size = 0
        self._waiter: asyncio.Future[None] | None = None  # the exchange waiting for news

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_size += len(name) + len(value)
        self.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length" or (
            lowered == b"transfer-encoding" and b"chunked" in value.lower()
        ):
            self.length_known = True

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        if 100 <= self.status < 200:  # an interim answer: the real one follows
            self.headers = []
            return
        self.head_done = True
        self._wake()

    def on_body(self, data: bytes) -> None:
        self.body.append(data)
        if self._waiter is not None:  # (only when an exchange waits: this runs per chunk)
            self._wake()

    def on_message_complete(self) -> None:
        if self.head_done:
            self.complete = True
            self.keep_alive = self._parser.should_keep_alive()  # known only now
            self._wake()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
        if not self.head_done and self.head_size > MAX_HEAD_BYTES:
            self._fail(httpx.RemoteProtocolError("the response head is too large"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.head_done and not self.complete and not self.length_known:
            self.complete = True  # a body that ends when the connection does
        elif not self.complete and self.error is None:
            self.error = httpx.RemoteProtocolError("the server closed the connection mid-response")
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: Exception) -> None:
        self.error = error
        self.close()
        self._wake()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    # -- the exchange ---------------------------------------------------------------------

    @property
    def reusable(self) -> bool:
        return (
            not self.closed
            and self.complete
            and self.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    async def wait(self, read_timeout: float | None) -> None:
        """Until the connection has news (the caller looks at what): bytes, its end, an
        error. A future and a timer, not an event under `asyncio.timeout`: this runs for
        every network read."""
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = None if read_timeout is None else loop.call_later(read_timeout, _expire, waiter)
        try:
            await waiter
        except TimeoutError:
            self.close()
            raise httpx.ReadTimeout("the upstream sent nothing within the read timeout") from None
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class FastTransport(httpx.AsyncBaseTransport):
    """http and https over HTTP/1.1, with up to `MAX_IDLE_PER_HOST` idle connections kept
    per host. Redirects, cookies and decompression stay with the httpx client."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._ssl = ssl_context or httpx.create_ssl_context()
        self._idle: dict[Key, list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts: dict[str, float | None] = request.extensions.get("timeout", {})
        conn = self._take_idle(key) or await self._open(key, timeouts.get("connect"))
        conn._reset()
        try:
            await self._send(conn, request)
            while not conn.head_done:
                if conn.error is not None:
                    raise conn.error
                if conn.closed:
                    raise httpx.RemoteProtocolError("the server closed the connection")
                await conn.wait(timeouts.get("read"))
        except BaseException:
            conn.close()
            raise
        body = _Body(self, key, conn, timeouts.get("read"))
        return httpx.Response(
            conn.status,
            headers=conn.headers,
            stream=body,
            extensions={"http_version": b"HTTP/1.1"},
        )

    def _take_idle(self, key: Key) -> _Connection | None:
        idle = self._idle.get(key)
        while idle:
            conn = idle.pop()
            if conn.reusable:
                return conn
            conn.close()
        return None

    def _give_back(self, key: Key, conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if conn.reusable and len(idle) < MAX_IDLE_PER_HOST:
            idle.append(conn)
        else:
            conn.close()

    async def _open(self, key: Key, connect_timeout: float | None) -> _Connection:
        scheme, host, port = key
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, conn = await loop.create_connection(
                    _Connection,
                    host,
                    port,
                    ssl=self._ssl if scheme == "https" else None,
                    server_hostname=host if scheme == "https" else None,
                )
        except TimeoutError:
            raise httpx.ConnectTimeout(f"could not connect to {host}:{port} in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpx.ConnectError(f"could not connect to {host}:{port}: {exc}") from exc
        return conn

    async def _send(self, conn: _Connection, request: httpx.Request) -> None:
        if conn.transport is None or conn.closed:
            raise httpx.ConnectError("the connection is closed")
        target = request.url.raw_path
        head = [request.method.encode(), b" ", target, b" HTTP/1.1\r\n"]
        for name, value in request.headers.raw:
            head += (name, b": ", value, b"\r\n")
        head.append(b"\r\n")
        body = await request.aread()
        conn.transport.write(b"".join([*head, body]))

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class _Body(httpx.AsyncByteStream):
    def __init__(
        self, transport: FastTransport, key: Key, conn: _Connection, timeout: float | None
    ) -> None:
        self._transport = transport
        self._key = key
        self._conn = conn
        self._timeout = timeout
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        while True:
            if conn.body:
                data = b"".join(conn.body)
                conn.body.clear()
                yield data
                continue
            if conn.error is not None:
                raise conn.error
            if conn.complete:
                self._done = True
                return
            if conn.closed:
                raise httpx.RemoteProtocolError("the server closed the connection mid-response")
            await conn.wait(self._timeout)

    async def aclose(self) -> None:
        if self._done and not self._conn.body:
            self._transport._give_back(self._key, self._conn)
        else:
            self._conn.close()  # the rest of this response would confuse the next one


def body_reads(response: httpx.Response) -> AsyncIterator[bytes]:
    """The body of a streamed response, a network read at a time. One this transport made
    that needs no decoding (no Content-Encoding) comes straight from its connection,
    without httpx's decoder and re-chunking layers, which would hand over the same bytes;
    any other through `aiter_bytes`. The response's `aclose` ends either."""
    stream = response.stream
    if type(stream) is _Body and "content-encoding" not in response.headers:
        return stream.__aiter__()
    return response.aiter_bytes()
