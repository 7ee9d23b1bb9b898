"""Webhook messages and their delivery records, in Redis.

Each task with a callback has one hash (`keys.hooks_key`). Message `n` is made from the
`n`th event of the task's stream, once: its id, event type, URL and body never change, so
every retry sends the same bytes under the same `webhook-id`. Its state (pending,
delivered, failed) and every attempt are kept next to it, and shown on the task.
"""

from __future__ import annotations

from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from shared import keys
from shared.redis.clients import DataRedis

WAKE_MAXLEN = 100
# Webhook delivery records outlive their task by this much, so late retries can record.
HOOK_RECORDS_GRACE_S = 24 * 3600


class HookMessage(BaseModel):
    id: str
    type: str  # task.started, task.progress, task.succeeded, task.failed, task.cancelled
    url: str
    body: str  # the JSON body, exactly as it is signed and sent


class HookAttempt(BaseModel):
    attempt: int
    at: float
    duration_ms: int
    status_code: int | None = None
    error: str | None = None


class HookState(BaseModel):
    status: Literal["pending", "delivered", "failed"] = "pending"
    attempts: list[HookAttempt] = Field(default_factory=list)
    next_attempt_at: float | None = None


class HookStore:
    """A task's webhook records live beside its stream (`redis`); the index of tasks still
    to dispatch and the dispatchers' wake-up stream on the queue's Redis (`control`)."""

    def __init__(self, redis: DataRedis, control: Redis, task_retention_s: int) -> None:
        self.redis = redis
        self.control = control
        # How long a task's webhook records outlive their last change: as long as the task,
        # and a grace for retries still due.
        self.keep_s = task_retention_s + HOOK_RECORDS_GRACE_S

    async def pending(self, offset: int = 0, limit: int = 256) -> list[str]:
        ids = await self.control.zrange(keys.HOOKS_PENDING_KEY, offset, offset + limit - 1)
        return [i.decode() for i in ids]

    async def cursors(self, task_ids: list[str]) -> dict[str, str]:
        """Where the dispatcher is in each task's stream ("0-0" before the first event)."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hget(keys.hooks_key(task_id), "cursor")
            replies = await pipe.execute()
        return {t: (c.decode() if c else "0-0") for t, c in zip(task_ids, replies, strict=True)}

    async def set_cursor(self, task_id: str, entry_id: str) -> None:
        key = keys.hooks_key(task_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, "cursor", entry_id)
            pipe.expire(key, self.keep_s)
            await pipe.execute()

    async def done(self, task_id: str) -> None:
        """Every event of the task has been turned into messages (or was not asked for)."""
        await self.control.zrem(keys.HOOKS_PENDING_KEY, task_id)

    async def wake(self) -> None:
        """Wake the dispatchers' blocking reads: a task with a callback was created."""
        await self.control.xadd(
            keys.HOOKS_WAKE_KEY, {"t": "1"}, maxlen=WAKE_MAXLEN, approximate=True
        )

    async def add(self, task_id: str, seq: int, message: HookMessage) -> bool:
        """Store message `seq` unless it exists; True when this call stored it."""
        key = keys.hooks_key(task_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hsetnx(key, f"msg:{seq}", message.model_dump_json())
            pipe.expire(key, self.keep_s)
            created, _ = await pipe.execute()
        return bool(created)

    async def message(self, task_id: str, seq: int) -> tuple[HookMessage, HookState] | None:
        raw, state = await self.redis.hmget(keys.hooks_key(task_id), [f"msg:{seq}", f"state:{seq}"])  # type: ignore[misc]
        if raw is None:
            return None
        return (
            HookMessage.model_validate_json(raw),
            HookState.model_validate_json(state) if state else HookState(),
        )

    async def set_state(self, task_id: str, seq: int, state: HookState) -> None:
        key = keys.hooks_key(task_id)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(key, f"state:{seq}", state.model_dump_json())
            pipe.expire(key, self.keep_s)
            await pipe.execute()

    async def lock(self, task_id: str, seq: int, ttl_ms: int) -> bool:
        return bool(await self.redis.set(keys.hook_lock_key(task_id, seq), "1", nx=True, px=ttl_ms))

    async def unlock(self, task_id: str, seq: int) -> None:
        await self.redis.delete(keys.hook_lock_key(task_id, seq))

    async def listing(self, task_id: str) -> list[dict[str, Any]]:
        """The task's webhook messages with their delivery state, oldest first."""
        raw: dict[bytes, bytes] = await self.redis.hgetall(keys.hooks_key(task_id))  # type: ignore[misc]
        listing = []
        for field, value in raw.items():
            name, _, seq = field.decode().partition(":")
            if name != "msg":
                continue
            message = orjson.loads(value)
            state_raw = raw.get(f"state:{seq}".encode())
            state = HookState.model_validate_json(state_raw) if state_raw else HookState()
            listing.append(
                (
                    int(seq),
                    {
                        "id": message["id"],
                        "type": message["type"],
                        **state.model_dump(exclude_none=True),
                    },
                )
            )
        return [item for _, item in sorted(listing, key=lambda pair: pair[0])]
