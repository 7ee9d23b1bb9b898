"""Admission: budget, requests per minute and concurrent jobs, per key and per
deployment, decided atomically in Redis so every API replica enforces the same limits.

A job's slot and its budget reservation are given back when it ends (`settle`, after the
store's finish and cancel scripts) and lapse on their own after the longest a job can
take, so a lost release can never hold either forever. A reservation is the request's
worst case (its input and `max_tokens`, or everything left when it set none), and the
job's `max_tokens` is clamped to it: concurrent requests cannot spend past the budget by
more than the error in one request's input estimate.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared import keys, scripts
from shared.auth import ANONYMOUS, ApiKey
from shared.errors import BudgetExhausted, RateLimited, SpoolError
from shared.redis.clients import REDIS_BLIP_ERRORS, DataRedis
from shared.request import GenerationRequest
from shared.settings import Settings

log = logging.getLogger(__name__)


MEMORY_RETRY_S = 5.0


class StorageFull(SpoolError):
    """Spool's Redis is nearly full; try again shortly."""

    status_code = 503
    code = "redis_memory_full"
    type = "service_unavailable"
    retry_after = MEMORY_RETRY_S


class RedisMemory:
    """How full the Redis holding the streams is, against its `maxmemory`: looked at every
    `interval_s` by `watch` (one INFO per node), so admission reads a flag, not Redis."""

    def __init__(self, redis: DataRedis | None, settings: Settings, interval_s: float = 1.0):
        self.redis = redis
        self.high = settings.redis_memory_high
        self.interval_s = interval_s
        self.full = False
        self.used_share = 0.0  # of maxmemory, on the fullest node; 0 without maxmemory

    async def look(self) -> None:
        if self.redis is None:
            return
        info: dict[str, Any] = await self.redis.info("memory")
        # A cluster client answers per node; one Redis answers for itself.
        nodes = info.values() if all(isinstance(v, dict) for v in info.values()) else [info]
        shares = [
            int(node.get("used_memory", 0)) / int(node["maxmemory"])
            for node in nodes
            if int(node.get("maxmemory", 0)) > 0
        ]
        self.used_share = max(shares, default=0.0)
        full = self.used_share >= self.high
        if full != self.full:
            log.warning(
                "redis memory at %.0f%% of maxmemory: new jobs are %s",
                self.used_share * 100,
                "refused" if full else "admitted again",
            )
        self.full = full

    async def watch(self) -> None:
        """Look forever (a supervised task): a Redis that cannot be asked keeps the last
        answer until it can."""
        while True:
            try:
                await self.look()
            except REDIS_BLIP_ERRORS as exc:
                log.debug("redis memory not known: %s", exc)
            await asyncio.sleep(self.interval_s)


