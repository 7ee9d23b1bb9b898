"""Per-process worker state: providers, the runs in flight, and the supervised background
tasks that keep them honest (pub/sub for wake-ups and cancels, lease renewal)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import events as ev
from shared import keys, logs, tracing
from shared.artifacts import ArtifactStore
from shared.hooks import HookStore
from shared.netguard import Allowlist, GuardedTransport
from shared.queue import GENERATE, ArqJobQueue
from shared.reaper import WORKER_LOST, Reaper
from shared.redis.clients import REDIS_BLIP_ERRORS, DataRedis, RedisOutage, close_data_redis
from shared.settings import Settings
from shared.store import Claim, JobRecord, Lease, Status, StreamStore
from shared.supervise import cancel_and_wait, supervise
from shared.task_view import TaskViews
from shared.tasks import TASK_SURFACE
from worker.appender import Appender
from worker.generation import GenerationRun
from worker.job_run import JobRun, new_attempt
from worker.metrics import WorkerMetrics
from worker.providers import Provider
from worker.providers.anthropic import AnthropicProvider
from worker.providers.demo import DemoProvider
from worker.providers.gemini import GeminiProvider
from worker.providers.media import MediaFetcher
from worker.providers.openai import OpenAIProvider
from worker.providers.responses import ResponsesProvider
from worker.providers.transport import FastTransport
from worker.routing import RouteState
from worker.task_providers import TaskProvider
from worker.task_providers.demo import DemoTaskProvider
from worker.task_providers.queue_http import QueueHttpProvider
from worker.task_run import TaskRun
from worker.webhook_outbox import WebhookDispatcher
from worker.webhooks import WebhookSender

if TYPE_CHECKING:
    from worker.mcp import McpTools

log = logging.getLogger(__name__)
RENEW_PAGE = 500  # leases renewed per round trip
RENEW_RETRY_S = 0.25  # how soon renewals are tried again while Redis cannot be reached


class _Claiming:
    """A job between its claim and its run: whether a cancel was heard meanwhile."""

    __slots__ = ("heard",)

    def __init__(self) -> None:
        self.heard = False


class _Prefetch:
    """A generation's claim, sent as the queue took its job (in the same write as arq's
    own reads of the job), for the job's run to take up; undone if arq never runs it."""

    __slots__ = ("attempt", "claim", "claiming", "job_id")

    def __init__(self, job_id: str, attempt: str, claim: asyncio.Future[Claim]) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.claim = claim
        self.claiming = _Claiming()


