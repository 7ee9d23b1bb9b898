"""Asset task routes: submit, poll (optionally waiting), follow, cancel, download.

A task belongs to the key that created it; another key gets 404.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path, Query
from starlette.responses import FileResponse, RedirectResponse, Response

from api.deps import CallerDep, OptionalCallerDep, ServicesDep
from api.responses import JSONBody
from api.routes.streams import FollowToken, FollowTokenBody, StreamId, load, mint_follow_token
from api.tail import Tail
from api.tasks import parse_prefer_wait, submit_task, wait_for_end
from shared.artifacts import DOWNLOAD_TYPE, served_type
from shared.errors import ResumePointExpired, SpoolError, TaskNotFound
from shared.netguard import Allowlist, UrlRefused, check_url
from shared.settings import Settings
from shared.store import JobRecord, Status
from shared.tasks import TaskSpec

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])
CANCEL_WAIT_S = 10.0
# On every output response: an output is content, never a page of Spool's origin.
OUTPUT_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
}


class OutputExpired(ResumePointExpired):
    """The output has expired."""

    code = "output_expired"


class OutputUrlRefused(SpoolError):
    """The upstream's URL for an output Spool did not keep is not one to send clients to."""

    status_code = 502
    code = "output_url_refused"
    type = "upstream_error"


async def check_output_url(settings: Settings, url: str) -> None:
    """An output left with the upstream is redirected to only when Spool could have fetched
    it itself: an http(s) URL without credentials, to a host that passes the guard of output
    fetches (public addresses, or `SPOOL_UPSTREAM_ALLOWLIST`). Otherwise 502
    `output_url_refused`: the upstream named something clients must not be sent to."""
    allowlist = Allowlist.parse(settings.upstream_allowlist)
    try:
        await check_url(url, allowlist, "SPOOL_UPSTREAM_ALLOWLIST")
    except UrlRefused as exc:
        raise OutputUrlRefused(f"the upstream's URL for the output {exc.reason}") from None


def _retry_after(record: JobRecord) -> dict[str, str]:
    """How soon polling is worth it: a queued task moves less often than a running one."""
    if record.status.terminal:
        return {}
    return {"Retry-After": "2" if record.status is Status.QUEUED else "1"}


@router.post("", status_code=202)
async def create_task(
    spec: Annotated[TaskSpec, Body()],
    services: ServicesDep,
    caller: CallerDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> JSONBody:
    record, created = await submit_task(services, caller, spec, idempotency_key)
    body = await services.tasks.show(record)
    headers = {"Location": body["urls"]["get"], **_retry_after(record)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return JSONBody(body, status_code=202, headers=headers)


@router.get("/{task_id}")
async def get_task(
    task_id: StreamId,
    services: ServicesDep,
    caller: OptionalCallerDep,
    prefer: Annotated[str | None, Header()] = None,
    follow_token: FollowToken = None,
) -> JSONBody:
    record = await load(services, task_id, caller, follow_token, task=True)
    owner = caller is not None and caller.id == record.owner
    wait = parse_prefer_wait(prefer)
    headers = {}
    if wait is not None:
        headers["Preference-Applied"] = f"wait={wait}"
        if not record.status.terminal and wait > 0:
            await wait_for_end(services, record.id, wait)
            record = await services.store.get(record.id)
    body = await services.tasks.show(record, with_webhooks=owner)
    return JSONBody(body, headers={**headers, **_retry_after(record)})


@router.get("/{task_id}/events")
async def task_events(
    task_id: StreamId,
    services: ServicesDep,
    caller: OptionalCallerDep,
    last_event_id_header: Annotated[str | None, Header(alias="Last-Event-ID")] = None,
    last_event_id: Annotated[str | None, Query()] = None,
    follow_token: FollowToken = None,
) -> Response:
    record = await load(services, task_id, caller, follow_token, task=True)
    resume_from = last_event_id_header or last_event_id
    tail = Tail(services, record, services.formats[record.surface])
    return tail.response(await tail.prepare(resume_from))


@router.post("/{task_id}/follow-token")
async def task_follow_token(
    task_id: StreamId, services: ServicesDep, caller: CallerDep, body: FollowTokenBody = None
) -> JSONBody:
    """A read-only token for this one task (poll, events, outputs), as for streams."""
    record = await load(services, task_id, caller, task=True)
    url = f"/v1/tasks/{record.id}/events"
    return await mint_follow_token(services, record, caller, url, body)


@router.post("/{task_id}/cancel")
async def cancel_task(task_id: StreamId, services: ServicesDep, caller: CallerDep) -> JSONBody:
    """Idempotent. A queued task ends at once; a running one is stopped (and its upstream
    job cancelled), which this waits for, briefly; a finished one is left as it is."""
    record = await load(services, task_id, caller, task=True)
    if not record.status.terminal:
        status = await services.store.request_cancel(record.id)
        if status is Status.RUNNING:
            await wait_for_end(services, record.id, CANCEL_WAIT_S)
        record = await services.store.get(record.id)
    body = await services.tasks.show(record)
    return JSONBody(body, headers=_retry_after(record))


@router.get("/{task_id}/outputs/{index}", response_model=None)
async def task_output(
    task_id: StreamId,
    index: Annotated[int, Path(ge=0, le=10_000)],
    services: ServicesDep,
    caller: OptionalCallerDep,
    follow_token: FollowToken = None,
) -> Response:
    """One output's bytes (with range requests), or a redirect to the upstream's copy.

    An output is served inline only as an allow-listed image, audio or video type (see
    `shared.artifacts.served_type`); any other is a download of `application/octet-stream`.
    """
    record = await load(services, task_id, caller, follow_token, task=True)
    state = await services.tasks.state(record.id)
    outputs = state.outputs or []
    if record.status is not Status.COMPLETED or index >= len(outputs):
        raise TaskNotFound(f"task {record.id} has no output {index}")
    output = outputs[index]
    if not output.stored:
        await check_output_url(services.settings, output.url)
        return RedirectResponse(output.url, status_code=307, headers=OUTPUT_HEADERS)
    names = services.artifacts.names(index, output.media_type)
    paths = [services.artifacts.path(record.id, name) for name in names]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise OutputExpired(f"output {index} of task {record.id} is no longer kept")
    media_type = served_type(output.media_type)
    return FileResponse(
        path,
        media_type=media_type or DOWNLOAD_TYPE,
        filename=f"{record.id}-{names[0]}",
        content_disposition_type="inline" if media_type else "attachment",
        headers={"Cache-Control": "private, max-age=3600", **OUTPUT_HEADERS},
    )
