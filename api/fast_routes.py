"""The hottest routes served without the framework's per-request steps: what FastAPI does
for them (match the route, parse and validate the body, solve the dependencies, call the
endpoint, answer its errors through the app's handlers), done directly for a request that
is valid.

A request whose body is not JSON, does not validate, or whose headers are out of range
goes FastAPI's way instead, untouched, and is answered exactly as before; so is every other
route. `RequestLimits`, which has read the body and authenticated the caller, hands it here.
On a busy API process the framework's steps cost more than everything Spool does to start
a stream (routing walks every router; each dependency is solved apart).
"""

from __future__ import annotations

import email.message
import functools
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

import orjson
from fastapi import APIRouter
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from api.deps import CALLER_STATE, Services

Endpoint = Callable[..., Awaitable[Response]]
ON_DISCONNECT = frozenset(get_args(Literal["cancel", "continue"]))
# The endpoints served here: they take exactly these parameters (checked when built).
SIGNATURE = ("body", "services", "caller", "cancel_on_disconnect")


@dataclass(frozen=True, slots=True)
class FastRoute:
    route: APIRoute  # what the router would have matched (metrics label requests by it)
    body: type[BaseModel]
    endpoint: Endpoint


class FastRoutes:
    """POST routes whose endpoint is a generation's: `(body, services, caller,
    cancel_on_disconnect)` (see `api.routes.openai_chat.chat_completions`)."""

    def __init__(self, routers: Iterable[APIRouter]) -> None:
        self._routes: dict[str, FastRoute] = {}
        for router in routers:
            for route in router.routes:
                if isinstance(route, APIRoute) and route.methods == {"POST"}:
                    self._routes[route.path] = _fast_route(route)

    def get(self, scope: Scope) -> FastRoute | None:
        if scope["method"] != "POST":
            return None
        return self._routes.get(scope["path"])

    async def serve(
        self, fast: FastRoute, scope: Scope, body: bytes, receive: Receive, send: Send
    ) -> bool:
        """Serve the request; False (nothing sent) when it is not plainly valid and must
        go FastAPI's way."""
        request = Request(scope, receive, send)
        cancel = _header(scope, b"x-spool-on-disconnect")
        if cancel is not None and cancel not in ON_DISCONNECT:
            return False
        if not _json_content(scope):
            return False
        try:
            parsed = fast.body.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError):
            return False
        caller = getattr(request.state, CALLER_STATE, None)
        if caller is None:
            return False
        services: Services = scope["app"].state.services
        scope["route"] = fast.route
        scope["endpoint"] = fast.endpoint
        try:
            response = await fast.endpoint(
                body=parsed,
                services=services,
                caller=caller,
                cancel_on_disconnect=(cancel or services.settings.on_disconnect) == "cancel",
            )
        except Exception as exc:
            handler = _handler(scope, exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)
        return True


def _fast_route(route: APIRoute) -> FastRoute:
    names = tuple(inspect.signature(route.endpoint).parameters)
    if names != SIGNATURE:
        raise TypeError(f"{route.path}: its endpoint takes {names}, not {SIGNATURE}")
    annotated = get_type_hints(route.endpoint, include_extras=True)["body"]
    model = get_args(annotated)[0] if get_origin(annotated) is Annotated else annotated
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        raise TypeError(f"{route.path}: its body is not a model")
    return FastRoute(route, model, route.endpoint)


def _header(scope: Scope, name: bytes) -> str | None:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _json_content(scope: Scope) -> bool:
    """Whether FastAPI would read the body as JSON: a JSON content type (without one, its
    strict default reads no JSON)."""
    content_type = _header(scope, b"content-type")
    return content_type is not None and _is_json(content_type)


@functools.lru_cache(maxsize=64)
def _is_json(content_type: str) -> bool:
    message = email.message.Message()
    message["content-type"] = content_type
    if message.get_content_maintype() != "application":
        return False
    subtype = message.get_content_subtype()
    return subtype == "json" or subtype.endswith("+json")


def _handler(scope: Scope, exc: Exception) -> Callable[..., Awaitable[Response]] | None:
    """The app's handler for `exc`, as the framework's exception middleware finds it (the
    catch-all `Exception` handler is the server-error middleware's, further out)."""
    handlers: dict[Any, Any] = scope["app"].exception_handlers
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            found: Callable[..., Awaitable[Response]] = handlers[cls]
            return found
    return None