class Admission:
    def __init__(self, redis: Redis, settings: Settings, memory: RedisMemory | None = None) -> None:
        self.redis = redis
        self.settings = settings
        self.global_limit = settings.max_concurrent_generations or 0
        # A slot outlives any job: the longest wait in the queue plus the longest run.
        self.slot_ms = (settings.queue_timeout_s + settings.job_timeout_s + 60) * 1000
        self.usage_ttl_s = settings.usage_retention_days * 86400
        self.stored_quota = settings.max_stored_bytes_per_key or 0
        self.retention_s = settings.retention_s
        self.memory = memory or RedisMemory(None, settings)
        self._admit = scripts.register(redis, "admit")
        self._settle = scripts.register(redis, "settle")
        self._take_request = scripts.register(redis, "take_request")

    async def admit(
        self,
        key: ApiKey,
        job_id: str,
        request: GenerationRequest | None = None,
        *,
        stored_bytes: int = 0,
        kept_s: int | None = None,
    ) -> int | None:
        """Take a slot for `job_id` (and, on a key with a budget, reserve the request's
        worst case; with a stored-bytes quota, count the `stored_bytes` it keeps for
        `kept_s`), or raise 402 / 429 / 503 (with Retry-After). Returns the `max_tokens`
        the job may use when the budget left is less than the request asked for."""
        if self.memory.full:
            raise StorageFull("Spool's Redis is nearly full; new jobs wait until running ones end")
        quota = self.stored_quota if key is not ANONYMOUS else 0
        if not (key.rpm or key.concurrency or key.budget_tokens or self.global_limit or quota):
            return None  # nothing to enforce: no round trip on the way to the first token
        if request is None:  # a task: it spends no tokens
            worst, input_tokens = 0, 0
        else:
            worst = request.worst_case_tokens() or -1
            input_tokens = request.estimated_input_tokens()
        # Bytes kept longer than the streams' retention weigh more (a task's input).
        weighted = stored_bytes * (kept_s or self.retention_s) // self.retention_s
        outcome, retry_after, reserved = await self._admit(
            keys=[
                keys.concurrency_key(key.id),
                keys.GLOBAL_CONCURRENCY_KEY,
                keys.usage_key(key.id),
                keys.reservations_key(key.id),
                keys.requests_key(key.id),
                keys.stored_bytes_key(key.id),
            ],
            args=[
                key.rpm or 0,
                key.concurrency or 0,
                self.global_limit,
                job_id,
                self.slot_ms,
                key.budget_tokens or 0,
                worst,
                input_tokens,
                weighted,
                quota,
                self.retention_s * 1000,
            ],
        )
        match outcome.decode():
            case "ok":
                allowed = int(reserved) - input_tokens
                if (
                    request is not None
                    and reserved
                    and allowed < (request.max_tokens or allowed + 1)
                ):
                    return allowed
                return None
            case "budget":
                raise BudgetExhausted(
                    f"the key {key.name!r} has used its budget of {key.budget_tokens} tokens"
                )
            case "rate":
                raise RateLimited(
                    f"the key {key.name!r} is limited to {key.rpm} requests per minute",
                    retry_after=float(retry_after),
                )
            case "storage":
                raise RateLimited(
                    f"the key {key.name!r} keeps as much as it may "
                    f"({self.stored_quota} bytes of requests and task inputs); "
                    "room is made as its jobs expire",
                    retry_after=float(retry_after),
                )
            case "concurrency":
                raise RateLimited(
                    f"the key {key.name!r} already has {key.concurrency} jobs open",
                    retry_after=1.0,
                )
            case _:
                raise RateLimited(
                    "the deployment is at its limit of concurrent generations", retry_after=1.0
                )

    async def take_request(self, key: ApiKey, member: str) -> None:
        """Count one request that is not a job (a follow token minted) against the key's
        requests per minute, or raise 429."""
        if not key.rpm:
            return
        wait = await self._take_request(keys=[keys.requests_key(key.id)], args=[key.rpm, member])
        if int(wait):
            raise RateLimited(
                f"the key {key.name!r} is limited to {key.rpm} requests per minute",
                retry_after=float(wait),
            )

    async def charge(self, key: ApiKey, job_id: str, model: str, input_tokens: int) -> None:
        """End a request that needed no queue (embeddings) and was admitted as `job_id`:
        its slot given back, its input tokens charged to the key's usage."""
        await settle(
            self._settle,
            job_id,
            key.id,
            usage_model(self.settings, model),
            input_tokens,
            0,
            usage_ttl_s=self.usage_ttl_s,
        )

    async def release(self, key: ApiKey, job_id: str) -> None:
        """Give back the slot and reservation of a job that never got created."""
        await settle(self._settle, job_id, key.id, usage_ttl_s=self.usage_ttl_s)


def usage_model(settings: Settings, model: str) -> str:
    """The name usage is counted under: a model-table entry by its name, a pass-through
    name under its provider (`openai/*`), so the names clients invent add no fields."""
    if model in settings.models or "/" not in model:
        return model
    return model.split("/", 1)[0] + "/*"


async def settle(
    script: AsyncScript,
    job_id: str,
    owner: str | None,
    model: str = "",
    input_tokens: int = 0,
    output_tokens: int = 0,
    *,
    usage_ttl_s: int,
) -> None:
    """What an ended (or never created) job leaves on the control Redis: off the indexes,
    its slot and reservation given back, its usage charged to its owner (settle.lua)."""
    settle_keys, args = settling(job_id, owner, model, input_tokens, output_tokens, usage_ttl_s)
    await script(keys=settle_keys, args=args)


def settling(
    job_id: str,
    owner: str | None,
    model: str,
    input_tokens: int,
    output_tokens: int,
    usage_ttl_s: int,
) -> tuple[list[str], list[Any]]:
    """The keys and arguments of settle_job.lua (settle.lua, finish_settle.lua)."""
    owner_id = owner or ""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    return (
        [
            keys.LEASES_KEY,
            keys.QUEUED_KEY,
            keys.GLOBAL_CONCURRENCY_KEY,
            keys.concurrency_key(owner_id),
            keys.usage_key(owner_id),
            keys.reservations_key(owner_id),
            keys.daily_usage_key(owner_id, day),
        ],
        [job_id, int(owner is not None), model, input_tokens, output_tokens, usage_ttl_s],
    )
