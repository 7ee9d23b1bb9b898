"""Supervised background tasks: named, restarted with backoff when they fail, cancelled
with their owner."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
RESTART_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)
HEALTHY_AFTER_S = 10.0  # a body that ran this long before failing starts a new streak
REPEAT_LOG_S = 60.0  # while failing again and again, a warning this often at most


def supervise(name: str, body: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    """Run `body` until cancelled, restarting it whenever it fails. Failures in a row (a
    Redis that is down or refusing clients, say) wait longer each time, up to a bound, and
    are logged when the streak starts and then once a minute, not at every restart."""

    async def supervised() -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        logged_at = -REPEAT_LOG_S
        while True:
            started = loop.time()
            try:
                await body()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                now = loop.time()
                if now - started >= HEALTHY_AFTER_S:
                    failures = 0
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                failures += 1
                if failures == 1 or now - logged_at >= REPEAT_LOG_S:
                    logged_at = now
                    log.warning("%s task failed (%s: %s); restarting in %.2fs (%d in a row)",
                                name, type(exc).__name__, exc, delay, failures)  # fmt: skip
                else:
                    log.debug("%s task failed again: %r", name, exc)
                await asyncio.sleep(delay)

    return asyncio.create_task(supervised(), name=f"spool-{name}")


async def cancel_and_wait(task: asyncio.Task[object], recheck_s: float = 0.05) -> None:
    """Cancel `task` and wait until it has really stopped.

    A single `cancel()` is not enough on Python 3.11: a cancellation that lands while
    redis-py checks a pooled connection under `asyncio.timeout(0)` can be lost, and the
    task runs on. Re-issuing it until the task is done makes it stick.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=recheck_s)
    if not task.cancelled() and task.exception() is not None:
        log.debug("%s ended with %r while being cancelled", task.get_name(), task.exception())
