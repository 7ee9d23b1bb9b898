"""Starting a generation and answering it, shared by every generation surface: create the
job record, enqueue the job, then stream the tail or wait for the assembled result."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import orjson
from starlette.responses import Response

from api.deps import Services
from api.formats import WireFormat
from api.responses import DEPLOYMENT_HEADER, DROPPED_PARAMS_HEADER, STREAM_ID_HEADER, JSONBody
from api.routing import plan_route
from api.tail import Tail, wait_for_transcript
from shared import events as ev
from shared import logs, tracing
from shared.auth import ApiKey
from shared.errors import (
    BudgetExhausted,
    ConfigError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    RequestTooLarge,
    SpoolError,
    error_status,
    error_type,
)
from shared.fidelity import judge
from shared.media import check_media, remote_urls
from shared.model_table import (
    AutoRouter,
    ModelEntry,
    ModelGroup,
    Route,
    TableModel,
    entry_json,
)
from shared.netguard import Allowlist, UrlRefused, check_url
from shared.policy import check_input, policies_for
from shared.queue import GENERATE
from shared.request import GenerationRequest
from shared.settings import PASSTHROUGH_DEFAULTS, Settings
from shared.store import JobRecord, Status
from shared.transcript import Transcript


def new_stream_id() -> str:
    """32 hex digits, 128 random bits (a third of what `uuid4().hex` costs)."""
    return secrets.token_hex(16)


def model_not_permitted(name: str) -> ModelNotFound:
    """What a key limited to other models hears: the same answer whether or not the model
    exists, so a key cannot probe the deployment's table."""
    return ModelNotFound(f"the model {name!r} does not exist or this key may not use it")


def lookup_model(settings: Settings, name: str, caller: ApiKey) -> TableModel:
    """A model-table entry (an upstream, a group or an auto-router), or a
    `provider/model` name passed through to that provider when the `passthrough` setting
    allows it; the caller's key must allow the name."""
    if not caller.may_use(name):
        raise model_not_permitted(name)
    entry = settings.models.get(name)
    if entry is not None:
        return entry
    provider, sep, upstream = name.partition("/")
    if sep and upstream and provider in PASSTHROUGH_DEFAULTS:
        if not settings.passthrough_allows(name):
            raise ModelNotFound(
                f"the model {name!r} does not exist: pass-through of {name!r} to "
                f"{provider} is not allowed on this deployment"
            )
        defaults = PASSTHROUGH_DEFAULTS[provider]
        return ModelEntry.model_validate(
            {"provider": provider, "model": upstream, "name": name, **defaults}
        )
    raise ModelNotFound(f"the model {name!r} does not exist")


def resolve_model(settings: Settings, name: str, caller: ApiKey) -> ModelEntry:
    """The one upstream a request without a route (embeddings, token counts) goes to: the
    entry itself, a group's first deployment, an auto-router's default's."""
    entry = lookup_model(settings, name, caller)
    if isinstance(entry, AutoRouter):
        entry = settings.models[entry.router.default]
    if isinstance(entry, ModelGroup):
        return entry.deployments[0]
    assert isinstance(entry, ModelEntry)
    return entry


def policy_names(settings: Settings, entry: TableModel, route: Route, caller: ApiKey) -> list[str]:
    """The content policies a request goes through: its model's (an auto-router's, and
    the model it chose), and its key's."""
    names = [entry.policy]
    if route.chosen is not None:
        names.append(settings.models[route.chosen].policy)
    names.append(caller.policy)
    return list(dict.fromkeys(n for n in names if n is not None))


async def check_input_policies(
    services: Services, record: JobRecord, request: GenerationRequest
) -> None:
    """A request whose input a policy blocks is refused (400 `content_policy`) before it
    is queued; one whose moderation endpoint fails closed, with a 503."""
    names = record.request.get("policies")
    if not names:
        return
    try:
        policies = policies_for(names, services.settings.policies)
    except ConfigError as missing:
        raise ConfigError(f"the key's content policy is not configured: {missing}") from None
    texts = [m.content for m in request.messages if m.content]
    texts += [
        p.text for m in request.messages for p in m.parts or [] if p.type == "text" and p.text
    ]
    await check_input(policies, texts, services.http, count=services.metrics.count_policy)


def judge_route(
    request: GenerationRequest, route: Route
) -> tuple[GenerationRequest, list[str], Route]:
    """The request judged against the route's deployments (see `shared.fidelity.judge`):
    a deployment that cannot honour it leaves the route; when none of the chosen model's
    can, the first refusal is the answer. Returns the request as the first deployment
    gets it, the fields dropped for it, and the route that is left."""
    if route.fixed:
        judged, dropped = judge(request, route.primary.deployments[0])
        return judged, dropped, route
    first: tuple[GenerationRequest, list[str]] | None = None
    refusal: InvalidRequest | None = None
    kept: dict[str, list[ModelEntry]] = {}
    for group in route.groups.values():
        for deployment in group.deployments:
            try:
                outcome = judge(request, deployment)
            except InvalidRequest as refused:
                if group is route.primary:
                    refusal = refusal or refused
                continue
            kept.setdefault(group.name, []).append(deployment)
            if first is None and group is route.primary:
                first = outcome
    if first is None:
        assert refusal is not None
        raise refusal
    return first[0], first[1], route.narrowed(kept)


