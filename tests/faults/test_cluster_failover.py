"""Streams on a Redis Cluster (three masters with a replica each), the queue on a Redis of
its own: two API replicas and two workers (real processes) serve streams from every
master, and when a master is killed under load its replica takes over; every stream
either continues and resumes exactly, or ends visibly."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from shared import keys
from shared.redis.embedded import EmbeddedRedis
from tests.faults.conftest import (
    FAULT_SETTINGS,
    Deployed,
    Reading,
    chat,
    fault_models,
    finish_after_failover,
    measure,
    read_some,
    start_readers,
)
from tests.mock_upstream import MockUpstream
from tests.processes import start_api, start_worker, wait_ready, write_config
from tests.redis_topology import ClusterSet

pytestmark = pytest.mark.faults


@dataclass
class ClusterDeployment(Deployed):
    cluster: ClusterSet


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, mock_upstream: MockUpstream
) -> Iterator[ClusterDeployment]:
    workdir = tmp_path_factory.mktemp("cluster")
    cluster = ClusterSet(workdir / "cluster").start()
    queue = EmbeddedRedis(workdir / "queue", appendonly=False)
    queue.start()
    config = write_config(
        workdir / "spool.yaml",
        fault_models(mock_upstream),
        **{**FAULT_SETTINGS, "lease_s": 8, "queue_url": queue.url},
    )
    apis = [start_api(cluster.url, config, workdir) for _ in range(2)]
    workers = [start_worker(cluster.url, config, workdir) for _ in range(2)]
    try:
        wait_ready(apis[0].url)
        yield ClusterDeployment(apis, workers, cluster)
    finally:
        for proc in [*apis, *workers]:
            proc.stop()
        cluster.stop()
        queue.stop()


def test_streams_on_every_master_and_one_killed_under_load(deployment: ClusterDeployment) -> None:
    urls = deployment.urls
    cluster = deployment.cluster
    with httpx.Client(timeout=30) as client:
        readings, threads = start_readers(
            client, urls, "fault-slow", 12, "on the cluster", max_tokens=50
        )
        masters = {r.stream_id: cluster.master_of(keys.job_key(r.stream_id)) for r in readings}
        assert len({m.port for m in masters.values()}) >= 2, "the streams spread over masters"
        victim = masters[readings[0].stream_id]
        cluster.wait_replicated(victim)
        victim.kill()
        killed_at = time.monotonic()
        for t in threads:
            t.join(30)
        assert all(not t.is_alive() for t in threads), "a reader hung on a dead master"
        cluster.wait_failover(victim)
        failover_s = time.monotonic() - killed_at
        wait_ready(urls[0], timeout_s=30)

        continued, lost = finish_after_failover(client, readings, urls)
        on_victim = sum(1 for m in masters.values() if m is victim)
        measure(
            f"cluster master killed ({on_victim} of 12 streams on it), replica promoted in "
            f"{failover_s:.2f}s: {continued} continued exactly, {lost} ended with events_lost"
        )
        fresh = Reading()
        read_some(client, fresh, urls[1], body=chat("fault-demo", "after the failover"))
        assert fresh.finished and fresh.error() is None
    assert deployment.all_alive(), "every process followed the failover by itself"
