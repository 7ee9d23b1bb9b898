"""Broker routes: tail, result and cancel of a stream, from any replica.

A stream belongs to the key that created it. Another key gets 404, never 403, so ids
cannot be probed. The owner can mint read-only follow tokens, so a second device can
follow along (tail and result, not cancel) without the key.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Path, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.deps import CallerDep, CancelOnDisconnectDep, OptionalCallerDep, Services, ServicesDep
from api.responses import JSONBody
from api.tail import Tail
from shared.auth import ApiKey
from shared.errors import (
    Conflict,
    StreamExpired,
    StreamNotFound,
    TaskNotFound,
    Unauthenticated,
)
from shared.store import JobRecord
from shared.tasks import TASK_SURFACE

router = APIRouter(prefix="/v1/streams", tags=["streams"])
STREAM_ID = re.compile(r"^[0-9a-f]{32}$")
FOLLOW_TOKEN_PREFIX = "ft_"

StreamId = Annotated[str, Path(max_length=64)]
FollowToken = Annotated[str | None, Query(max_length=128)]


class FollowTokensExhausted(Conflict):
    """The stream has as many follow tokens as a stream may have."""

    code = "follow_tokens_exhausted"


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def load(
    services: Services,
    stream_id: str,
    caller: ApiKey | None,
    follow_token: str | None = None,
    *,
    task: bool = False,
) -> JobRecord:
    """The stream (or with `task`, the task), if `caller` owns it or `follow_token` opens
    it; otherwise 404."""
    missing: type[StreamNotFound] = TaskNotFound if task else StreamNotFound
    not_found = f"no {'task' if task else 'stream'} with id {stream_id!r}"
    if not STREAM_ID.fullmatch(stream_id):
        raise missing(not_found)
    if caller is None and follow_token is None:
        raise Unauthenticated("an API key or a follow token is required")
    try:
        record = await services.store.get(stream_id)
    except StreamExpired as expired:
        if caller is not None and expired.details.get("owner") in (caller.id, None):
            raise StreamExpired(f"{'task' if task else 'stream'} {stream_id} has expired") from None
        raise missing(not_found) from None
    if (record.surface == TASK_SURFACE) != task:
        raise missing(not_found)
    if caller is not None and (record.owner == caller.id or not services.settings.auth_enabled):
        return record
    if follow_token is not None and await _follow_token_opens(services, record, follow_token):
        return record
    raise missing(not_found)


async def _follow_token_opens(services: Services, record: JobRecord, token: str) -> bool:
    """A follow token opens its stream while the stream is kept and the key that minted
    it (the stream's owner) is not revoked."""
    if not await services.store.follow_token_valid(record.id, _token_digest(token)):
        return False
    return record.owner is None or await services.keys.active(record.owner)


def stream_object(record: JobRecord, **extra: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "object": "spool.stream",
        "status": record.status.value,
        "model": record.model,
        "created_at": int(record.created_at),
        "finished_at": int(record.finished_at) if record.finished_at else None,
        **extra,
    }


@router.get("/{stream_id}")
async def tail_stream(
    stream_id: StreamId,
    services: ServicesDep,
    caller: OptionalCallerDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query()] = None,
    follow_token: FollowToken = None,
    cancel_on_disconnect: CancelOnDisconnectDep = False,
) -> Response:
    record = await load(services, stream_id, caller, follow_token)
    resume_from = last_event_id_header or last_event_id
    fmt = services.formats[record.surface]
    # Only the owner's disconnect may cancel; a follower only watches.
    cancels = cancel_on_disconnect and caller is not None and caller.id == record.owner
    tail = Tail(services, record, fmt, cancel_on_disconnect=cancels)
    return tail.response(await tail.prepare(resume_from))


@router.get("/{stream_id}/result")
async def stream_result(
    stream_id: StreamId,
    services: ServicesDep,
    caller: OptionalCallerDep,
    follow_token: FollowToken = None,
) -> JSONBody:
    record = await load(services, stream_id, caller, follow_token)
    fmt = services.formats[record.surface]
    transcript = await services.store.transcript(record)
    error = (
        transcript.error.model_dump(exclude={"type", "attempts"}, exclude_none=True)
        if transcript.error
        else None
    )
    extra: dict[str, Any] = {}
    if transcript.routing:
        extra["routing"] = transcript.routing
    if transcript.filtered:
        extra["filtered"] = transcript.filtered  # the output was cut short by a policy
    output = fmt.response(record, transcript)
    return JSONBody(stream_object(record, output=output, error=error, **extra))


@router.post("/{stream_id}/cancel")
async def cancel_stream(stream_id: StreamId, services: ServicesDep, caller: CallerDep) -> JSONBody:
    record = await load(services, stream_id, caller)
    await services.store.request_cancel(record.id)
    record = await services.store.get(record.id)
    return JSONBody(stream_object(record, cancel_requested=True))


class FollowTokenRequest(BaseModel):
    """What a follow token is minted with: how long it may be used (seconds); by default
    `follow_token_ttl_s`, and never longer than its stream is kept."""

    model_config = ConfigDict(extra="forbid")

    ttl_s: int | None = Field(default=None, ge=1, le=366 * 24 * 3600)


FollowTokenBody = Annotated[FollowTokenRequest | None, Body()]


@router.post("/{stream_id}/follow-token")
async def follow_token(
    stream_id: StreamId, services: ServicesDep, caller: CallerDep, body: FollowTokenBody = None
) -> JSONBody:
    """A read-only token for this one stream (tail and result)."""
    record = await load(services, stream_id, caller)
    url = f"/v1/streams/{record.id}"
    return await mint_follow_token(services, record, caller, url, body)


async def mint_follow_token(
    services: Services,
    record: JobRecord,
    caller: ApiKey,
    url: str,
    asked: FollowTokenRequest | None = None,
) -> JSONBody:
    """A read-only token for one stream or task, valid for its lifetime (asked for, or
    `follow_token_ttl_s`; never past the stream's) while its owner's key is not revoked;
    at most `max_follow_tokens` each (409 past that), each a request of the key's minute
    (429 past its `rpm`). `url` is where the token is used."""
    token = FOLLOW_TOKEN_PREFIX + secrets.token_urlsafe(24)
    await services.admission.take_request(caller, "follow:" + _token_digest(token))
    settings = services.settings
    longest = settings.retention_s + settings.job_timeout_s
    lifetime = (asked.ttl_s if asked else None) or settings.follow_token_ttl_s or longest
    ttl = await services.store.mint_follow_token(
        record.id, _token_digest(token), settings.max_follow_tokens, longest, lifetime
    )
    if not ttl:
        raise FollowTokensExhausted(
            f"{record.id} already has {settings.max_follow_tokens} follow tokens"
        )
    return JSONBody(
        {
            "object": "spool.follow_token",
            "stream_id": record.id,
            "token": token,
            "expires_at": int(time.time()) + ttl,
            "url": f"{url}?follow_token={token}",
        }
    )