def check_limits(settings: Settings, request: GenerationRequest) -> None:
    """Size limits on what the request carries, whichever API it came in through."""
    if len(request.messages) > settings.max_messages:
        raise InvalidRequest(f"at most {settings.max_messages} messages are allowed")
    if len(request.tools) > settings.max_tools:
        raise InvalidRequest(f"at most {settings.max_tools} tools are allowed")
    check_media(request, settings.max_media_bytes)
    check_mcp(settings, request)
    strings = [m.content for m in request.messages]
    strings += [c.arguments for m in request.messages for c in m.tool_calls or []]
    strings += [t.description or "" for t in request.tools] + request.stop
    longest = max(len(s) for s in strings)
    if longest > settings.max_string_chars:
        raise InvalidRequest(
            f"a string in the request is {longest} characters long; at most "
            f"{settings.max_string_chars} are allowed"
        )


def check_mcp(settings: Settings, request: GenerationRequest) -> None:
    """A request may select only configured MCP servers."""
    for selection in request.mcp:
        if selection.server not in settings.mcp_servers:
            raise InvalidRequest(f"no MCP server named {selection.server!r} is configured")


async def check_media_urls(settings: Settings, request: GenerationRequest) -> None:
    """Media URLs must pass the outbound guard the workers fetch them through: a private
    or unresolvable host is a 400 now, not a failed stream later."""
    urls = remote_urls(request)
    if len(urls) > settings.max_media_urls:
        raise InvalidRequest(f"at most {settings.max_media_urls} media URLs are allowed")
    allowlist = Allowlist.parse(settings.upstream_allowlist)
    for url in dict.fromkeys(urls):
        try:
            await check_url(url, allowlist, "SPOOL_UPSTREAM_ALLOWLIST")
        except UrlRefused as exc:
            raise InvalidRequest(f"the media URL {url[:200]!r} {exc.reason}") from None


def new_job(
    services: Services,
    fmt: WireFormat,
    request: GenerationRequest,
    render: dict[str, Any],
    stream_id: str,
    owner: ApiKey,
) -> tuple[JobRecord, list[str]]:
    """The job record a generation request becomes, checked but not yet stored, and the
    request fields dropped because its provider cannot honour them."""
    settings = services.settings
    entry = lookup_model(settings, request.model, owner)
    check_limits(settings, request)
    route = plan_route(settings, request.model, request, owner, entry)
    judged, dropped, route = judge_route(request, route)
    if route.chosen is not None and fmt.surface == "simple":
        # The simple surface's events name the model that answers: the router's choice.
        render = {**render, "model": route.chosen}
    # The API resolves the model once, so every worker runs what this replica accepted:
    # one upstream (`entry`), or a route whose every deployment judges the request again.
    payload: dict[str, Any] = {
        "request": (judged if route.fixed else request).model_dump(mode="json"),
        "entry": entry_json(route.primary.deployments[0]),
    }
    if not route.fixed:
        payload["route"] = route.to_json()
    policies = policy_names(settings, entry, route, owner)
    if policies:
        payload["policies"] = policies  # the worker checks the output against them too
    record = JobRecord(
        id=stream_id,
        status=Status.QUEUED,
        surface=fmt.surface,
        model=request.model,
        created_at=time.time(),
        started_at=None,
        finished_at=None,
        request=payload,
        render=render,
        output=None,
        cancel_requested=False,
        owner=owner.id,
    )
    return record, dropped


async def enqueue_job(
    services: Services, record: JobRecord, owner: ApiKey, request: GenerationRequest
) -> int:
    """Admit the job (limits and budget), store it and queue it. On a key whose budget
    left is less than the request's worst case, the job's `max_tokens` is cut to it.
    Returns how many connections listened to the stream as it was stored."""
    settings = services.settings
    stored = len(orjson.dumps(record.request))
    if stored > settings.max_stored_request_bytes:
        raise RequestTooLarge(
            f"the request would be kept as {stored} bytes; at most "
            f"{settings.max_stored_request_bytes} (max_stored_request_bytes)"
        )
    try:
        allowed = await services.admission.admit(owner, record.id, request, stored_bytes=stored)
        if allowed is not None:
            record.request["request"]["max_tokens"] = allowed
    except (RateLimited, BudgetExhausted) as refused:
        reason = "budget" if isinstance(refused, BudgetExhausted) else "limit"
        services.metrics.refused.labels(reason).inc()
        raise
    stream_id = record.id
    try:
        # After admission, so a key's rate limit also bounds what it asks of a moderation
        # endpoint; a refusal gives the slot back (below).
        await check_input_policies(services, record, request)
        # The record, the job in the queue and the wake-up for workers: one round trip.
        listeners = await services.store.create(
            stream_id,
            surface=record.surface,
            model=record.model,
            request=record.request,
            render=record.render,
            owner=owner.id,
            then=lambda pipe: services.queue.enqueue_into(pipe, GENERATE, stream_id, stream_id),
        )
        services.metrics.generations.labels(record.surface).inc()
    except BaseException:
        await services.admission.release(owner, stream_id)
        raise
    return listeners


