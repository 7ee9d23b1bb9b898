"""Supervised background tasks: named, restarted with backoff when they fail, cancelled
with their owner."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)
RESTART_BACKOFF_S = (0.1, 0.25, 0.5, 1.0)


def supervise(name: str, body: Callable[[], Awaitable[None]]) -> asyncio.Task[None]:
    async def supervised() -> None:
        failures = 0
        while True:
            try:
                await body()
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
                failures += 1
                log.warning("%s task failed (%s: %s); restarting in %.2fs",
                            name, type(exc).__name__, exc, delay)  # fmt: skip
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
