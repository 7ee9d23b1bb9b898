"""Admission: budget, requests per minute and concurrent generations, per key and per
deployment, decided atomically in Redis so every API replica enforces the same limits.

A slot in the concurrency sets is released when the job ends (the store's finish and
cancel scripts remove it) and lapses on its own after the longest a job can take, so a
lost release can never hold a slot forever.
"""

from __future__ import annotations

from redis.asyncio import Redis

from shared import keys, scripts
from shared.auth import ApiKey
from shared.errors import BudgetExhausted, RateLimited
from shared.settings import Settings


class Admission:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.global_limit = settings.max_concurrent_generations or 0
        # A slot outlives any job: the longest wait in the queue plus the longest run.
        self.slot_ms = (settings.queue_timeout_s + settings.job_timeout_s + 60) * 1000
        self._admit = scripts.register(redis, "admit")

    async def admit(self, key: ApiKey, stream_id: str) -> None:
        """Take a generation slot for `stream_id`, or raise 402 / 429 (with Retry-After)."""
        if not (key.rpm or key.concurrency or key.budget_tokens or self.global_limit):
            return  # nothing to enforce: no round trip on the way to the first token
        outcome, retry_after = await self._admit(
            keys=[
                keys.concurrency_key(key.id),
                keys.GLOBAL_CONCURRENCY_KEY,
                keys.usage_key(key.id),
            ],
            args=[
                key.rpm or 0,
                key.concurrency or 0,
                self.global_limit,
                stream_id,
                self.slot_ms,
                key.budget_tokens or 0,
                keys.rate_key_prefix(key.id),
            ],
        )
        match outcome.decode():
            case "ok":
                return
            case "budget":
                raise BudgetExhausted(
                    f"the key {key.name!r} has used its budget of {key.budget_tokens} tokens"
                )
            case "rate":
                raise RateLimited(
                    f"the key {key.name!r} is limited to {key.rpm} requests per minute",
                    retry_after=float(retry_after),
                )
            case "concurrency":
                raise RateLimited(
                    f"the key {key.name!r} already has {key.concurrency} generations open",
                    retry_after=1.0,
                )
            case _:
                raise RateLimited(
                    "the deployment is at its limit of concurrent generations", retry_after=1.0
                )

    async def release(self, key: ApiKey, stream_id: str) -> None:
        """Give back a slot whose job never got created."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(keys.concurrency_key(key.id), stream_id)
            pipe.zrem(keys.GLOBAL_CONCURRENCY_KEY, stream_id)
            await pipe.execute()
