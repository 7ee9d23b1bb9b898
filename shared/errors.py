"""Spool's exceptions. Every one derives from `SpoolError`, whose docstring is its message."""

from __future__ import annotations

from typing import Any


class SpoolError(Exception):
    """Spool failed to handle the request."""

    status_code: int = 500
    code: str = "internal_error"
    type: str = "server_error"

    def __init__(self, message: str | None = None, **details: Any) -> None:
        self.message = message or (self.__doc__ or self.__class__.__name__).strip()
        self.details = details
        super().__init__(self.message)


class ConfigError(SpoolError):
    """Spool's configuration is invalid."""

    code = "config_error"


class InvalidRequest(SpoolError):
    """The request is invalid."""

    status_code = 400
    code = "invalid_request"
    type = "invalid_request_error"


class ContentPolicyViolation(InvalidRequest):
    """The request was blocked by a content policy."""

    code = "content_policy"


class RequestTooLarge(InvalidRequest):
    """The request body is too large."""

    status_code = 413
    code = "request_too_large"


class RouteNotFound(InvalidRequest):
    """No such route."""

    status_code = 404
    code = "not_found"


class ModelNotFound(InvalidRequest):
    """The model does not exist."""

    status_code = 404
    code = "model_not_found"


class StreamNotFound(InvalidRequest):
    """No stream with that id exists."""

    status_code = 404
    code = "stream_not_found"


class TaskNotFound(StreamNotFound):
    """No task with that id exists."""

    code = "task_not_found"


class Conflict(InvalidRequest):
    """The request conflicts with an earlier one."""

    status_code = 409
    code = "conflict"


class InvalidResumeId(InvalidRequest):
    """The resume id is not an event id of this stream."""

    code = "invalid_last_event_id"


class ResumePointExpired(InvalidRequest):
    """The resume point has been trimmed or has expired."""

    status_code = 410
    code = "resume_point_expired"


class StreamExpired(ResumePointExpired):
    """The stream has expired."""

    code = "stream_expired"


class Unauthenticated(SpoolError):
    """A valid API key is required."""

    status_code = 401
    code = "invalid_api_key"
    type = "authentication_error"


class BudgetExhausted(SpoolError):
    """This key has used its token budget."""

    status_code = 402
    code = "budget_exhausted"
    type = "insufficient_quota"


class RateLimited(SpoolError):
    """Too many requests; try again later."""

    status_code = 429
    code = "rate_limit_exceeded"
    type = "rate_limit_error"

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class HeadersTooLarge(InvalidRequest):
    """The request headers are too large."""

    status_code = 431
    code = "headers_too_large"


class StoreUnavailable(SpoolError):
    """Spool's Redis is unreachable; try again shortly."""

    status_code = 503
    code = "redis_unavailable"
    type = "service_unavailable"


class ModerationUnavailable(SpoolError):
    """The content policy's moderation endpoint failed; try again shortly."""

    status_code = 503
    code = "moderation_unavailable"
    type = "service_unavailable"

    def __init__(self, message: str | None = None, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class GenerationTimeout(SpoolError):
    """The generation did not finish in time."""

    status_code = 504
    code = "generation_timeout"


class UpstreamError(SpoolError):
    """The upstream provider failed."""

    status_code = 502
    code = "upstream_error"
    type = "upstream_error"

    def __init__(
        self,
        message: str | None = None,
        *,
        upstream_status: int | None = None,
        retry_after: float | None = None,
        retryable: bool = False,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.upstream_status = upstream_status
        self.retry_after = retry_after
        self.retryable = retryable


class EventsLost(SpoolError):
    """Redis holds fewer of a stream's events than its worker wrote: a failover promoted a
    replica that had not received the last writes (or a restart lost them). The stream
    cannot go on exactly, so it ends with this error."""

    status_code = 503
    code = "events_lost"
    type = "service_unavailable"


class FenceLost(SpoolError):
    """This worker attempt no longer owns the stream; another attempt took it over."""

    code = "fence_lost"


# The HTTP status behind each error code a stream can end with: what a non-streaming
# request answers, and (when the upstream gave none) what picks the error type a stream
# renders. One table, so every surface says the same.
ERROR_STATUSES: dict[str, int] = {
    "internal_error": 500,
    "media_fetch_failed": 400,  # a media URL of the request could not be used
    "content_policy": 400,
    "upstream_error": 502,
    "upstream_connect_error": 502,
    "upstream_incomplete": 502,
    "upstream_malformed": 502,
    "upstream_forbidden": 502,
    "worker_lost": 502,
    "redis_unavailable": 503,
    "moderation_unavailable": 503,
    "no_deployment_available": 503,  # every deployment of a model group is cooling down
    "events_lost": 503,
    "worker_shutdown": 503,
    "queue_timeout": 503,
    "upstream_timeout": 504,
    "generation_timeout": 504,
    "task_timeout": 504,
    "resume_point_expired": 410,
    "stream_expired": 410,
}


def error_status(code: str) -> int:
    return ERROR_STATUSES.get(code, 502)


def error_type(code: str) -> str:
    """OpenAI-style error type for a stream error code."""
    if code.startswith("upstream"):
        return "upstream_error"
    if error_status(code) == 400:
        return "invalid_request_error"
    if error_status(code) == 503:
        return "service_unavailable"
    return "server_error"
