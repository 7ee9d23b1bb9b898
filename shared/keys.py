"""Every Redis key and channel Spool uses, in one place.

Per-stream keys share the hash tag `{id}`, so on a Redis Cluster each stream lives in one
slot: these are on the streams' Redis (REDIS_URL). The keys without a tag (the queue, the
job indexes, workers, API keys, limits, usage, idempotency, webhook dispatch) are on the
queue's Redis (SPOOL_QUEUE_URL, else REDIS_URL), which is never a cluster.
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

REAPER_CLOCK_KEY = f"{PREFIX}:reaper-clock"
"""When a reaper last swept (ms, Redis' clock): a stamp far older than a sweep interval
means Redis was out of everyone's reach (see shared/lua/reaper_clock.lua)."""

REAPER_HOLD_KEY = f"{PREFIX}:reaper-hold"
"""Reaping is held until this time (ms, Redis' clock), after Redis was out of reach."""


def job_key(stream_id: str) -> str:
    """Hash: the job record (status, request, attempt token, lease, output, error)."""
    return f"{PREFIX}:{{{stream_id}}}:job"


def stream_key(stream_id: str) -> str:
    """Redis Stream of canonical events for one job."""
    return f"{PREFIX}:{{{stream_id}}}:events"


def live_channel(stream_id: str) -> str:
    """Pub/sub channel on which every append to the stream is published as it is written
    (a head line, `<position of the first event> <entry id>...`, then each event's JSON
    on a line): what API processes' stream hubs listen to. The stream itself stays the
    record; a missed message is read back from it."""
    return f"{PREFIX}:{{{stream_id}}}:live"


def tombstone_key(stream_id: str) -> str:
    """Outlives a finished stream's record so late readers get 410 (expired), not 404."""
    return f"{PREFIX}:{{{stream_id}}}:gone"


def render_state_key(stream_id: str, tag: str) -> str:
    """Sorted set: snapshots of a wire format's renderer state along the stream (`tag`
    names the format and its state's layout), scored by the position of the entry each
    was taken after; members are `<position> <entry id> <state>`. Written by the API's
    tails every few hundred events, so a resume renders from the latest one before its
    point instead of from the start; kept as long as the stream."""
    return f"{PREFIX}:{{{stream_id}}}:render:{tag}"


API_KEYS_INDEX = f"{PREFIX}:apikeys"
"""Hash: key id → digest of the secret, for listing and revoking."""

GLOBAL_CONCURRENCY_KEY = f"{PREFIX}:concurrency-all"
"""Sorted set of every open generation (the deployment-wide cap), scored by expiry (ms)."""


def api_key_key(digest: str) -> str:
    """Hash: one API key's record, found by the SHA-256 digest of its secret."""
    return f"{PREFIX}:apikey:{digest}"


CONCURRENCY_PREFIX = f"{PREFIX}:concurrency:"
USAGE_PREFIX = f"{PREFIX}:usage:"


def concurrency_key(key_id: str) -> str:
    """Sorted set: a key's open generations, scored by when the slot lapses (ms)."""
    return CONCURRENCY_PREFIX + key_id


def usage_key(key_id: str) -> str:
    """Hash: a key's token usage for its budget: `total` spent, `reserved` held by its open
    jobs (two fields, whatever the key does)."""
    return USAGE_PREFIX + key_id


def daily_usage_key(key_id: str, day: str) -> str:
    """Hash: a key's usage on one UTC day (`YYYY-MM-DD`), fields `<model>|input`,
    `<model>|output`, `<model>|requests` (kept `usage_retention_days`)."""
    return f"{USAGE_PREFIX}{key_id}:{day}"


def reservations_key(key_id: str) -> str:
    """Hash: job id → tokens of the key's budget held for that open job."""
    return f"{PREFIX}:reserved:{key_id}"


def stored_bytes_key(key_id: str) -> str:
    """Hash: the bytes a key's jobs keep, as a bucket that drains (`level` at `at` ms)."""
    return f"{PREFIX}:stored:{key_id}"


def requests_key(key_id: str) -> str:
    """Sorted set: the key's admitted requests of the last minute, scored by when (ms)."""
    return f"{PREFIX}:rate:{key_id}"


def follow_tokens_key(stream_id: str) -> str:
    """Hash: the read-only follow tokens of one stream, digest of the token → "1"; at most
    `max_follow_tokens` of them, kept as long as the stream."""
    return f"{PREFIX}:{{{stream_id}}}:follow"


def idempotency_key(owner: str, digest: str) -> str:
    """String `<task id> <body digest>`: the task an `Idempotency-Key` created, by the
    owner and the digest of the key."""
    return f"{PREFIX}:idem:{owner}:{digest}"


HOOKS_PENDING_KEY = f"{PREFIX}:hooks-pending"
"""Sorted set of tasks with a callback whose events are not all turned into webhook
messages yet, scored by creation time (ms): what the webhook dispatcher follows."""

HOOKS_WAKE_KEY = f"{PREFIX}:hooks-wake"
"""A short Redis Stream the API appends to when a task with a callback is created, so the
dispatcher's blocking read wakes at once."""


def hooks_key(task_id: str) -> str:
    """Hash: a task's webhook messages (`msg:<n>` → the message, `state:<n>` → its delivery
    status and attempts) and the dispatcher's `cursor` in the task's stream."""
    return f"{PREFIX}:{{{task_id}}}:hooks"


def hook_lock_key(task_id: str, seq: int) -> str:
    """Held while one delivery attempt of one message is in flight."""
    return f"{PREFIX}:{{{task_id}}}:hook-lock:{seq}"


def deployment_cooldown_key(deployment: str) -> str:
    """String with a TTL: while it exists, the deployment of a model group is skipped by
    every worker (it failed `allowed_fails` times, or told a Retry-After)."""
    return f"{PREFIX}:route:{deployment}:cooldown"


def deployment_fails_key(deployment: str) -> str:
    """Counter of a deployment's failures in the current window (expires with it)."""
    return f"{PREFIX}:route:{deployment}:fails"


def deployment_busy_key(deployment: str) -> str:
    """Sorted set of the stream ids a deployment is generating, scored by when each stops
    counting (ms) even if its worker died: `least_busy` routing counts the live ones."""
    return f"{PREFIX}:route:{deployment}:busy"


def deployment_latency_key(deployment: str) -> str:
    """List of a deployment's latest times to first token (ms), newest first."""
    return f"{PREFIX}:route:{deployment}:ttft"


def deployment_tokens_key(deployment: str, minute: int) -> str:
    """Counter of the tokens a deployment took in one minute (Unix time // 60)."""
    return f"{PREFIX}:route:{deployment}:tpm:{minute}"