class WorkerRuntime:
    """`redis` is a pool on the queue's Redis, for arq, pub/sub and blocking reads;
    `shared_redis` multiplexes one connection to it for everything the runs write (see
    `shared.redis.mux`). `data` is the streams' Redis when that is another (a Cluster);
    else the streams are on the queue's Redis too. `metrics` are the process's (served by
    `spool worker --metrics-port`)."""

    def __init__(
        self,
        settings: Settings,
        redis: Redis,
        shared_redis: Redis,
        data: DataRedis | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.shared_redis = shared_redis
        self.data = data
        self.metrics = metrics or WorkerMetrics(settings)
        self.store = StreamStore(data or shared_redis, settings, shared_redis)
        self.appender = Appender(self.store, settings)
        self.queue = ArqJobQueue(redis)
        self.reaper = Reaper(self.store, self.queue, settings, count=self.metrics.count_reaped)
        # Routing state (cooldowns, load, latency) lives beside the queue, for all workers.
        self.routes = RouteState(shared_redis, settings.job_timeout_s, self.metrics)
        self.worker_id = uuid.uuid4().hex[:12]
        self.worker_name = f"{socket.gethostname()}:{os.getpid()}:{self.worker_id}"
        self.wake = asyncio.Event()
        self.runs: dict[str, JobRun] = {}
        self._claiming: dict[str, _Claiming] = {}  # jobs being claimed, not yet in `runs`
        self._prefetched: dict[str, _Prefetch] = {}  # by stream id: claims not yet taken up
        self._unclaiming: set[asyncio.Task[None]] = set()
        self.providers: dict[str, Provider] = {}
        self.task_providers: dict[str, TaskProvider] = {}
        self.artifacts = ArtifactStore(settings.artifacts_root, settings.max_output_bytes)
        self.hooks = HookStore(data or redis, redis, settings.task_retention_s)
        self.views = TaskViews(self.store, self.hooks, settings.public_base_url)
        self._http: httpx.AsyncClient | None = None
        self._stream_http: httpx.AsyncClient | None = None
        self._webhook_http: httpx.AsyncClient | None = None
        self.webhooks: WebhookSender | None = None
        # The MCP servers whose tools generations run (connected when first used). The
        # MCP SDK is imported only by a worker that has servers: it is large, and a worker
        # whose every object the garbage collector scans pays for it on every event.
        self.mcp: McpTools | None = None
        if settings.mcp_servers:
            from worker.mcp import McpTools

            self.mcp = McpTools(settings.mcp_servers, Allowlist.parse(settings.upstream_allowlist))
        self._tasks: list[asyncio.Task[None]] = []

    async def startup(self, ctx: dict[str, Any] | None = None) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=100)
        self._http = httpx.AsyncClient(
            transport=GuardedTransport(
                Allowlist.parse(self.settings.upstream_allowlist),
                httpx.AsyncHTTPTransport(limits=limits),
            ),
            follow_redirects=False,
        )
        # Streamed generations get the lean transport; tasks' requests stay with httpx's.
        self._stream_http = httpx.AsyncClient(
            transport=GuardedTransport(
                Allowlist.parse(self.settings.upstream_allowlist), FastTransport()
            ),
            follow_redirects=False,
        )
        # Media named by URL is fetched with the tasks' client, under the same guard.
        media = MediaFetcher(self._http, self.settings.max_media_bytes)
        self.providers = {
            "demo": DemoProvider(),
            "openai": OpenAIProvider(self._stream_http, media),
            "responses": ResponsesProvider(self._stream_http, media),
            "anthropic": AnthropicProvider(self._stream_http, media),
            "gemini": GeminiProvider(self._stream_http, media),
        }
        self.task_providers = {
            "demo": DemoTaskProvider(),
            "queue_http": QueueHttpProvider(self._http),
        }
        # Callbacks get their own guard: their allowlist is not the upstreams'.
        self._webhook_http = httpx.AsyncClient(
            transport=GuardedTransport(
                Allowlist.parse(self.settings.webhook_allowlist),
                httpx.AsyncHTTPTransport(),
                setting="SPOOL_WEBHOOK_ALLOWLIST",
            ),
            follow_redirects=False,
        )
        self.webhooks = WebhookSender(self.hooks, self.queue, self.settings, self._webhook_http)
        dispatcher = WebhookDispatcher(self.store, self.hooks, self.queue, self.views)
        self.appender.start()
        self._tasks = [
            supervise("signals", self._listen_signals),
            supervise("heartbeat", self._heartbeat),
            supervise("reaper", self.reaper.run_forever),
            supervise("webhook-dispatcher", dispatcher.run_forever),
            supervise("artifact-sweeper", self._sweep_artifacts),
        ]
        log.info("worker %s ready", self.worker_id)

    async def shutdown(self, ctx: dict[str, Any] | None = None) -> None:
        for prefetch in list(self._prefetched.values()):
            self.ended(prefetch.job_id)  # claimed as taken, never run: back to the queue
        if self._unclaiming:
            await asyncio.gather(*self._unclaiming, return_exceptions=True)
        for task in self._tasks:
            await cancel_and_wait(task)
        await self.appender.stop()
        with contextlib.suppress(RedisError):
            await self.redis.zrem(keys.WORKERS_KEY, self.worker_id)
        for client in (self._http, self._stream_http, self._webhook_http):
            if client is not None:
                await client.aclose()
        if self.mcp is not None:
            await self.mcp.aclose()
        await self.shared_redis.aclose(close_connection_pool=True)
        if self.data is not None:
            await close_data_redis(self.data)

    # -- the job --------------------------------------------------------------------------

    def taken(self, job_id: str, function: str, args: tuple[Any, ...]) -> None:
        """The queue took a job (`JobWatcher`): a generation's claim goes now, one round
        trip sooner than its run would send it."""
        if function != GENERATE or len(args) != 1 or not isinstance(args[0], str):
            return
        stream_id = args[0]
        if stream_id in self._claiming:  # a second job for the stream claims for itself
            return
        attempt = new_attempt()
        claim = asyncio.ensure_future(self.store.claim(stream_id, attempt, self.worker_name))
        prefetch = self._prefetched[stream_id] = _Prefetch(job_id, attempt, claim)
        # A cancel heard from now until the run is registered is noted.
        self._claiming[stream_id] = prefetch.claiming

    def ended(self, job_id: str) -> None:
        """A job the queue took has ended (`JobWatcher`). A claim made for it that its run
        never took up (arq did not run it) is undone: the job goes back to the queue."""
        for stream_id, prefetch in self._prefetched.items():
            if prefetch.job_id == job_id:
                del self._prefetched[stream_id]
                task = asyncio.ensure_future(self._unclaim(stream_id, prefetch))
                self._unclaiming.add(task)
                task.add_done_callback(self._unclaiming.discard)
                return

    async def _unclaim(self, stream_id: str, prefetch: _Prefetch) -> None:
        try:
            claim = await prefetch.claim
            if claim.outcome == "claimed":
                await self.store.release(stream_id, prefetch.attempt)
        except Exception as exc:  # the lease runs out and the reaper takes the job back
            log.warning("stream %s: could not undo an unused claim: %s", stream_id, exc)
        finally:
            if self._claiming.get(stream_id) is prefetch.claiming:
                del self._claiming[stream_id]

    async def generate(self, stream_id: str) -> str:
        # Every line logged about the job, here and in the tasks it starts, names it.
        with logs.job_context(stream_id=stream_id):
            prefetch = self._prefetched.pop(stream_id, None)
            if prefetch is not None:
                claiming, attempt = prefetch.claiming, prefetch.attempt
                pending: Awaitable[Claim] = prefetch.claim
            else:
                # A cancel heard from now until the run is registered is noted here; the
                # claim's reply tells of any requested before it.
                claiming = self._claiming[stream_id] = _Claiming()
                attempt = new_attempt()
                pending = self.store.claim(stream_id, attempt, self.worker_name)
            try:
                return await self._claim_and_run(stream_id, attempt, pending, claiming)
            finally:
                if self._claiming.get(stream_id) is claiming:
                    del self._claiming[stream_id]

    async def _claim_and_run(
        self, stream_id: str, attempt: str, pending: Awaitable[Claim], claiming: _Claiming
    ) -> str:
        claim = await pending
        if claim.outcome in ("busy", "done"):
            log.info("stream %s: not run (%s, %s)", stream_id, claim.outcome, claim.status)
            return claim.outcome
        assert claim.record is not None
        record = claim.record
        run = self._new_run(record, attempt, claim.appended)
        kind = "task" if record.surface == TASK_SURFACE else "generation"
        deployment = run.entry.deployment if isinstance(run, GenerationRun) else None
        logs.update(
            task_id=stream_id if kind == "task" else None,
            key_id=record.owner or None,
            model=record.model,
            provider=run.provider_name,
            deployment=deployment,
        )
        if claim.outcome == "claimed":
            waited = max(0.0, time.time() - record.created_at)
            labels = (self.metrics.model(record.model), run.provider_name)
            self.metrics.queue_wait.labels(*labels).observe(waited)
        if tracing.active() is None:
            return await self._run(run, claim, claiming, kind)
        # A child of the API's `generation.create`, whose context the job carries.
        attributes = {
            "spool.stream_id": stream_id,
            "spool.model": record.model,
            "spool.surface": record.surface,
        }
        parent = record.request.get("trace")
        with tracing.span(
            f"{kind}.run", kind="consumer", parent=parent, attributes=attributes
        ) as span:
            outcome = await self._run(run, claim, claiming, kind)
            if span is not None:
                span.set_attribute("spool.provider", run.provider_name)
                if isinstance(run, GenerationRun):
                    span.set_attribute("spool.deployment", run.entry.deployment)
                span.set_attribute("spool.outcome", outcome)
                if isinstance(run.terminal, ev.Error):
                    span.set_attribute("spool.error_code", run.terminal.code)
                    tracing.fail(span, run.terminal.code)
            return outcome

    async def _run(self, run: JobRun, claim: Claim, claiming: _Claiming, kind: str) -> str:
        stream_id = run.stream_id
        self.metrics.open_jobs.labels(kind).inc()
        try:
            if claim.outcome == "lost":
                # An earlier attempt died after it had emitted: never restart (that would
                # repeat text); end the stream visibly, keeping the partial output.
                run.transcript = await self.store.rebuild_transcript(stream_id)
                status = await run.finish(Status.FAILED, WORKER_LOST)
            else:
                self.runs[stream_id] = run
                try:
                    # Cancelled before the claim (the flag on the record), or heard of
                    # between the claim and the line above (when there was no run to tell).
                    if claim.cancel_requested or claiming.heard:
                        cancelled = ev.Finish(reason="cancelled")
                        status = await run.finish(Status.CANCELLED, cancelled)
                    else:
                        status = await run.run()
                finally:
                    self.runs.pop(stream_id, None)
            self.metrics.jobs.labels(kind, status.value).inc()
            return status.value
        finally:
            self.metrics.open_jobs.labels(kind).dec()

    def _new_run(self, record: JobRecord, attempt: str, held: int) -> JobRun:
        run = self._make_run(record, attempt, held)
        run.metrics = self.metrics
        return run

    def _make_run(self, record: JobRecord, attempt: str, held: int) -> JobRun:
        provider_name = record.request["entry"]["provider"]
        if record.surface == TASK_SURFACE:
            assert self._http is not None
            return TaskRun(
                self.store,
                self.settings,
                record,
                attempt,
                self.task_providers[provider_name],
                self.artifacts,
                self._http,
                self.appender,
                held,
            )
        return GenerationRun(
            self.store,
            self.settings,
            record,
            attempt,
            self.providers,
            self.appender,
            held,
            self.mcp,
            self.routes,
            self._http,
        )

    async def deliver_webhook(self, task_id: str, seq: int, attempt: int) -> str:
        assert self.webhooks is not None
        outcome = await self.webhooks.deliver(task_id, seq, attempt)
        # `pending`: this attempt failed and the next one is queued.
        self.metrics.webhook_deliveries.labels("retry" if outcome == "pending" else outcome).inc()
        return outcome

    def cancel(self, stream_id: str) -> None:
        run = self.runs.get(stream_id)
        if run is not None:
            run.cancelled.set()
        claiming = self._claiming.get(stream_id)
        if claiming is not None:
            claiming.heard = True

    # -- background tasks -----------------------------------------------------------------

    async def _listen_signals(self) -> None:
        async with self.redis.pubsub() as pubsub:
            await pubsub.subscribe(keys.WAKE_CHANNEL, keys.CANCEL_CHANNEL)
            # Cancels published while we were not subscribed are still flagged on the record.
            for stream_id in [*self.runs, *self._claiming]:
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
        """Every third of a lease: this worker's heartbeat and its runs' lease renewals.
        While Redis cannot be reached (down, frozen, a cluster master failing over), it
        tries again every `RENEW_RETRY_S` instead of waiting out a supervisor's backoff:
        the leases must be renewed the moment Redis answers."""
        interval = self.settings.lease_s / 3
        outage = RedisOutage("lease renewal")
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            try:
                await self._beat()
                outage.ok()
                # Every third of a lease from the start of the last beat, not from its end:
                # a busy worker whose beats take long still renews in time.
                wait = started + interval - loop.time()
            except REDIS_BLIP_ERRORS as exc:
                self.metrics.redis_error("lease_renewal")
                outage.failed(exc)
                wait = min(interval, RENEW_RETRY_S)
            await asyncio.sleep(max(0.0, wait))

    async def _beat(self) -> None:
        grace = self.settings.abandon_grace_s
        expires = time.time() + self.settings.lease_s
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(keys.WORKERS_KEY, {self.worker_id: expires})
            # Drop workers whose heartbeat stopped long ago, so the set does not grow.
            pipe.zremrangebyscore(keys.WORKERS_KEY, "-inf", time.time() - 3600)
            await pipe.execute()
        runs = list(self.runs.items())
        # Every page at once, not one after the other: a busy event loop makes each
        # wait long, and the leases must not run out while the pages take turns.
        pairs = [(stream_id, run.attempt) for stream_id, run in runs]
        pages = await asyncio.gather(
            *(
                self.store.renew_leases(pairs[i : i + RENEW_PAGE])
                for i in range(0, len(pairs), RENEW_PAGE)
            )
        )
        leases: list[Lease] = [lease for page in pages for lease in page]
        for (stream_id, run), lease in zip(runs, leases, strict=True):
            if not lease.owned:
                log.warning("stream %s: lease lost; stopping this attempt", stream_id)
                run.cancelled.set()
            elif lease.cancel_requested:
                run.cancelled.set()  # the cancel message itself was missed
            elif grace is not None and lease.since_reader_s > grace and not run.detached:
                log.info(
                    "stream %s: no reader for %.0fs; cancelling",
                    stream_id,
                    lease.since_reader_s,
                )
                await self.store.request_cancel(stream_id)
                run.cancelled.set()

    async def _sweep_artifacts(self) -> None:
        """Remove the outputs of tasks whose records have expired."""

        async def task_exists(task_id: str) -> bool:
            return await self.store.status(task_id) is not None

        while True:
            await self.artifacts.sweep(task_exists)
            await asyncio.sleep(self.settings.artifact_sweep_interval_s)