def error_from_event(event: ev.Error) -> SpoolError:
    """A stream's error event as the error a non-streaming request answers with."""
    error = SpoolError(event.message)
    error.code = event.code
    error.status_code = error_status(event.code)
    error.type = error_type(event.code)
    return error


async def respond(
    services: Services, fmt: WireFormat, record: JobRecord, tail: Tail | None
) -> Response:
    """Stream the job's tail (already listening since before the job was enqueued), or
    wait for the job's end and answer with the assembled result."""
    if tail is not None:
        # A stream created a moment ago has nothing to validate or catch up on.
        return tail.response(tail.beginning())
    transcript = await wait_for_transcript(
        services.hub, record, services.settings.nonstream_timeout_s
    )
    record = await services.store.get(record.id)  # now with its final status and times
    if transcript.error is not None:
        error = error_from_event(transcript.error)
        headers = {STREAM_ID_HEADER: record.id}
        if transcript.deployment:
            headers[DEPLOYMENT_HEADER] = transcript.deployment
        if transcript.error.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(transcript.error.retry_after)))
        return JSONBody(fmt.error_body(error), status_code=error.status_code, headers=headers)
    body = fmt.response(record, transcript)
    headers = {STREAM_ID_HEADER: record.id}
    if transcript.deployment:
        headers[DEPLOYMENT_HEADER] = transcript.deployment
    return JSONBody(body, headers=headers)


async def serve_generation(
    services: Services,
    caller: ApiKey,
    surface: str,
    request: GenerationRequest,
    *,
    render: Callable[[str], dict[str, Any]],
    stream: bool,
    cancel_on_disconnect: bool,
    detach: bool = False,
) -> Response:
    """What every generation route does once it has a canonical request: create the job
    with the surface's render options (`render(stream_id)`), enqueue it, and answer: with
    its stream, with its result, or (`detach`, not streaming) with the job as queued.
    Lines logged meanwhile name the job; with tracing on, its creation is the span
    `generation.create`, whose context the job carries to the worker."""
    stream_id = new_stream_id()
    fmt = services.formats[surface]
    attributes = {"spool.stream_id": stream_id, "spool.surface": surface}
    with (
        logs.job_context(stream_id=stream_id, key_id=caller.id, model=request.model),
        tracing.span("generation.create", kind="producer", attributes=attributes) as span,
    ):
        record, dropped = new_job(services, fmt, request, render(stream_id), stream_id, caller)
        entry = record.request["entry"]
        # Every route names its deployments (`shared.model_table.group_plan`).
        logs.update(provider=entry["provider"], deployment=entry["name"])
        if span is not None:
            span.set_attribute("spool.model", record.model)
            record.request["trace"] = tracing.traceparent()  # the worker's span is its child
        if detach:
            record.request["detached"] = True  # no reader needed: see JobRun.detached
        if request.has_media_urls:
            await check_media_urls(services.settings, request)
        tail = None
        if stream:
            # Listen before the job exists, so its first event reaches this tail at once.
            tail = Tail(services, record, fmt, cancel_on_disconnect=cancel_on_disconnect)
            tail.routed = "route" in record.request
            tail.open(tail.beginning())
        try:
            listeners = await enqueue_job(services, record, caller, request)
        except BaseException:
            if tail is not None:
                tail.close()
            raise
        if tail is not None and tail.reader is not None and listeners:
            # Redis counted a listener on the new stream's channel as the job was stored:
            # this process's hub, the only one that knows the id yet. It hears it all.
            tail.reader.heard_from_start()
    if detach and tail is None:
        response: Response = JSONBody(
            fmt.response(record, Transcript()), headers={STREAM_ID_HEADER: record.id}
        )
    else:
        response = await respond(services, fmt, record, tail)
    if dropped:
        response.headers[DROPPED_PARAMS_HEADER] = ", ".join(dropped)
    if "route" not in record.request:  # one upstream: known before it answers
        response.headers[DEPLOYMENT_HEADER] = record.request["entry"]["name"]
    return response
