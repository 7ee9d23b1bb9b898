"""Routing inside a job: in what order a model group's deployments are tried (by its
strategy), what a failure before the first token means (try another deployment, go to a
context-window or content-policy fallback, or give up), and the state all workers share
for it in Redis: cooldowns, recent failures, open generations, time to first token and
tokens per minute, per deployment."""

from __future__ import annotations

import contextlib
import logging
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared import keys
from shared.errors import UpstreamError
from shared.model_table import GroupPlan, ModelEntry
from shared.scripts import register
from worker.metrics import WorkerMetrics, unused

log = logging.getLogger(__name__)

FailureKind = Literal["deployment", "context_window", "content_policy", "request"]
LATENCY_SAMPLES = 10  # times to first token averaged per deployment
STATS_TTL_S = 3600  # how long a deployment's latency samples outlive its last request
MAX_RETRY_AFTER_COOLDOWN_S = 3600.0

# How upstreams say a prompt does not fit (OpenAI and compatibles, Anthropic, Gemini) and
# that a request was refused by their content policy (OpenAI, Azure's content filter).
CONTEXT_WINDOW = re.compile(
    r"context[ _-](?:length|window)|maximum context|prompt is too long|too many tokens|"
    r"exceeds? the (?:maximum|max)(?: number of)? tokens|input (?:is )?too long",
    re.IGNORECASE,
)
CONTENT_POLICY = re.compile(
    r"content[ _-](?:policy|filter|management)|safety system|responsibleaipolicy|"
    r"prohibited content|blocked by (?:our|the) safety",
    re.IGNORECASE,
)
# Statuses that say "this deployment, not this request": its key, its model, its quota.
DEPLOYMENT_STATUSES = frozenset({401, 403, 404})


def classify(exc: UpstreamError) -> FailureKind:
    """What a failure before the first token says: the deployment is unwell (try another),
    the prompt is too long or was refused by policy (try the fallbacks for that), or the
    request itself is wrong (every deployment would say the same)."""
    status = exc.upstream_status
    if status is not None and 400 <= status < 500 and status != 429:
        if CONTEXT_WINDOW.search(exc.message):
            return "context_window"
        if CONTENT_POLICY.search(exc.message):
            return "content_policy"
        if status not in DEPLOYMENT_STATUSES and not exc.retryable:
            return "request"
    return "deployment"


@dataclass(slots=True)
class DeploymentStats:
    cooling: bool = False
    cooling_s: float | None = None  # how much longer it cools down, when known
    busy: int = 0
    latency_ms: float | None = None  # mean of the recent times to first token
    tokens: int = 0  # this minute


def rank(
    group: GroupPlan, stats: dict[str, DeploymentStats], rng: random.Random
) -> list[ModelEntry]:
    """The group's deployments in the order to try them: the first is the strategy's
    pick, the rest are where a failure moves next. Deployments cooling down are left
    out (a group whose every deployment cools down is skipped)."""
    pool = [d for d in group.deployments if not stats[d.deployment].cooling]
    if group.routing == "weighted":
        # Weighted sampling without replacement: each key u^(1/w), largest first.
        return sorted(pool, key=lambda d: rng.random() ** (1.0 / d.weight), reverse=True)
    rng.shuffle(pool)  # ties go either way
    if group.routing == "least_busy":
        return sorted(pool, key=lambda d: stats[d.deployment].busy)
    if group.routing == "latency":
        # A deployment with no samples yet goes first: it has to be measured somehow.
        return sorted(pool, key=lambda d: stats[d.deployment].latency_ms or 0.0)

    def load(d: ModelEntry) -> float:
        used = stats[d.deployment].tokens
        return used / d.tpm if d.tpm else used / 1e12

    ranked = sorted(pool, key=load)
    # Deployments past their tokens per minute go last, still in order of load.
    return [d for d in ranked if load(d) < 1] + [d for d in ranked if load(d) >= 1]


