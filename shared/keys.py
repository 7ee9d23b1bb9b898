"""Every Redis key and channel Spool uses, in one place.

Per-stream keys share the hash tag `{id}`. The scripts that change a job also keep the two
global indexes (`LEASES_KEY`, `QUEUED_KEY`) in step, so Spool runs on a single Redis
primary (with replicas or Sentinel), not on Redis Cluster.
"""

from __future__ import annotations

PREFIX = "spool"

QUEUE_NAME = f"{PREFIX}:queue"
"""arq's queue (a sorted set); arq derives its own per-job keys from the job id."""

WAKE_CHANNEL = f"{PREFIX}:wake"
"""Pub/sub channel on which the API wakes idle workers right after enqueueing."""

CANCEL_CHANNEL = f"{PREFIX}:cancel"
"""Pub/sub channel on which cancel requests reach the worker running a stream."""

WORKERS_KEY = f"{PREFIX}:workers"
"""Sorted set of worker ids scored by the time their heartbeat expires."""

LEASES_KEY = f"{PREFIX}:leases"
"""Sorted set of running stream ids scored by lease expiry (ms): what the reaper scans."""

QUEUED_KEY = f"{PREFIX}:queued"
"""Sorted set of queued stream ids scored by when they were queued (ms)."""


def job_key(stream_id: str) -> str:
    """Hash: the job record (status, request, attempt token, lease, output, error)."""
    return f"{PREFIX}:{{{stream_id}}}:job"


def stream_key(stream_id: str) -> str:
    """Redis Stream of canonical events for one job."""
    return f"{PREFIX}:{{{stream_id}}}:events"


def tombstone_key(stream_id: str) -> str:
    """Outlives a finished stream's record so late readers get 410 (expired), not 404."""
    return f"{PREFIX}:{{{stream_id}}}:gone"
