"""Prometheus metrics of one API process: requests by route and status, open stream
tails, generations started, admissions refused, content-policy decisions, the queue's
depth (read from Redis when scraped), reaper actions and Redis errors. Each replica
exposes its own on `GET /metrics`; labels are route templates and fixed names, never ids,
models or keys. (Workers serve theirs with `spool worker --metrics-port`.)"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.responses import DEFERRED
from shared import keys
from shared.metric_types import Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "spool_http_requests_total",
            "HTTP requests answered, by route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "spool_http_response_start_seconds",
            "Time from a request's arrival to its response headers.",
            ["route"],
            registry=self.registry,
        )
        self.open_tails = Gauge(
            "spool_open_stream_tails",
            "Server-Sent Event tails this process is serving right now.",
            registry=self.registry,
        )
        self.generations = Counter(
            "spool_generations_started_total",
            "Generations enqueued, by the API surface they came in through.",
            ["surface"],
            registry=self.registry,
        )
        self.refused = Counter(
            "spool_admissions_refused_total",
            "Generations refused before enqueueing: `limit` (rate or concurrency) or `budget`.",
            ["reason"],
            registry=self.registry,
        )

        self.policy_decisions = Counter(
            "spool_policy_decisions_total",
            "Content-policy decisions on requests' input, by policy and outcome (`allowed`, "
            "`blocked`, or `error`: the moderation endpoint failed).",
            ["policy", "stage", "outcome"],
            registry=self.registry,
        )

        self.queue_depth = Gauge(
            "spool_queue_depth",
            "Jobs waiting for a worker (all replicas see the same queue), read at scrape time.",
            registry=self.registry,
        )
        self.reaper_actions = Counter(
            "spool_reaper_actions_total",
            "Jobs this process's reaper settled: `requeued` (worker lost before any output), "
            "`lost` (after output), `expired` (queued too long), `cancelled`.",
            ["action"],
            registry=self.registry,
        )
        self.redis_errors = Counter(
            "spool_redis_errors_total",
            "Redis commands that failed, by what issued them.",
            ["where"],
            registry=self.registry,
        )

    def count_policy(self, policy: str, stage: str, outcome: str) -> None:
        self.policy_decisions.labels(policy, stage, outcome).inc()

    def count_reaped(self, action: str) -> None:
        self.reaper_actions.labels(action).inc()

    async def refresh(self, control: Redis) -> None:
        """Read what lives in Redis rather than in this process: the queue's depth. A
        Redis that cannot answer leaves the last value and counts an error."""
        try:
            self.queue_depth.set(await control.zcard(keys.QUEUED_KEY))
        except RedisError:
            self.redis_errors.labels("metrics").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def observe(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                self.metrics.latency.labels(_route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, observe)
            if scope.get(DEFERRED):
                # A stream that starts once this call is over (see `DeferredStreams`).
                status = 200
                self.metrics.latency.labels(_route(scope)).observe(time.perf_counter() - started)
        finally:
            self.metrics.requests.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else "unmatched"
