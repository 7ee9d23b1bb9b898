"""Broker routes: tail, result and cancel of any stream, from any replica."""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query

from api.deps import CancelOnDisconnectDep, Services, ServicesDep
from api.responses import EventStream, JSONBody
from api.tail import ResumePoint, Tail
from shared.errors import StreamNotFound
from shared.store import JobRecord

router = APIRouter(prefix="/v1/streams", tags=["streams"])
STREAM_ID = re.compile(r"^[0-9a-f]{32}$")

StreamId = Annotated[str, Path(max_length=64)]


async def load(services: Services, stream_id: str) -> JobRecord:
    if not STREAM_ID.match(stream_id):
        raise StreamNotFound(f"no stream with id {stream_id!r}")
    return await services.store.get(stream_id)


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
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query()] = None,
    cancel_on_disconnect: CancelOnDisconnectDep = False,
) -> EventStream:
    record = await load(services, stream_id)
    resume_from = last_event_id_header or last_event_id
    resume = ResumePoint.parse(resume_from) if resume_from else None
    fmt = services.formats[record.surface]
    tail = Tail(services, record, fmt, cancel_on_disconnect=cancel_on_disconnect)
    return EventStream(tail.stream(await tail.prepare(resume)), record.id)


@router.get("/{stream_id}/result")
async def stream_result(stream_id: StreamId, services: ServicesDep) -> JSONBody:
    record = await load(services, stream_id)
    fmt = services.formats[record.surface]
    transcript = await services.store.transcript(record)
    error = (
        transcript.error.model_dump(exclude={"type"}, exclude_none=True)
        if transcript.error
        else None
    )
    return JSONBody(stream_object(record, output=fmt.response(record, transcript), error=error))


@router.post("/{stream_id}/cancel")
async def cancel_stream(stream_id: StreamId, services: ServicesDep) -> JSONBody:
    record = await load(services, stream_id)
    await services.store.request_cancel(record.id)
    record = await services.store.get(record.id)
    return JSONBody(stream_object(record, cancel_requested=True))
