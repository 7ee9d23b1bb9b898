"""Webhook delivery end to end, minus the worker loop: real Redis, the real arq queue in
it, a real HTTP receiver and a real httpx client. Queued deliveries are run here by reading
the jobs arq stored and calling `WebhookSender.deliver` with their arguments."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import orjson
import pytest
from redis.asyncio import Redis
from standardwebhooks import Webhook

from shared import events as ev
from shared import keys
from shared.hooks import HookMessage, HookState, HookStore
from shared.netguard import Allowlist, GuardedTransport
from shared.queue import DELIVER_WEBHOOK, ArqJobQueue
from shared.settings import Settings
from shared.store import Status, StreamStore
from shared.task_view import TaskViews
from shared.tasks import TaskSpec
from shared.transcript import Transcript
from tests.webhook_receiver import Delivery, WebhookReceiver
from worker import webhook_outbox
from worker.webhook_outbox import WebhookDispatcher
from worker.webhooks import EVENT_HEADER, WebhookSender, delivery_job_id

SECRET = "whsec_" + base64.b64encode(b"spool-test-webhook-secret-32byte").decode()
ARQ_JOB_PREFIX = "arq:job:"
MAX_STEPS = 20


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver().start()
    yield server
    server.stop()


def make_settings(**overrides: Any) -> Settings:
    return Settings.model_validate(
        {
            "webhook_secret": SECRET,
            "webhook_max_attempts": 5,
            "webhook_backoff_s": 30.0,
            "webhook_backoff_max_s": 60.0,
            "webhook_timeout_s": 5.0,
            **overrides,
        }
    )


def guarded_client(allowlist: str) -> httpx.AsyncClient:
    """The client a worker sends webhooks with: behind the outbound address guard."""
    transport = GuardedTransport(
        Allowlist.parse(allowlist), httpx.AsyncHTTPTransport(), setting="SPOOL_WEBHOOK_ALLOWLIST"
    )
    return httpx.AsyncClient(transport=transport, follow_redirects=False)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with guarded_client("127.0.0.1") as client:
        yield client


@pytest.fixture
def hooks(redis: Redis) -> HookStore:
    return HookStore(redis, redis, 3600)


@pytest.fixture
def queue(redis: Redis) -> ArqJobQueue:
    return ArqJobQueue(redis)


def new_id() -> str:
    return uuid.uuid4().hex


def unique_path(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def store_message(
    hooks: HookStore, receiver: WebhookReceiver, path: str, task_id: str, seq: int = 1
) -> HookMessage:
    body = {"id": task_id, "object": "task", "status": "succeeded", "progress": 1.0}
    message = HookMessage(
        id=f"msg_{task_id}_{seq}",
        type="task.succeeded",
        url=receiver.url(path),
        body=orjson.dumps(body).decode(),
    )
    assert await hooks.add(task_id, seq, message)
    return message


async def state_of(hooks: HookStore, task_id: str, seq: int) -> HookState:
    found = await hooks.message(task_id, seq)
    assert found is not None
    return found[1]


async def queued_jobs(redis: Redis) -> dict[str, float]:
    """arq's queue: job id → score (when it is due, in ms)."""
    return {
        member.decode(): score
        for member, score in await redis.zrange(keys.QUEUE_NAME, 0, -1, withscores=True)
    }


async def job_args(redis: Redis, job_id: str) -> list[Any]:
    raw = await redis.get(ARQ_JOB_PREFIX + job_id)
    assert raw is not None, f"job {job_id} is not queued"
    data = orjson.loads(raw)
    assert data["f"] == DELIVER_WEBHOOK
    args: list[Any] = data["a"]
    return args


async def run_job(redis: Redis, sender: WebhookSender, job_id: str) -> str:
    """Run one queued delivery as arq would: take it off the queue, call the function."""
    args = await job_args(redis, job_id)
    assert await redis.zrem(keys.QUEUE_NAME, job_id) == 1
    await redis.delete(ARQ_JOB_PREFIX + job_id)
    return await sender.deliver(*args)


def assert_signed(delivery: Delivery, message: HookMessage) -> None:
    assert delivery.headers["webhook-id"] == message.id
    assert delivery.headers[EVENT_HEADER] == message.type
    assert delivery.headers["content-type"] == "application/json"
    assert delivery.body == message.body.encode()
    Webhook(SECRET).verify(delivery.body, delivery.headers)


# -- the sender -----------------------------------------------------------------------


