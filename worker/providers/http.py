"""What every HTTP provider shares: POST a request, check the status, read the response as
Server-Sent Events, and turn transport trouble into `UpstreamError`s with stable codes.

Codes: `upstream_error` (an error status or error event), `upstream_timeout` (connect or
idle timeout), `upstream_connect_error`, `upstream_incomplete` (ended without a finish),
`upstream_malformed` (framing broken, or too many unparseable events).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import httpx
import orjson

from shared.errors import UpstreamError
from shared.model_table import ModelEntry
from shared.redact import upstream_message
from shared.sse import ServerSentEvent, SSEDecoder
from worker.providers.transport import body_reads

log = logging.getLogger(__name__)

RETRYABLE_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
MAX_UPSTREAM_LINE_CHARS = 4 * 1024 * 1024
MAX_MALFORMED_EVENTS = 20


def parse_retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def incomplete() -> UpstreamError:
    return UpstreamError(
        "the upstream stream ended before a finish reason",
        retryable=True,
        code="upstream_incomplete",
    )


async def stream_events(
    client: httpx.AsyncClient,
    url: str,
    *,
    body: dict[str, Any],
    headers: dict[str, str],
    entry: ModelEntry,
    params: dict[str, str] | None = None,
) -> AsyncGenerator[list[ServerSentEvent], None]:
    """POST `body` and yield the response's SSE events, those of each network read
    together (decoding them costs far less than a step of this generator each). Closing
    the generator (or cancelling its consumer) closes the upstream request."""
    # Merged as the client merges them: by name in any case, the later one winning.
    sent = dict(_client_headers(client))
    for given in (SSE_REQUEST_HEADERS, headers, entry.extra_headers):
        for name, value in given.items():
            sent[name.lower()] = (name, value)
    request = post_request(
        _url(url),
        params,
        tuple(sent.values()),
        orjson.dumps(body),
        # The read timeout applies to each read: an upstream silent that long has stalled.
        {
            "timeout": {
                "connect": entry.connect_timeout_s,
                "read": entry.idle_timeout_s,
                "write": entry.idle_timeout_s,
                "pool": entry.idle_timeout_s,
            }
        },
    )
    try:
        async with _sent(client, request) as response:
            if response.status_code >= 400:
                payload = await response.aread()
                # Every header sent is redacted from it: the model's own may carry keys too.
                message = upstream_message(payload, dict(sent.values()))
                raise UpstreamError(
                    f"upstream answered {response.status_code}: {message}",
                    upstream_status=response.status_code,
                    retry_after=parse_retry_after(response.headers.get("retry-after")),
                    retryable=response.status_code in RETRYABLE_STATUSES,
                    code="upstream_error",
                )
            decoder = SSEDecoder(max_line_chars=MAX_UPSTREAM_LINE_CHARS)
            async for raw in body_reads(response):
                try:
                    events = list(decoder.feed(raw))
                except ValueError as exc:
                    # An endless line means the framing itself is broken: nothing after it
                    # can be trusted.
                    raise UpstreamError(
                        f"malformed upstream stream: {exc}", code="upstream_malformed"
                    ) from exc
                if events:
                    yield events
    except httpx.HTTPError as exc:
        silent = f"the upstream went silent for {entry.idle_timeout_s:g}s"
        raise transport_error(exc, entry.connect_timeout_s, silent) from exc


@functools.lru_cache(maxsize=256)
def _url(url: str) -> httpx.URL:
    """Upstream URLs, parsed once (a worker calls the same few over and over)."""
    return httpx.URL(url)


def post_request(
    url: httpx.URL,
    params: dict[str, str] | None,
    headers: tuple[tuple[str, str], ...],
    content: bytes,
    extensions: dict[str, Any],
) -> httpx.Request:
    """The request `httpx.Request("POST", url, params=..., headers=..., content=...)`
    makes, the same headers in the same order, with the headers httpx adds (Host,
    Content-Length) taken from a request it made for the same URL and headers before:
    making each anew costs more than the rest of sending it. (A request with its own
    Content-Length or Transfer-Encoding, with query parameters or with no body, is made by
    httpx.)"""
    made = None if params or not content else _made_headers(url, headers)
    if made is None:
        return httpx.Request(
            "POST", url, params=params, headers=list(headers), content=content,
            extensions=extensions,
        )  # fmt: skip
    sent = httpx.Headers(made)
    sent["Content-Length"] = str(len(content))
    # With `stream`, httpx adds no headers of its own: they are all in `sent` already.
    return httpx.Request(
        "POST", url, headers=sent, stream=httpx.ByteStream(content), extensions=extensions
    )


@functools.lru_cache(maxsize=256)
def _made_headers(url: httpx.URL, headers: tuple[tuple[str, str], ...]) -> httpx.Headers | None:
    """The headers of httpx's own POST of a body to `url`, or None when `headers` name
    the body's length or encoding themselves."""
    if any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers):
        return None
    return httpx.Request("POST", url, headers=list(headers), content=b"-").headers


