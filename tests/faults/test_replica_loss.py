"""Clients that drop, replicas that die: resume is exact, on any replica."""

from __future__ import annotations

import random
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.faults.conftest import (
    FaultCluster,
    Reading,
    chat,
    full_replay,
    measure,
    read_some,
    result_text,
)

pytestmark = pytest.mark.faults


def assert_exact(client: httpx.Client, cluster: FaultCluster, reading: Reading) -> None:
    ids = [i for i, _ in reading.events]
    assert len(ids) == len(set(ids)), "an event was delivered twice"
    reference = full_replay(client, cluster.any_url(), reading.stream_id)
    assert reading.events == reference.events, "resumed events differ from the stream"
    assert reading.text() == result_text(cluster.any_url(), reading.stream_id)


def test_200_clients_dropping_at_random_points(healthy: FaultCluster) -> None:
    rng = random.Random(20261121)
    plans = [[rng.randint(0, 20) for _ in range(rng.randint(1, 3))] for _ in range(200)]

    def client_run(n: int) -> Reading:
        reading = Reading()
        with httpx.Client(timeout=30) as client:
            body = chat("fault-demo", f"chaos client {n}")
            read_some(client, reading, healthy.any_url(), body=body, stop_after=plans[n][0] or None)
            for stop_after in plans[n][1:]:
                if reading.finished:
                    break
                read_some(client, reading, healthy.any_url(), stop_after=stop_after or None)
            while not reading.finished:
                read_some(client, reading, healthy.any_url())
            assert_exact(client, healthy, reading)
        return reading

    with ThreadPoolExecutor(max_workers=40) as pool:
        readings = list(pool.map(client_run, range(200)))
    drops = sum(r.drops for r in readings)
    measure(f"200 clients, {drops} drops, {sum(len(r.events) for r in readings)} events: exact")
    assert drops >= 150  # the plan really did cut most clients off at least once


def test_sigkill_of_an_api_process_under_50_open_streams(healthy: FaultCluster) -> None:
    victim = healthy.add_api()
    survivors = [api.url for api in healthy.apis if api is not victim]
    started = threading.Barrier(51)

    def client_run(n: int) -> Reading:
        reading = Reading()
        with httpx.Client(timeout=30) as client:
            # Six seconds long: still going on the victim however slowly the other 49
            # clients get going on a loaded machine.
            body = chat("fault-long", f"replica loss {n}", max_tokens=120)
            first = threading.Thread(target=read_some, args=(client, reading, victim.url),
                                     kwargs={"body": body, "stop_after": None})  # fmt: skip
            first.start()
            while len(reading.events) < 3 and first.is_alive():
                time.sleep(0.01)
            started.wait(timeout=30)
            first.join()
            while not reading.finished:
                read_some(client, reading, random.choice(survivors))
            assert_exact(client, healthy, reading)
        return reading

    with ThreadPoolExecutor(max_workers=50) as pool:
        futures = [pool.submit(client_run, n) for n in range(50)]
        started.wait(timeout=30)  # every client is mid-stream on the victim
        healthy.kill(victim, signal.SIGKILL)
        readings = [f.result(timeout=60) for f in futures]
    assert all(r.drops >= 1 for r in readings), "every client lost its first connection"
    assert all(r.finished for r in readings)


def test_sigterm_of_an_api_process_ends_streams_cleanly(healthy: FaultCluster) -> None:
    victim = healthy.add_api()
    reading = Reading()
    with httpx.Client(timeout=30) as client:
        body = chat("fault-slow", "graceful api", max_tokens=40)
        thread = threading.Thread(target=read_some, args=(client, reading, victim.url),
                                  kwargs={"body": body})  # fmt: skip
        thread.start()
        while len(reading.events) < 3:
            time.sleep(0.01)
        asked = time.monotonic()
        victim.process.send_signal(signal.SIGTERM)
        thread.join(10)
        ended_after = time.monotonic() - asked
        assert not thread.is_alive()
        assert not reading.finished and reading.drops == 1
        assert ended_after < 2, f"the SSE response took {ended_after:.2f}s to end"
        # uvicorn exits by re-raising the signal once its graceful shutdown is done.
        assert victim.process.wait(10) in (0, -signal.SIGTERM)
        healthy.apis.remove(victim)
        while not reading.finished:
            read_some(client, reading, healthy.any_url())
        assert_exact(client, healthy, reading)
