"""A Redis Cluster across hosts: each of its six nodes on a host of its own, the queue on
another, two API replicas and two workers behind nginx. A master is killed under load:
its replica takes over, and every stream continues and resumes exactly through nginx, or
ends visibly."""

from __future__ import annotations

import time

import httpx

from shared import keys
from tests.faults.conftest import finish_after_failover, measure, start_readers
from tests.hosts.conftest import Deployment
from tests.redis_topology import ClusterSet


def test_a_cluster_master_killed_under_load(cluster_deployment: Deployment) -> None:
    d = cluster_deployment
    cluster = d.redis
    assert isinstance(cluster, ClusterSet)
    with httpx.Client(timeout=30) as client:
        readings, threads = start_readers(client, d.lb_url, "slow", 12, "cluster hosts")
        masters = {r.stream_id: cluster.master_of(keys.job_key(r.stream_id)) for r in readings}
        victim = masters[readings[0].stream_id]
        cluster.wait_replicated(victim)
        victim.kill()
        killed_at = time.monotonic()
        for t in threads:
            t.join(30)
        assert all(not t.is_alive() for t in threads), "a reader hung on a dead master"
        cluster.wait_failover(victim)
        failover_s = time.monotonic() - killed_at
        d.wait_all_ready()
        continued, lost = finish_after_failover(client, readings, [d.lb_url])
        on_victim = sum(1 for m in masters.values() if m is victim)
        measure(
            f"cluster master on {victim.ip} killed ({on_victim} of 12 streams on it), replica "
            f"promoted in {failover_s:.1f}s: {continued} continued exactly, {lost} events_lost"
        )
    for proc in [*d.apis.values(), *d.workers.values()]:
        assert proc.process.poll() is None
