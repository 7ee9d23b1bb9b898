"""Submitting asset tasks and waiting on them, for the task routes."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import uuid

import orjson

from api.deps import Services
from api.tail import START
from shared import events as ev
from shared import keys
from shared.auth import ApiKey
from shared.errors import (
    Conflict,
    InvalidRequest,
    ModelNotFound,
    RequestTooLarge,
    ResumePointExpired,
    StreamNotFound,
)
from shared.netguard import Allowlist, UrlRefused, check_url
from shared.queue import GENERATE
from shared.settings import Settings, TaskModelEntry
from shared.store import JobRecord
from shared.tasks import TaskSpec, check_demo_input

MAX_WAIT_S = 60
MAX_IDEMPOTENCY_KEY_CHARS = 255


class IdempotencyConflict(Conflict):
    """This Idempotency-Key was used with a different request body."""

    code = "idempotency_key_reused"


class CallbackRefused(InvalidRequest):
    """The callback URL is not allowed."""

    code = "invalid_callback_url"


def resolve_task_model(settings: Settings, spec: TaskSpec, caller: ApiKey) -> TaskModelEntry:
    """The task model a task names, which the caller's key must be allowed to use."""
    if not caller.may_use(spec.model):
        raise ModelNotFound(
            f"the task model {spec.model!r} does not exist or this key may not use it"
        )
    entry = settings.task_models.get(spec.model)
    if entry is None:
        raise ModelNotFound(f"the task model {spec.model!r} does not exist")
    if spec.kind not in entry.kinds:
        raise InvalidRequest(
            f"the model {spec.model!r} makes {', '.join(entry.kinds)}, not {spec.kind}"
        )
    if entry.provider == "demo":
        check_demo_input(spec)
    check_task_input(settings, spec, entry)
    return entry


def check_task_input(settings: Settings, spec: TaskSpec, entry: TaskModelEntry) -> None:
    """A task's input holds the common fields and those its model declares
    (`input_fields`), and is at most `max_task_input_bytes` as JSON."""
    unknown = sorted(set(spec.input.model_extra or {}) - set(entry.input_fields))
    if unknown:
        raise InvalidRequest(
            f"input.{unknown[0]}: the model {spec.model!r} takes no such input field"
            + (f" (nor {', '.join(unknown[1:])})" if len(unknown) > 1 else "")
        )
    size = len(orjson.dumps(spec.input.model_dump(mode="json")))
    if size > settings.max_task_input_bytes:
        raise RequestTooLarge(
            f"the task input is {size} bytes as JSON; at most {settings.max_task_input_bytes}"
        )


async def check_callback(settings: Settings, url: str) -> None:
    """A callback must be http(s) to a host that resolves to public addresses, unless the
    host is in `SPOOL_WEBHOOK_ALLOWLIST`; and the deployment must be able to sign."""
    if settings.webhook_secret is None:
        raise CallbackRefused(
            "webhooks are not configured on this deployment (SPOOL_WEBHOOK_SECRET is not set)"
        )
    allowlist = Allowlist.parse(settings.webhook_allowlist)
    try:
        await check_url(url, allowlist, "SPOOL_WEBHOOK_ALLOWLIST")
    except UrlRefused as exc:
        raise CallbackRefused(f"callback_url {exc.reason}") from None


def idempotency_redis_key(owner: ApiKey, key: str) -> str:
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise InvalidRequest(
            f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable characters"
        )
    return keys.idempotency_key(owner.id, hashlib.sha256(key.encode()).hexdigest())


def body_digest(spec: TaskSpec) -> str:
    canonical = orjson.dumps(spec.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


async def _replayed(services: Services, held: str, digest: str) -> JobRecord:
    task_id, _, held_digest = held.partition(" ")
    if held_digest != digest:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used with a different request body"
        )
    return await services.store.get(task_id)


async def submit_task(
    services: Services, caller: ApiKey, spec: TaskSpec, idempotency_key: str | None
) -> tuple[JobRecord, bool]:
    """Create and queue a task; returns it and whether it is new (False when the
    Idempotency-Key names an earlier one)."""
    entry = resolve_task_model(services.settings, spec, caller)
    if spec.callback_url is not None:
        await check_callback(services.settings, spec.callback_url)
    digest = body_digest(spec)
    idem_key = idempotency_redis_key(caller, idempotency_key) if idempotency_key else None
    if idem_key is not None:
        held = await services.control.get(idem_key)
        if held is not None:
            return await _replayed(services, held.decode(), digest), False
    task_id = uuid.uuid4().hex
    stored = len(orjson.dumps(spec.input.model_dump(mode="json")))
    await services.admission.admit(
        caller, task_id, stored_bytes=stored, kept_s=services.settings.task_retention_s
    )
    try:
        held_now = await services.store.create_task(
            task_id,
            model=spec.model,
            request={
                "task": spec.model_dump(mode="json"),
                "entry": entry.model_dump(mode="json"),
            },
            owner=caller.id,
            idempotency=(idem_key, f"{task_id} {digest}") if idem_key else None,
            with_callback=spec.callback_url is not None,
        )
        if held_now is not None:  # a concurrent request with the same key got there first
            await services.admission.release(caller, task_id)
            return await _replayed(services, held_now, digest), False
        await services.queue.enqueue(GENERATE, task_id, task_id)
        if spec.callback_url is not None:
            await services.hooks.wake()
    except BaseException:
        await services.admission.release(caller, task_id)
        raise
    services.metrics.generations.labels("task").inc()
    return await services.store.get(task_id), True


def parse_prefer_wait(prefer: str | None) -> int | None:
    """The `wait` preference of a `Prefer` header (RFC 7240), capped at `MAX_WAIT_S`;
    None when absent or not understood (preferences a server does not understand are
    ignored)."""
    if not prefer:
        return None
    for preference in prefer.split(","):
        name, _, value = preference.split(";", 1)[0].strip().partition("=")
        value = value.strip().strip('"')
        if name.strip().lower() == "wait" and value.isascii() and value.isdigit():
            # Leading zeros are allowed (delta-seconds); past them six digits are plenty.
            return min(int(value.lstrip("0")[:6] or "0"), MAX_WAIT_S)
    return None


async def wait_for_end(services: Services, task_id: str, seconds: float) -> None:
    """Return once the task has ended or `seconds` have passed, listening on its stream."""
    last = await services.store.last_entries(task_id, 1)
    if last and ev.is_terminal(last[0].event):
        return
    after, next_seq = (last[0].id, last[0].seq + 1) if last else (START, 1)
    hub = services.hub
    reader = hub.open(task_id, after, next_seq)
    with contextlib.suppress(ResumePointExpired, StreamNotFound, TimeoutError):
        async with (
            asyncio.timeout(seconds),
            contextlib.aclosing(hub.follow(reader)) as batches,
        ):
            async for _ in batches:
                pass  # the follow ends at the terminal event, or when the process drains
