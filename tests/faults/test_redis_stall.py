"""Redis frozen (SIGSTOP) under load, for up to twice the lease: no healthy stream is taken
for a dead worker's. Leases run out by Redis' clock while nobody can renew them; the
reapers see the gap in their own stamps and give the workers a lease period to renew."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.faults.conftest import (
    LEASE_S,
    FaultCluster,
    full_replay,
    measure,
    read_to_the_end,
    result_text,
    start_readers,
)

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("stall_s", [1.5 * LEASE_S, 2 * LEASE_S])
def test_a_redis_stall_is_not_a_worker_death(healthy: FaultCluster, stall_s: float) -> None:
    process = healthy.redis.process
    assert process is not None
    with httpx.Client(timeout=30) as client:
        readings, threads = start_readers(
            client, healthy.urls, "fault-slow", 10, "through a stall", max_tokens=60
        )
        process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(stall_s)
        finally:
            process.send_signal(signal.SIGCONT)
        for t in threads:
            t.join(30)
        assert all(not t.is_alive() for t in threads), "a reader hung after the stall"
        for r in readings:
            assert read_to_the_end(client, r, healthy.urls)
            assert r.error() is None, r.error()  # not worker_lost, nor anything else
            assert r.text() == result_text(healthy.urls[0], r.stream_id)
            assert full_replay(client, healthy.urls[1], r.stream_id).events == r.events
        measure(f"redis frozen {stall_s:.1f}s (lease {LEASE_S}s): 10 of 10 streams went on")
