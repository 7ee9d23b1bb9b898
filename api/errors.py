"""Errors answered in the shape of the API the client speaks, with the right status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError as PydanticValidationError
from redis.exceptions import ClusterDownError, OutOfMemoryError, TryAgainError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException

from api.formats import WireFormat
from api.formats.anthropic import AnthropicFormat
from api.formats.gemini import GeminiFormat
from api.formats.openai_chat import OpenAIChatFormat
from api.formats.openai_responses import OpenAIResponsesFormat
from api.formats.simple import SimpleFormat
from api.responses import JSONBody
from shared.errors import InvalidRequest, RouteNotFound, SpoolError, StoreUnavailable
from shared.limits import StorageFull

log = logging.getLogger(__name__)

_OPENAI = OpenAIChatFormat()
_GEMINI = GeminiFormat()
_RESPONSES = OpenAIResponsesFormat()
_BY_PREFIX: tuple[tuple[str, WireFormat], ...] = (
    ("/v1/responses", _RESPONSES),
    ("/openai/v1/responses", _RESPONSES),
    ("/v1/messages", AnthropicFormat()),
    ("/anthropic/", AnthropicFormat()),
    ("/v1beta/", _GEMINI),
    ("/gemini/", _GEMINI),
    ("/api/", SimpleFormat()),
)


class MethodNotAllowed(InvalidRequest):
    """Method not allowed on this route."""

    status_code = 405
    code = "method_not_allowed"


class InvalidBody(InvalidRequest):
    """The request body does not match the schema."""

    status_code = 422
    code = "invalid_body"


def format_for_path(path: str) -> WireFormat:
    """Errors come in the shape of the API whose route was called; OpenAI's by default."""
    for prefix, fmt in _BY_PREFIX:
        if path.startswith(prefix):
            return fmt
    if path.startswith("/v1/models/") and ":" in path.rsplit("/", 1)[-1]:
        return _GEMINI  # google-genai's `/v1/models/{model}:{method}`
    return _OPENAI


def error_response(
    request: Request, error: SpoolError, headers: dict[str, str] | None = None
) -> JSONBody:
    body = format_for_path(request.url.path).error_body(error)
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers = {"Retry-After": str(max(1, round(retry_after))), **(headers or {})}
    if error.status_code == 401:
        headers = {"WWW-Authenticate": "Bearer", **(headers or {})}
    return JSONBody(body, status_code=error.status_code, headers=headers)


def _validation_error(exc: RequestValidationError) -> SpoolError:
    errors: list[Any] = list(exc.errors())
    if any(e.get("type") == "json_invalid" for e in errors):
        return InvalidRequest("the request body is not valid JSON")
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(p) for p in e.get("loc", ()) if p != "body")
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    error = InvalidBody("; ".join(parts) or "invalid request")
    if errors and errors[0].get("loc", ("body",))[0] != "body":
        error.code = "invalid_parameter"  # a header, query or path parameter
    return error


def count_redis_error(app: Any) -> None:
    """A request that Redis failed, counted in `spool_redis_errors_total{where="request"}`."""
    services = getattr(app.state, "services", None)
    if services is not None:
        services.metrics.redis_errors.labels("request").inc()


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SpoolError)
    async def spool_error(request: Request, exc: SpoolError):  # type: ignore[no-untyped-def]
        return error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):  # type: ignore[no-untyped-def]
        return error_response(request, _validation_error(exc))

    @app.exception_handler(PydanticValidationError)
    async def translation_error(request: Request, exc: PydanticValidationError):  # type: ignore[no-untyped-def]
        # The body matched its API's schema, but what it says cannot become a generation
        # request (say, a conversation whose every turn was empty).
        parts = []
        for e in exc.errors()[:5]:
            loc = ".".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{loc or 'request'}: {e.get('msg')}")
        message = "the request has nothing to generate from: " + "; ".join(parts)
        return error_response(request, InvalidRequest(message))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):  # type: ignore[no-untyped-def]
        error: SpoolError
        if exc.status_code == 404:
            error = RouteNotFound(f"no route {request.method} {request.url.path}")
        elif exc.status_code == 405:
            error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}")
        else:
            error = InvalidRequest(str(exc.detail))
            error.status_code = exc.status_code
        return error_response(request, error)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    @app.exception_handler(ClusterDownError)  # a cluster replacing a master
    @app.exception_handler(TryAgainError)  # a slot moving between nodes
    async def redis_down(request: Request, exc: Exception):  # type: ignore[no-untyped-def]
        log.warning("redis unavailable: %s", exc)
        count_redis_error(request.app)
        return error_response(request, StoreUnavailable(), headers={"Retry-After": "1"})

    @app.exception_handler(OutOfMemoryError)  # Redis at maxmemory before admission saw it
    async def redis_full(request: Request, exc: Exception):  # type: ignore[no-untyped-def]
        log.warning("redis refused a write: %s", exc)
        count_redis_error(request.app)
        return error_response(request, StorageFull())

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # type: ignore[no-untyped-def]
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(request, SpoolError())
