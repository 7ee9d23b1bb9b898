"""The job queue, behind a small interface so nothing else imports arq.

arq keeps jobs in a sorted set that workers poll. So a fresh job does not wait for the next
poll, `enqueue` also publishes on the wake channel, which idle workers block on.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Protocol

import orjson
from arq.connections import ArqRedis
from arq.jobs import Job, JobStatus

from shared import keys

GENERATE = "generate"
"""Name of the worker function that runs one generation job."""


class QueueStatus(StrEnum):
    DEFERRED = "deferred"
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETE = "complete"
    NOT_FOUND = "not_found"


class JobQueue(Protocol):
    async def enqueue(self, function: str, job_id: str, *args: Any) -> None: ...

    async def abort(self, job_id: str) -> None: ...

    async def status(self, job_id: str) -> QueueStatus: ...


def serialize_job(data: dict[str, Any]) -> bytes:
    # JSON, not arq's default pickle: whoever can write to Redis must not run code here.
    return orjson.dumps(data, default=str)


def deserialize_job(raw: bytes) -> dict[str, Any]:
    data: dict[str, Any] = orjson.loads(raw)
    return data


class ArqJobQueue:
    def __init__(self, redis: ArqRedis, queue_name: str = keys.QUEUE_NAME) -> None:
        self.redis = redis
        self.queue_name = queue_name

    async def enqueue(self, function: str, job_id: str, *args: Any) -> None:
        job = await self.redis.enqueue_job(
            function, *args, _job_id=job_id, _queue_name=self.queue_name
        )
        if job is not None:
            await self.redis.publish(keys.WAKE_CHANNEL, job_id)

    async def abort(self, job_id: str) -> None:
        job = Job(job_id, self.redis, _queue_name=self.queue_name, _deserializer=deserialize_job)
        await job.abort(timeout=0)

    async def status(self, job_id: str) -> QueueStatus:
        job = Job(job_id, self.redis, _queue_name=self.queue_name, _deserializer=deserialize_job)
        arq_status: JobStatus = await job.status()
        return QueueStatus(arq_status.value)
