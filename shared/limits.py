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

import time

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from shared import keys, scripts
from shared.auth import ApiKey
from shared.errors import BudgetExhausted, RateLimited
from shared.request import GenerationRequest
from shared.settings import Settings


class Admission:
    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.global_limit = settings.max_concurrent_generations or 0
        # A slot outlives any job: the longest wait in the queue plus the longest run.
        self.slot_ms = (settings.queue_timeout_s + settings.job_timeout_s + 60) * 1000
        self.usage_ttl_s = settings.usage_retention_days * 86400
        self._admit = scripts.register(redis, "admit")
        self._settle = scripts.register(redis, "settle")

    async def admit(
        self, key: ApiKey, job_id: str, request: GenerationRequest | None = None
    ) -> int | None:
        """Take a slot for `job_id` (and, on a key with a budget, reserve the request's
        worst case), or raise 402 / 429 (with Retry-After). Returns the `max_tokens` the
        job may use when the budget left is less than the request asked for, else None."""
        if not (key.rpm or key.concurrency or key.budget_tokens or self.global_limit):
            return None  # nothing to enforce: no round trip on the way to the first token
        if request is None:  # a task: it spends no tokens
            worst, input_tokens = 0, 0
        else:
            worst = request.worst_case_tokens() or -1
            input_tokens = request.estimated_input_tokens()
        outcome, retry_after, reserved = await self._admit(
            keys=[
                keys.concurrency_key(key.id),
                keys.GLOBAL_CONCURRENCY_KEY,
                keys.usage_key(key.id),
                keys.reservations_key(key.id),
                keys.requests_key(key.id),
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
            case "concurrency":
                raise RateLimited(
                    f"the key {key.name!r} already has {key.concurrency} generations open",
                    retry_after=1.0,
                )
            case _:
                raise RateLimited(
                    "the deployment is at its limit of concurrent generations", retry_after=1.0
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
    owner_id = owner or ""
    day = time.strftime("%Y-%m-%d", time.gmtime())
    await script(
        keys=[
            keys.LEASES_KEY,
            keys.QUEUED_KEY,
            keys.GLOBAL_CONCURRENCY_KEY,
            keys.concurrency_key(owner_id),
            keys.usage_key(owner_id),
            keys.reservations_key(owner_id),
            keys.daily_usage_key(owner_id, day),
        ],
        args=[job_id, int(owner is not None), model, input_tokens, output_tokens, usage_ttl_s],
    )