SSE_REQUEST_HEADERS = {"Accept": "text/event-stream", "Content-Type": "application/json"}
_CLIENT_HEADERS: weakref.WeakKeyDictionary[httpx.AsyncClient, dict[str, tuple[str, str]]] = (
    weakref.WeakKeyDictionary()
)


def _client_headers(client: httpx.AsyncClient) -> dict[str, tuple[str, str]]:
    """The client's own headers (User-Agent, Accept-Encoding), which a request sent through
    the client would carry, by lower-cased name. A client's headers are set when it is made."""
    found = _CLIENT_HEADERS.get(client)
    if found is None:
        found = _CLIENT_HEADERS[client] = {k.lower(): (k, v) for k, v in client.headers.items()}
    return found


@contextlib.asynccontextmanager
async def _sent(client: httpx.AsyncClient, request: httpx.Request) -> AsyncIterator[httpx.Response]:
    """`request` sent straight to the transport the client has for its URL (its proxy
    when it has one), its response closed on the way out. A provider's streamed POST needs
    nothing else of the client: it follows no redirects and keeps no cookies, and the rest
    of what `client.stream` does for each request costs more than reading the answer."""
    transport = client._transport_for_url(request.url)
    response = await transport.handle_async_request(request)
    response.request = request
    try:
        yield response
    finally:
        await response.aclose()


DRAIN_S = 0.05


async def read_to_the_end(events: AsyncGenerator[list[ServerSentEvent], None]) -> None:
    """After the upstream's last event, read what is left of the response (usually only
    the end of its chunked body, already received), so its connection goes back to the
    pool for the next request instead of being closed. An upstream that keeps the
    response open longer than `DRAIN_S` is not waited for."""
    with contextlib.suppress(TimeoutError, UpstreamError):
        async with asyncio.timeout(DRAIN_S):
            async for _ in events:
                pass


class EventParser:
    """Parses each event's JSON data. One bad event in a well-framed stream is skipped and
    logged; more than `MAX_MALFORMED_EVENTS` of them end the stream."""

    def __init__(self) -> None:
        self.malformed = 0

    def parse(
        self, sse: ServerSentEvent, handle: Callable[[dict[str, Any]], list[Any]]
    ) -> list[Any]:
        try:
            data = orjson.loads(sse.data)
            if not isinstance(data, dict):
                raise TypeError("not a JSON object")
            return handle(data)
        except UpstreamError:
            raise
        except (
            orjson.JSONDecodeError,
            TypeError,
            ValueError,
            AttributeError,
            KeyError,
            RecursionError,
        ) as exc:
            self.malformed += 1
            log.warning("skipping a malformed upstream event (%d bytes): %s", len(sse.data), exc)
            if self.malformed > MAX_MALFORMED_EVENTS:
                raise UpstreamError(
                    f"the upstream sent more than {MAX_MALFORMED_EVENTS} malformed events",
                    code="upstream_malformed",
                ) from exc
            return []


def transport_error(exc: httpx.HTTPError, connect_timeout_s: float, silent: str) -> UpstreamError:
    """What a failed HTTP exchange with an upstream becomes; `silent` says what a read
    timeout means for the caller. All of them are worth a retry."""
    if isinstance(exc, httpx.ConnectTimeout):
        message = f"could not connect to the upstream within {connect_timeout_s:g}s"
        return UpstreamError(message, retryable=True, code="upstream_timeout")
    if isinstance(exc, httpx.TimeoutException):
        return UpstreamError(silent, retryable=True, code="upstream_timeout")
    return UpstreamError(
        f"upstream connection failed: {type(exc).__name__}",
        retryable=True,
        code="upstream_connect_error",
    )
