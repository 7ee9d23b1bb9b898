"""A worker runtime in the test's own process, beside the API app (`create_app`), on the
Redis its settings name: for tests that reach inside a job while it runs."""

from __future__ import annotations

from shared.redis.clients import create_control_redis
from shared.settings import Settings
from worker.metrics import WorkerMetrics
from worker.runtime import WorkerRuntime


def worker_runtime(settings: Settings) -> WorkerRuntime:
    """As `spool worker` builds it (a pool and a multiplexed connection), with metrics of
    its own; call `startup()` and `shutdown()` around its use."""
    return WorkerRuntime(
        settings,
        create_control_redis(settings),
        create_control_redis(settings, multiplexed=True),
        metrics=WorkerMetrics(settings),
    )