async def test_delivered_the_first_time(
    redis: Redis,
    hooks: HookStore,
    queue: ArqJobQueue,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
) -> None:
    sender = WebhookSender(hooks, queue, make_settings(), http)
    task_id, path = new_id(), unique_path("first")
    message = await store_message(hooks, receiver, path, task_id)

    assert await sender.deliver(task_id, 1, 1) == "delivered"

    [delivery] = receiver.received(path)
    assert_signed(delivery, message)
    state = await state_of(hooks, task_id, 1)
    assert state.status == "delivered" and state.next_attempt_at is None
    [attempt] = state.attempts
    assert attempt.attempt == 1 and attempt.status_code == 204 and attempt.error is None
    assert await queued_jobs(redis) == {}  # nothing more to do
    # The lock is given back.
    assert await redis.exists(keys.hook_lock_key(task_id, 1)) == 0
    # A duplicate of the job does nothing.
    assert await sender.deliver(task_id, 1, 1) == "skipped"
    assert len(receiver.received(path)) == 1


async def test_retried_until_delivered(
    redis: Redis,
    hooks: HookStore,
    queue: ArqJobQueue,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
) -> None:
    sender = WebhookSender(hooks, queue, make_settings(), http)
    task_id, path = new_id(), unique_path("retry")
    message = await store_message(hooks, receiver, path, task_id, seq=3)
    receiver.plan(path, 500, 500)

    assert await sender.deliver(task_id, 3, 1) == "pending"
    second = delivery_job_id(task_id, 3, 2)
    assert second == f"hook:{task_id}:3:2"
    jobs = await queued_jobs(redis)
    assert list(jobs) == [second]
    now_ms = time.time() * 1000
    # Deferred by the backoff: between half and all of webhook_backoff_s (30 s).
    assert now_ms + 10_000 < jobs[second] <= now_ms + 31_000
    assert await job_args(redis, second) == [task_id, 3, 2]
    state = await state_of(hooks, task_id, 3)
    assert state.status == "pending" and state.next_attempt_at is not None
    assert state.next_attempt_at > time.time() + 10

    # A duplicate of the attempt already made sends nothing.
    assert await sender.deliver(task_id, 3, 1) == "skipped"
    assert len(receiver.received(path)) == 1

    assert await run_job(redis, sender, second) == "pending"
    third = delivery_job_id(task_id, 3, 3)
    assert list(await queued_jobs(redis)) == [third]
    assert await run_job(redis, sender, third) == "delivered"
    assert await queued_jobs(redis) == {}

    state = await state_of(hooks, task_id, 3)
    assert state.status == "delivered" and state.next_attempt_at is None
    assert [(a.attempt, a.status_code) for a in state.attempts] == [(1, 500), (2, 500), (3, 204)]
    assert [a.error for a in state.attempts] == [
        "the receiver answered HTTP 500",
        "the receiver answered HTTP 500",
        None,
    ]

    deliveries = receiver.wait_for(path, 3)
    assert len(deliveries) == 3
    assert [d.answered for d in deliveries] == [500, 500, 204]
    for delivery in deliveries:
        assert_signed(delivery, message)
    assert {d.headers["webhook-id"] for d in deliveries} == {message.id}
    assert {d.body for d in deliveries} == {message.body.encode()}

    # Late duplicates of any attempt change nothing.
    for attempt in (1, 2, 3, 4):
        assert await sender.deliver(task_id, 3, attempt) == "skipped"
    assert len(receiver.received(path)) == 3
    listing = await hooks.listing(task_id)
    assert [(m["id"], m["status"], len(m["attempts"])) for m in listing] == [
        (message.id, "delivered", 3)
    ]


async def test_gives_up_after_max_attempts(
    redis: Redis,
    hooks: HookStore,
    queue: ArqJobQueue,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
) -> None:
    sender = WebhookSender(hooks, queue, make_settings(webhook_max_attempts=2), http)
    task_id, path = new_id(), unique_path("give-up")
    await store_message(hooks, receiver, path, task_id)
    receiver.plan(path, 500, 503)

    assert await sender.deliver(task_id, 1, 1) == "pending"
    assert await run_job(redis, sender, delivery_job_id(task_id, 1, 2)) == "failed"
    assert await queued_jobs(redis) == {}  # no third attempt
    state = await state_of(hooks, task_id, 1)
    assert state.status == "failed" and state.next_attempt_at is None
    assert [(a.attempt, a.status_code) for a in state.attempts] == [(1, 500), (2, 503)]
    assert await sender.deliver(task_id, 1, 3) == "skipped"
    assert len(receiver.received(path)) == 2


