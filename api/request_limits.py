"""Bounds on what a request may carry and cost before any route sees it.

In order, each step costing little before the next:
1. header size (431) and a declared body size (413), from what uvicorn already holds;
2. for a request with a body: the route must exist (else the body is never read), and the
   caller must be authenticated (401 before a byte of the body is read);
3. the body, read up to `max_body_bytes` (413, with or without Content-Length), and its
   JSON nesting judged on the bytes before it is parsed (400).
A refusal leaves the body unread: the connection drops it as it arrives, up to a bound
(`api.http_protocol`).
"""

from __future__ import annotations

import logging

from fastapi import Request
from redis.exceptions import ClusterDownError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import CALLER_STATE, Services, authenticate
from api.errors import count_redis_error, error_response
from api.fast_routes import FastRoutes
from shared.errors import (
    HeadersTooLarge,
    InvalidRequest,
    RequestTooLarge,
    SpoolError,
    StoreUnavailable,
    Unauthenticated,
)
from shared.request import json_text_too_deep
from shared.settings import Settings

log = logging.getLogger(__name__)

_REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, ClusterDownError, TryAgainError)


def _declared_length(scope: Scope) -> int | None:
    """Content-Length when given as digits, 0 when absent without chunked framing, None
    when the body's length is not declared."""
    length: bytes | None = None
    chunked = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = value
        elif name == b"transfer-encoding":
            chunked = True
    if length is not None and length.isascii() and length.isdigit():
        return int(length)
    return None if chunked or length is not None else 0


def _route_exists(scope: Scope) -> bool:
    return any(route.matches(scope)[0] is Match.FULL for route in scope["app"].router.routes)


KNOWN_ROUTES_MAX = 1024  # (method, path) pairs whose answer `RequestLimits` remembers
KNOWN_PATH_MAX_CHARS = 256  # a longer path is matched every time, not remembered


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


class RequestLimits:
    def __init__(self, app: ASGIApp, settings: Settings, fast: FastRoutes | None = None) -> None:
        self.app = app
        self.fast = fast  # routes served without the framework's steps, when valid
        self.max_body = settings.max_body_bytes
        self.max_headers = settings.max_header_bytes
        self.max_depth = settings.max_json_depth
        # Whether a route takes (method, path): matching walks every route, and the same
        # few paths carry nearly every body. Bounded; emptied when full.
        self._known: dict[tuple[str, str], bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header_bytes = sum(len(k) + len(v) for k, v in scope["headers"])
        if header_bytes > self.max_headers:
            error: SpoolError = HeadersTooLarge(
                f"the request headers are {header_bytes} bytes; at most {self.max_headers}"
            )
            await self._reject(scope, send, error)
            return
        declared = _declared_length(scope)
        if declared == 0:  # nothing to read: the route runs as it is
            await self.app(scope, receive, send)
            return
        if declared is not None and declared > self.max_body:
            await self._reject(scope, send, RequestTooLarge(self._too_large_message()))
            return
        if not self._route_exists(scope):
            # 404 or 405, answered by the router without reading the body.
            await self.app(scope, _no_body, send)
            return
        if not await self._authenticate(scope, send):
            return
        await self._with_body(scope, receive, send)

    def _route_exists(self, scope: Scope) -> bool:
        key = (scope["method"], scope["path"])
        if len(key[1]) > KNOWN_PATH_MAX_CHARS:
            return _route_exists(scope)
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= KNOWN_ROUTES_MAX:
                self._known.clear()
            known = self._known[key] = _route_exists(scope)
        return known

    async def _authenticate(self, scope: Scope, send: Send) -> bool:
        request = Request(scope)
        services: Services = scope["app"].state.services
        try:
            caller = await authenticate(request, services)
        except SpoolError as exc:
            await self._reject(scope, send, exc)
            return False
        except _REDIS_DOWN as exc:
            log.warning("redis unavailable: %s", exc)
            count_redis_error(scope["app"])
            await self._reject(scope, send, StoreUnavailable(), {"Retry-After": "1"})
            return False
        if caller is None:
            await self._reject(
                scope,
                send,
                Unauthenticated(
                    "an API key is required: send it as 'Authorization: Bearer <key>' "
                    "(or 'x-api-key', 'x-goog-api-key', '?key=')"
                ),
            )
            return False
        setattr(request.state, CALLER_STATE, caller)
        return True

    async def _with_body(self, scope: Scope, receive: Receive, send: Send) -> None:
        parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, receive, send)  # the client left; the route sees it
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_body:
                await self._reject(scope, send, RequestTooLarge(self._too_large_message()))
                return
            parts.append(body)
            if not message.get("more_body", False):
                break
        whole = b"".join(parts)
        # JSON parsers skip leading white space and a byte order mark; so does this check.
        start = whole.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")[:1]
        if start in (b"{", b"[") and json_text_too_deep(whole, self.max_depth):
            error = InvalidRequest(f"the JSON body is nested deeper than {self.max_depth} levels")
            await self._reject(scope, send, error)
            return
        if self.fast is not None:
            fast = self.fast.get(scope)
            if fast is not None and await self.fast.serve(fast, scope, whole, receive, send):
                return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _too_large_message(self) -> str:
        return f"the request body exceeds {self.max_body} bytes"

    async def _reject(
        self, scope: Scope, send: Send, error: SpoolError, headers: dict[str, str] | None = None
    ) -> None:
        response = error_response(Request(scope), error, headers)
        await response(scope, _no_body, send)
