"""The Redis primary killed under load, with Sentinel: two API replicas and two workers
(real processes, REDIS_URL in its Sentinel form) follow the promoted replica without a
restart; every stream either continues and resumes exactly, or ends visibly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.faults.conftest import (
    FAULT_SETTINGS,
    Deployed,
    Reading,
    chat,
    fault_models,
    finish_after_failover,
    full_replay,
    measure,
    read_some,
    start_readers,
)
from tests.mock_upstream import MockUpstream
from tests.processes import start_api, start_worker, wait_ready, write_config
from tests.redis_topology import SentinelSet

pytestmark = pytest.mark.faults


@dataclass
class SentinelDeployment(Deployed):
    topology: SentinelSet


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, mock_upstream: MockUpstream
) -> Iterator[SentinelDeployment]:
    workdir = tmp_path_factory.mktemp("sentinel")
    topology = SentinelSet(workdir / "redis", replicas=1, sentinels=3, down_after_ms=1000).start()
    # The lease outlasts a failover (down-after + election), as README's Sentinel section
    # asks: a worker that only lost Redis for that long is not taken for dead.
    config = write_config(
        workdir / "spool.yaml", fault_models(mock_upstream), **{**FAULT_SETTINGS, "lease_s": 8}
    )
    apis = [start_api(topology.url, config, workdir) for _ in range(2)]
    workers = [start_worker(topology.url, config, workdir) for _ in range(2)]
    deployment = SentinelDeployment(apis, workers, topology)
    try:
        wait_ready(apis[0].url)
        yield deployment
    finally:
        for proc in [*apis, *workers]:
            proc.stop()
        topology.stop()


def test_primary_killed_under_load(deployment: SentinelDeployment) -> None:
    urls = deployment.urls
    with httpx.Client(timeout=30) as client:
        before = Reading()
        read_some(client, before, urls[0], body=chat("fault-demo", "written before"))
        assert before.finished
        old = deployment.topology.primary()
        deployment.topology.wait_replicated()  # replicated: it must survive the failover

        readings, threads = start_readers(
            client, urls, "fault-slow", 10, "through the failover", max_tokens=50
        )

        old.kill()
        killed_at = time.monotonic()
        for t in threads:
            t.join(15)
        assert all(not t.is_alive() for t in threads), "a reader hung on a dead primary"
        new = deployment.topology.wait_failover(old)
        failover_s = time.monotonic() - killed_at
        wait_ready(urls[0], timeout_s=30)
        wait_ready(urls[1], timeout_s=30)

        continued, lost = finish_after_failover(client, readings, urls)
        measure(
            f"sentinel failover in {failover_s:.2f}s (primary {old.port} -> {new.port}): "
            f"{continued} streams continued exactly, {lost} ended with events_lost"
        )

        # What was written before the failover is whole; new streams work at once.
        assert full_replay(client, urls[1], before.stream_id).events == before.events
        fresh = Reading()
        read_some(client, fresh, urls[1], body=chat("fault-demo", "after the failover"))
        assert fresh.finished and fresh.error() is None
    assert deployment.all_alive(), "every process followed the failover by itself"