async def test_refused_address_is_an_error_attempt(
    redis: Redis, hooks: HookStore, queue: ArqJobQueue, receiver: WebhookReceiver
) -> None:
    task_id, path = new_id(), unique_path("refused")
    await store_message(hooks, receiver, path, task_id)
    async with guarded_client("") as client:
        sender = WebhookSender(hooks, queue, make_settings(), client)
        assert await sender.deliver(task_id, 1, 1) == "pending"
    [attempt] = (await state_of(hooks, task_id, 1)).attempts
    assert attempt.status_code is None
    assert attempt.error is not None
    assert "allow-list" in attempt.error and "SPOOL_WEBHOOK_ALLOWLIST" in attempt.error
    assert receiver.received(path) == []
    # Refused like any failure: the next attempt is queued.
    assert list(await queued_jobs(redis)) == [delivery_job_id(task_id, 1, 2)]


async def test_connection_error_is_an_error_attempt(
    hooks: HookStore, queue: ArqJobQueue, http: httpx.AsyncClient
) -> None:
    task_id = new_id()
    dead = WebhookReceiver()  # never started: nothing listens on its port
    message = HookMessage(id="msg_x", type="task.succeeded", url=dead.url("x"), body="{}")
    await hooks.add(task_id, 1, message)
    sender = WebhookSender(hooks, queue, make_settings(), http)
    assert await sender.deliver(task_id, 1, 1) == "pending"
    [attempt] = (await state_of(hooks, task_id, 1)).attempts
    assert attempt.status_code is None and attempt.error and "ConnectError" in attempt.error