class RouteState:
    """The routing state of every deployment, on the queue's Redis. It steers, it never
    stops a job: when Redis cannot answer, routing goes on without it."""

    def __init__(
        self, redis: Redis, job_timeout_s: float, metrics: WorkerMetrics | None = None
    ) -> None:
        self.redis = redis
        self.job_timeout_s = job_timeout_s
        self.metrics = metrics or unused()
        self._fail = register(redis, "route_fail")
        self.rng = random.Random()

    async def ranked(self, group: GroupPlan) -> tuple[list[ModelEntry], float | None]:
        """The group's deployments in the order to try them (see `rank`), and when every
        one of them cools down, how soon the first is back (s)."""
        if not group.pooled:
            return list(group.deployments), None
        stats = await self._stats(group)
        order = rank(group, stats, self.rng)
        if order:
            return order, None
        return order, min((s.cooling_s for s in stats.values() if s.cooling_s), default=None)

    @contextlib.contextmanager
    def _steering(self, what: str) -> Iterator[None]:
        """Routing state steers and never stops a job: a Redis error is counted, logged
        and passed over."""
        try:
            yield
        except RedisError as exc:
            self.metrics.redis_error("routing")
            log.warning("routing state: could not %s: %s", what, exc)

    async def _stats(self, group: GroupPlan) -> dict[str, DeploymentStats]:
        names = [d.deployment for d in group.deployments]
        stats = {name: DeploymentStats() for name in names}
        now = time.time()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for name in names:
                    pipe.pttl(keys.deployment_cooldown_key(name))
                    if group.routing == "least_busy":
                        pipe.zcount(keys.deployment_busy_key(name), int(now * 1000), "+inf")
                    elif group.routing == "latency":
                        pipe.lrange(keys.deployment_latency_key(name), 0, -1)
                    elif group.routing == "usage":
                        pipe.get(keys.deployment_tokens_key(name, int(now // 60)))
                replies = await pipe.execute()
        except RedisError as exc:
            self.metrics.redis_error("routing")
            log.warning("routing state unavailable (%s); routing without it", exc)
            return stats
        step = 1 if group.routing == "weighted" else 2
        for i, name in enumerate(names):
            found = stats[name]
            left_ms = int(replies[i * step])  # -2: no cooldown; -1: one with no expiry
            found.cooling = left_ms > 0 or left_ms == -1
            found.cooling_s = left_ms / 1000 if left_ms > 0 else None
            if step == 1:
                continue
            value = replies[i * step + 1]
            if group.routing == "least_busy":
                found.busy = int(value)
            elif group.routing == "latency" and value:
                found.latency_ms = sum(float(v) for v in value) / len(value)
            elif group.routing == "usage" and value:
                found.tokens = int(value)
        return stats

    async def failed(
        self, group: GroupPlan, deployment: ModelEntry, retry_after: float | None
    ) -> float:
        """Count a failure of `deployment`; returns the cooldown it got (s), 0 for none. A
        lone upstream is never cooled down: there is nothing to move to."""
        if not group.pooled:
            return 0.0
        name = deployment.deployment
        told = min(retry_after or 0.0, MAX_RETRY_AFTER_COOLDOWN_S)
        try:
            cooled = await self._fail(
                keys=[keys.deployment_fails_key(name), keys.deployment_cooldown_key(name)],
                args=[
                    group.allowed_fails,
                    int(group.fail_window_s * 1000),
                    int(group.cooldown_s * 1000),
                    int(told * 1000),
                ],
            )
        except RedisError as exc:
            self.metrics.redis_error("routing")
            log.warning("could not count a failure of deployment %s: %s", name, exc)
            return 0.0
        if cooled:
            self.metrics.cooldowns.labels(self.metrics.deployment(name)).inc()
            log.warning("deployment %s cooled down for %.1fs", name, int(cooled) / 1000)
        return int(cooled) / 1000

    async def started(self, group: GroupPlan, deployment: ModelEntry, stream_id: str) -> None:
        if group.routing != "least_busy" or not group.pooled:
            return
        until = int((time.time() + self.job_timeout_s) * 1000)
        key = keys.deployment_busy_key(deployment.deployment)
        with self._steering(f"count a generation of {deployment.deployment}"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zadd(key, {stream_id: until})
                pipe.zremrangebyscore(key, "-inf", int(time.time() * 1000))
                pipe.pexpire(key, int(self.job_timeout_s * 1000))
                await pipe.execute()

    async def ended(self, group: GroupPlan, deployment: ModelEntry, stream_id: str) -> None:
        if group.routing != "least_busy" or not group.pooled:
            return
        with self._steering(f"uncount a generation of {deployment.deployment}"):
            await self.redis.zrem(keys.deployment_busy_key(deployment.deployment), stream_id)

    async def first_token(self, group: GroupPlan, deployment: ModelEntry, ms: float) -> None:
        if group.routing != "latency" or not group.pooled:
            return
        key = keys.deployment_latency_key(deployment.deployment)
        with self._steering(f"record the latency of {deployment.deployment}"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.lpush(key, round(ms, 2))
                pipe.ltrim(key, 0, LATENCY_SAMPLES - 1)
                pipe.expire(key, STATS_TTL_S)
                await pipe.execute()

    async def used(self, group: GroupPlan, deployment: ModelEntry, tokens: int) -> None:
        if group.routing != "usage" or not group.pooled or tokens <= 0:
            return
        key = keys.deployment_tokens_key(deployment.deployment, int(time.time() // 60))
        with self._steering(f"record the usage of {deployment.deployment}"):
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.incrby(key, tokens)
                pipe.expire(key, 120)
                await pipe.execute()
