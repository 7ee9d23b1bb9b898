"""Per-process worker state: providers, the runs in flight, and the supervised background
tasks that keep them honest (pub/sub for wake-ups and cancels, lease renewal)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import events as ev
from shared import keys
from shared.errors import StreamNotFound
from shared.settings import Settings
from shared.store import Status, StreamStore
from worker.generation import GenerationRun, new_attempt
from worker.providers import Provider
from worker.providers.demo import DemoProvider
from worker.providers.openai import OpenAIProvider

log = logging.getLogger(__name__)
RECONNECT_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)


class WorkerRuntime:
    def __init__(self, settings: Settings, redis: Redis) -> None:
        self.settings = settings
        self.redis = redis
        self.store = StreamStore(redis, settings)
        self.worker_id = uuid.uuid4().hex[:12]
        self.wake = asyncio.Event()
        self.runs: dict[str, GenerationRun] = {}
        self.providers: dict[str, Provider] = {}
        self._http: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def startup(self, ctx: dict[str, Any] | None = None) -> None:
        self._http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            follow_redirects=False,
        )
        self.providers = {"demo": DemoProvider(), "openai": OpenAIProvider(self._http)}
        self._tasks = [
            self._supervise("signals", self._listen_signals),
            self._supervise("heartbeat", self._heartbeat),
        ]
        log.info("worker %s ready", self.worker_id)

    async def shutdown(self, ctx: dict[str, Any] | None = None) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(RedisError):
            await self.redis.zrem(keys.WORKERS_KEY, self.worker_id)
        if self._http is not None:
            await self._http.aclose()

    # -- the job --------------------------------------------------------------------------

    async def generate(self, stream_id: str) -> str:
        attempt = new_attempt()
        claim = await self.store.claim(stream_id, attempt)
        if claim.outcome in ("busy", "done"):
            log.info("stream %s: not run (%s, %s)", stream_id, claim.outcome, claim.status)
            return claim.outcome
        try:
            record = await self.store.get(stream_id)
        except StreamNotFound:
            return "done"
        provider = self.providers[record.request["entry"]["provider"]]
        run = GenerationRun(self.store, record, attempt, provider, self.settings.job_timeout_s)
        if claim.outcome == "lost":
            # An earlier attempt died after it had emitted: never restart (that would repeat
            # text); end the stream visibly, keeping the partial output.
            run.transcript = await self.store.transcript(record)
            run._started = True
            error = ev.Error(code="worker_lost", message="the worker running this stream was lost")
            return (await run.finish_now(Status.FAILED, error)).value
        if claim.cancel_requested:
            return (await run.finish_now(Status.CANCELLED, ev.Finish(reason="cancelled"))).value
        self.runs[stream_id] = run
        try:
            return (await run.run()).value
        finally:
            self.runs.pop(stream_id, None)

    def cancel(self, stream_id: str) -> None:
        run = self.runs.get(stream_id)
        if run is not None:
            run.cancelled.set()

    # -- background tasks -----------------------------------------------------------------

    def _supervise(self, name: str, body: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
        async def supervised() -> None:
            failures = 0
            while True:
                try:
                    await body()
                    failures = 0
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    delay = RECONNECT_BACKOFF_S[min(failures, len(RECONNECT_BACKOFF_S) - 1)]
                    failures += 1
                    log.warning("%s task failed (%s); restarting in %.2fs", name, exc, delay)
                    await asyncio.sleep(delay)

        return asyncio.create_task(supervised(), name=f"spool-worker-{name}")

    async def _listen_signals(self) -> None:
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(keys.WAKE_CHANNEL, keys.CANCEL_CHANNEL)
            # Cancels published while we were not subscribed are still flagged on the record.
            for stream_id in list(self.runs):
                if await self.store.cancel_requested(stream_id):
                    self.cancel(stream_id)
            self.wake.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=5.0)
                if message is None:
                    continue
                if message["channel"] == keys.CANCEL_CHANNEL.encode():
                    self.cancel(message["data"].decode())
                else:
                    self.wake.set()

    async def _heartbeat(self) -> None:
        interval = self.settings.lease_s / 3
        while True:
            expires = time.time() + self.settings.lease_s
            await self.redis.zadd(keys.WORKERS_KEY, {self.worker_id: expires})
            for stream_id, run in list(self.runs.items()):
                if not await self.store.renew_lease(stream_id, run.attempt):
                    log.warning("stream %s: lease lost; stopping this attempt", stream_id)
                    run.cancelled.set()
            await asyncio.sleep(interval)