async def test_without_a_secret_nothing_is_sent(
    hooks: HookStore, queue: ArqJobQueue, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    task_id, path = new_id(), unique_path("no-secret")
    await store_message(hooks, receiver, path, task_id)
    sender = WebhookSender(hooks, queue, make_settings(webhook_secret=None), http)
    assert await sender.deliver(task_id, 1, 1) == "pending"
    [attempt] = (await state_of(hooks, task_id, 1)).attempts
    assert attempt.error == "no webhook secret is set"
    assert receiver.received(path) == []


async def test_missing_message_and_held_lock(
    hooks: HookStore, queue: ArqJobQueue, http: httpx.AsyncClient, receiver: WebhookReceiver
) -> None:
    sender = WebhookSender(hooks, queue, make_settings(), http)
    assert await sender.deliver(new_id(), 1, 1) == "gone"

    task_id, path = new_id(), unique_path("locked")
    await store_message(hooks, receiver, path, task_id)
    assert await hooks.lock(task_id, 1, 30_000)
    sender.lock_ms = 200  # how long to wait for the attempt in flight
    assert await sender.deliver(task_id, 1, 1) == "busy"
    assert receiver.received(path) == []
    await hooks.unlock(task_id, 1)
    assert await sender.deliver(task_id, 1, 1) == "delivered"


# -- the dispatcher -------------------------------------------------------------------


@pytest.fixture(autouse=True)
def short_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The dispatcher's blocking read waits this long when there is nothing to read."""
    monkeypatch.setattr(webhook_outbox, "BLOCK_MS", 100)


def task_request(settings: Settings, callback_url: str, events: list[str] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "kind": "image",
        "model": "demo",
        "input": {"prompt": "a lighthouse", "width": 64, "height": 64},
        "callback_url": callback_url,
    }
    if events is not None:
        body["webhook_events"] = events
    spec = TaskSpec.model_validate(body)
    return {
        "task": spec.model_dump(mode="json"),
        "entry": settings.task_models["demo"].model_dump(mode="json"),
    }


RESULT = ev.TaskResult(
    outputs=[{"index": 0, "url": "/v1/tasks/t/outputs/0", "media_type": "image/png", "size": 3}]
)


async def run_task(store: StreamStore, task_id: str) -> None:
    """Run the task as a worker would: Start, two progress events, the result."""
    assert (await store.claim(task_id, "attempt-1", "test-worker")).outcome == "claimed"
    events: list[ev.Event] = [
        ev.Start(model="demo", provider="demo"),
        ev.TaskProgress(progress=0.3, message="denoising"),
        ev.TaskProgress(progress=0.6),
    ]
    await store.append(task_id, "attempt-1", events, held=0)
    await store.finish(
        task_id, "attempt-1", status=Status.COMPLETED, terminal=RESULT, transcript=Transcript()
    )


async def drain(dispatcher: WebhookDispatcher) -> int:
    """Step until a step handles nothing; returns the events handled."""
    total = 0
    for _ in range(MAX_STEPS):
        handled = await dispatcher.step()
        if handled == 0:
            return total
        total += handled
    raise AssertionError(f"the dispatcher still had events after {MAX_STEPS} steps")


class Harness:
    def __init__(self, redis: Redis, hooks: HookStore, queue: ArqJobQueue) -> None:
        self.settings = make_settings(task_retention_s=7200)
        self.store = StreamStore(redis, self.settings)
        self.views = TaskViews(self.store, hooks, "https://spool.test")
        self.dispatcher = WebhookDispatcher(self.store, hooks, queue, self.views)

    async def create(self, callback_url: str, events: list[str] | None) -> str:
        task_id = new_id()
        held = await self.store.create_task(
            task_id,
            model="demo",
            request=task_request(self.settings, callback_url, events),
            owner="key_test",
            with_callback=True,
        )
        assert held is None
        return task_id


async def test_dispatcher_turns_every_wanted_event_into_one_message(
    redis: Redis,
    hooks: HookStore,
    queue: ArqJobQueue,
    http: httpx.AsyncClient,
    receiver: WebhookReceiver,
) -> None:
    harness = Harness(redis, hooks, queue)
    path = unique_path("dispatch")
    task_id = await harness.create(receiver.url(path), ["started", "progress", "completed"])
    assert await hooks.pending() == [task_id]
    await run_task(harness.store, task_id)

    assert await drain(harness.dispatcher) == 4

    listing = await hooks.listing(task_id)
    assert [m["type"] for m in listing] == [
        "task.started",
        "task.progress",
        "task.progress",
        "task.succeeded",
    ]
    assert [m["id"] for m in listing] == [f"msg_{task_id}_{n}" for n in (1, 2, 3, 4)]
    assert all(m["status"] == "pending" and m["attempts"] == [] for m in listing)
    assert await redis.zscore(keys.HOOKS_PENDING_KEY, task_id) is None
    entries = await harness.store.read_all(task_id)
    assert (await hooks.cursors([task_id]))[task_id] == entries[-1][0]

    jobs = await queued_jobs(redis)
    wanted = {delivery_job_id(task_id, n, 1) for n in (1, 2, 3, 4)}
    assert set(jobs) == wanted
    for n in (1, 2, 3, 4):
        assert await job_args(redis, delivery_job_id(task_id, n, 1)) == [task_id, n, 1]

    # Each message is the task object; a progress message speaks of its own event.
    bodies = []
    for n in (1, 2, 3, 4):
        found = await hooks.message(task_id, n)
        assert found is not None
        message = found[0]
        assert message.url == receiver.url(path)
        bodies.append(orjson.loads(message.body))
    assert all(b["id"] == task_id and b["object"] == "task" for b in bodies)
    assert [b["progress"] for b in bodies[1:3]] == [0.3, 0.6]
    assert bodies[3]["status"] == "succeeded"
    assert bodies[3]["result"]["outputs"][0]["media_type"] == "image/png"
    assert "webhooks" not in bodies[3]

    # Nothing new on another pass, nor when the same entries are dispatched again.
    before = await redis.hgetall(keys.hooks_key(task_id))  # type: ignore[misc]
    assert await drain(harness.dispatcher) == 0
    again = await harness.store.read_range(task_id, "-", "+")
    assert await harness.dispatcher.dispatch(task_id, again) == 4
    assert await redis.hgetall(keys.hooks_key(task_id)) == before  # type: ignore[misc]
    assert set(await queued_jobs(redis)) == wanted

    # Running the queued jobs delivers the four messages, in order, each signed.
    sender = WebhookSender(hooks, queue, harness.settings, http)
    for n in (1, 2, 3, 4):
        assert await run_job(redis, sender, delivery_job_id(task_id, n, 1)) == "delivered"
    deliveries = receiver.wait_for(path, 4)
    assert [d.headers[EVENT_HEADER] for d in deliveries] == [m["type"] for m in listing]
    for delivery in deliveries:
        Webhook(SECRET).verify(delivery.body, delivery.headers)
    assert [m["status"] for m in await hooks.listing(task_id)] == ["delivered"] * 4


async def test_default_events_get_only_the_completed_message(
    redis: Redis, hooks: HookStore, queue: ArqJobQueue, receiver: WebhookReceiver
) -> None:
    harness = Harness(redis, hooks, queue)
    task_id = await harness.create(receiver.url(unique_path("default")), None)
    await run_task(harness.store, task_id)

    assert await drain(harness.dispatcher) == 4
    listing = await hooks.listing(task_id)
    assert [(m["id"], m["type"]) for m in listing] == [(f"msg_{task_id}_4", "task.succeeded")]
    assert set(await queued_jobs(redis)) == {delivery_job_id(task_id, 4, 1)}
    assert await redis.zscore(keys.HOOKS_PENDING_KEY, task_id) is None
    entries = await harness.store.read_all(task_id)
    assert (await hooks.cursors([task_id]))[task_id] == entries[-1][0]


async def test_cancelled_while_queued_gets_one_cancelled_message(
    redis: Redis, hooks: HookStore, queue: ArqJobQueue, receiver: WebhookReceiver
) -> None:
    harness = Harness(redis, hooks, queue)
    task_id = await harness.create(receiver.url(unique_path("cancel")), ["started", "completed"])
    assert await harness.store.request_cancel(task_id) is Status.CANCELLED

    assert await drain(harness.dispatcher) == 1
    listing = await hooks.listing(task_id)
    assert [(m["id"], m["type"]) for m in listing] == [(f"msg_{task_id}_1", "task.cancelled")]
    found = await hooks.message(task_id, 1)
    assert found is not None
    assert orjson.loads(found[0].body)["status"] == "cancelled"
    assert set(await queued_jobs(redis)) == {delivery_job_id(task_id, 1, 1)}
    assert await redis.zscore(keys.HOOKS_PENDING_KEY, task_id) is None


async def test_events_arriving_over_several_steps(
    redis: Redis, hooks: HookStore, queue: ArqJobQueue, receiver: WebhookReceiver
) -> None:
    """The dispatcher follows a running task from its cursor, step by step."""
    harness = Harness(redis, hooks, queue)
    task_id = await harness.create(receiver.url(unique_path("steps")), ["started", "completed"])
    store = harness.store
    assert await harness.dispatcher.step() == 0  # no events yet: the task stays pending
    assert await hooks.pending() == [task_id]

    await store.claim(task_id, "attempt-1", "test-worker")
    await store.append(task_id, "attempt-1", [ev.Start(model="demo", provider="demo")], held=0)
    assert await drain(harness.dispatcher) == 1
    assert [m["type"] for m in await hooks.listing(task_id)] == ["task.started"]
    assert await hooks.pending() == [task_id]

    await store.append(task_id, "attempt-1", [ev.TaskProgress(progress=0.5)], held=1)
    await store.finish(
        task_id,
        "attempt-1",
        status=Status.FAILED,
        terminal=ev.Error(code="upstream_error", message="boom"),
        transcript=Transcript(),
    )
    assert await drain(harness.dispatcher) == 2
    listing = await hooks.listing(task_id)
    assert [(m["id"], m["type"]) for m in listing] == [
        (f"msg_{task_id}_1", "task.started"),
        (f"msg_{task_id}_3", "task.failed"),
    ]
    assert await hooks.pending() == []
    assert set(await queued_jobs(redis)) == {
        delivery_job_id(task_id, 1, 1),
        delivery_job_id(task_id, 3, 1),
    }


async def test_expired_task_leaves_the_index(
    redis: Redis, hooks: HookStore, queue: ArqJobQueue, receiver: WebhookReceiver
) -> None:
    harness = Harness(redis, hooks, queue)
    task_id = await harness.create(receiver.url(unique_path("expired")), None)
    await redis.delete(keys.job_key(task_id))
    assert await harness.dispatcher.step() == 0
    assert await hooks.pending() == []
    assert await hooks.listing(task_id) == []


async def test_more_pending_tasks_than_a_page_are_all_dispatched(
    redis: Redis,
    hooks: HookStore,
    queue: ArqJobQueue,
    receiver: WebhookReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhook_outbox, "PAGE", 2)
    harness = Harness(redis, hooks, queue)
    task_ids = [await harness.create(receiver.url(unique_path("paged")), None) for _ in range(5)]
    for task_id in task_ids:
        await run_task(harness.store, task_id)
    for _ in range(MAX_STEPS):
        if not await hooks.pending():
            break
        await harness.dispatcher.step()
    assert await hooks.pending() == []
    for task_id in task_ids:
        assert [m["type"] for m in await hooks.listing(task_id)] == ["task.succeeded"]
