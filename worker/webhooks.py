"""Webhook delivery: one signed POST per queued job, retried through the queue.

Messages are signed as the Standard Webhooks specification says: `webhook-signature` is
`v1,` + base64(HMAC-SHA256(key, "<webhook-id>.<webhook-timestamp>.<body>")), where the key
is the base64 part of the deployment's `whsec_` secret. Every attempt of a message sends
the same id and body, with a fresh timestamp and signature.

A failed attempt (a network error, a timeout, any status but 2xx) queues the next one with
exponential backoff and full jitter, up to `webhook_max_attempts`. The next attempt is
queued before this one is recorded, so a worker that dies in between loses no delivery;
the per-message lock and the attempt number keep duplicates from sending twice.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import time

import httpx

from shared.backoff import jittered_backoff
from shared.errors import SpoolError
from shared.hooks import HookAttempt, HookMessage, HookStore
from shared.queue import DELIVER_WEBHOOK, JobQueue
from shared.settings import Settings

log = logging.getLogger(__name__)
USER_AGENT = "Spool-Webhooks/0.1"
EVENT_HEADER = "spool-event"
LOCK_WAIT_STEP_S = 0.05
MAX_ERROR_CHARS = 300


def signing_key(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(signing_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def delivery_job_id(task_id: str, seq: int, attempt: int) -> str:
    return f"hook:{task_id}:{seq}:{attempt}"


class WebhookSender:
    def __init__(
        self, hooks: HookStore, queue: JobQueue, settings: Settings, http: httpx.AsyncClient
    ) -> None:
        self.hooks = hooks
        self.queue = queue
        self.settings = settings
        self.http = http
        self.lock_ms = int((settings.webhook_timeout_s + 5) * 1000)

    def backoff_s(self, attempt: int) -> float:
        settings = self.settings
        return jittered_backoff(settings.webhook_backoff_s, settings.webhook_backoff_max_s, attempt)

    async def deliver(self, task_id: str, seq: int, attempt: int) -> str:
        """Make attempt `attempt` of message `seq` of `task_id`; returns what happened."""
        if not await self._take_lock(task_id, seq):
            return "busy"
        try:
            found = await self.hooks.message(task_id, seq)
            if found is None:
                return "gone"  # the task and its records expired
            message, state = found
            # A duplicate job for an attempt already made (or a finished message) stops here.
            if state.status != "pending" or attempt <= len(state.attempts):
                return "skipped"
            outcome = await self._post(message, attempt)
            state.attempts.append(outcome)
            state.next_attempt_at = None
            if outcome.status_code is not None and 200 <= outcome.status_code < 300:
                state.status = "delivered"
            elif attempt >= self.settings.webhook_max_attempts:
                state.status = "failed"
                log.warning("webhook %s: giving up after %d attempts", message.id, attempt)
            else:
                delay = self.backoff_s(attempt)
                state.next_attempt_at = round(time.time() + delay, 3)
                await self.queue.enqueue(
                    DELIVER_WEBHOOK,
                    delivery_job_id(task_id, seq, attempt + 1),
                    task_id,
                    seq,
                    attempt + 1,
                    defer_s=delay,
                )
            await self.hooks.set_state(task_id, seq, state)
            return state.status
        finally:
            await self.hooks.unlock(task_id, seq)

    async def _take_lock(self, task_id: str, seq: int) -> bool:
        """Wait for an attempt in flight (whose next attempt may have been queued before it
        was recorded) to finish recording; give up after the lock's lifetime."""
        deadline = time.monotonic() + self.lock_ms / 1000
        while not await self.hooks.lock(task_id, seq, self.lock_ms):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(LOCK_WAIT_STEP_S)
        return True

    async def _post(self, message: HookMessage, attempt: int) -> HookAttempt:
        secret = self.settings.webhook_secret
        if secret is None:
            return HookAttempt(
                attempt=attempt, at=time.time(), duration_ms=0, error="no webhook secret is set"
            )
        body = message.body.encode()
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": message.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret.get_secret_value(), message.id, timestamp, body),
            EVENT_HEADER: message.type,
        }
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        try:
            response = await self.http.post(
                message.url,
                content=body,
                headers=headers,
                timeout=self.settings.webhook_timeout_s,
            )
            status_code = response.status_code
            if not 200 <= status_code < 300:
                error = f"the receiver answered HTTP {status_code}"
        except SpoolError as exc:  # the outbound guard refused the address
            error = exc.message
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        duration_ms = int((time.monotonic() - started) * 1000)
        log.info(
            "webhook %s (%s) attempt %d: %s",
            message.id, message.type, attempt, status_code or error,
        )  # fmt: skip
        return HookAttempt(
            attempt=attempt,
            at=round(time.time(), 3),
            duration_ms=duration_ms,
            status_code=status_code,
            error=error[:MAX_ERROR_CHARS] if error else None,
        )
