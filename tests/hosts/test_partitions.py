"""Partitions between hosts: a worker cut off from the network, an API replica cut off
from Redis, the Redis primary killed, and 200 clients dropping at random through the load
balancer. Real processes on separate network namespaces (see conftest.py)."""

from __future__ import annotations

import random
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.faults.conftest import (
    Reading,
    chat,
    finish_after_failover,
    full_replay,
    measure,
    read_some,
    read_to_the_end,
    result_text,
    start_readers,
)
from tests.hosts.conftest import LEASE_S, Deployment


def assert_exact(client: httpx.Client, url: str, reading: Reading) -> None:
    ids = [i for i, _ in reading.events]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    assert full_replay(client, url, reading.stream_id).events == reading.events
    assert reading.text() == result_text(url, reading.stream_id)


def test_a_worker_cut_off_mid_stream_is_fenced(healthy: Deployment) -> None:
    d = healthy
    with httpx.Client(timeout=30) as client:
        readings, threads = start_readers(client, d.lb_url, "slow", 8, "cut-off worker")
        where = {r.stream_id: d.worker_named(r.stream_id) for r in readings}
        victim = where[readings[0].stream_id]
        d.hosts[victim].cut()
        cut_at = time.monotonic()
        for t in threads:
            t.join(LEASE_S * 3 + 20)
        assert all(not t.is_alive() for t in threads), "a reader hung"
        ended_after = time.monotonic() - cut_at

        lost = [r for r in readings if where[r.stream_id] == victim]
        kept = [r for r in readings if where[r.stream_id] != victim]
        for r in lost:
            # Exactly as with SIGKILL: its streams end visibly, partial output kept.
            assert r.finished and r.error() is not None, r.events[-3:]
            assert r.error()["code"] == "worker_lost"  # type: ignore[index]
        for r in kept:
            assert r.finished and r.error() is None
            assert_exact(client, d.lb_url, r)
        before = {r.stream_id: full_replay(client, d.lb_url, r.stream_id).events for r in lost}

        # The link comes back: the stale worker finds its attempts fenced and writes nothing.
        d.hosts[victim].restore()
        time.sleep(LEASE_S + 2)
        for r in lost:
            assert full_replay(client, d.lb_url, r.stream_id).events == before[r.stream_id]
        assert d.workers[victim].process.poll() is None
        assert "fenced out" in d.workers[victim].log()
        measure(
            f"worker {victim} cut off: {len(lost)} streams ended worker_lost within "
            f"{ended_after:.1f}s (lease {LEASE_S}s); nothing written after its link came back"
        )
        fresh = Reading()
        read_some(client, fresh, d.lb_url, body=chat("quick", "after the cut"))
        assert fresh.finished and fresh.error() is None


def test_an_api_replica_cut_off_from_redis(healthy: Deployment) -> None:
    d = healthy
    with httpx.Client(timeout=30) as client:
        # Clients that the load balancer sent to api1.
        readings, threads = start_readers(client, d.api_url("api1"), "slow", 6, "cut-off api")
        d.hosts["api1"].isolate_from(*d.redis_hosts())
        cut_at = time.monotonic()
        for t in threads:
            t.join(40)
        assert all(not t.is_alive() for t in threads), "a reader hung on a replica without Redis"
        errors_after = time.monotonic() - cut_at
        for r in readings:
            # Each got an error event it can act on, then resumed through the load balancer
            # (which sends it to whichever replica answers).
            error = r.error()
            assert error is not None and error["code"] == "redis_unavailable", r.events[-3:]
            assert read_to_the_end(client, r, [d.lb_url])
            assert r.error() is None
            assert_exact(client, d.api_url("api2"), r)
        measure(
            f"api1 cut off from Redis: its {len(readings)} clients had an error event within "
            f"{errors_after:.1f}s and resumed exactly through nginx"
        )
        d.hosts["api1"].reconnect()
        d.wait_all_ready()


def test_redis_primary_killed_under_load(healthy: Deployment) -> None:
    d = healthy
    with httpx.Client(timeout=30) as client:
        readings, threads = start_readers(client, d.lb_url, "slow", 10, "failover")
        old = d.redis.primary()
        d.redis.wait_replicated()
        old.kill()
        killed_at = time.monotonic()
        for t in threads:
            t.join(30)
        assert all(not t.is_alive() for t in threads), "a reader hung on a dead primary"
        new = d.redis.wait_failover(old)
        failover_s = time.monotonic() - killed_at
        d.wait_all_ready()
        continued, lost = finish_after_failover(client, readings, [d.lb_url])
        measure(
            f"primary on {old.ip} killed, {new.ip} promoted in {failover_s:.1f}s: "
            f"{continued} streams continued exactly, {lost} ended with events_lost"
        )
        # The old primary comes back as a replica of the new one, for the next test.
        old.args = ["--replicaof", new.ip, str(new.port)]
        old.start()
        d.redis.wait_demoted(old)


def test_200_clients_dropping_at_random_through_the_load_balancer(healthy: Deployment) -> None:
    d = healthy
    rng = random.Random(20261129)
    plans = [[rng.randint(0, 20) for _ in range(rng.randint(1, 3))] for _ in range(200)]

    def client_run(n: int) -> Reading:
        reading = Reading()
        with httpx.Client(timeout=30) as client:
            model = "mock" if n % 4 == 0 else "quick"
            body = chat(model, f"chaos client {n}", max_tokens=30)
            read_some(client, reading, d.lb_url, body=body, stop_after=plans[n][0] or None)
            for stop_after in plans[n][1:]:
                if reading.finished:
                    break
                read_some(client, reading, d.lb_url, stop_after=stop_after or None)
            assert read_to_the_end(client, reading, [d.lb_url])
            assert reading.error() is None
            assert_exact(client, d.lb_url, reading)
        return reading

    with ThreadPoolExecutor(max_workers=40) as pool:
        readings = list(pool.map(client_run, range(200)))
    drops = sum(r.drops for r in readings)
    events = sum(len(r.events) for r in readings)
    measure(f"200 clients through nginx, {drops} drops, {events} events: 0 lost, 0 duplicated")
    assert drops >= 150
