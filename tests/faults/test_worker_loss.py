"""Workers that die or stall: re-queued when nothing was emitted, `worker_lost` when
something was, and a stale worker can never write again."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.faults.conftest import (
    LEASE_S,
    FaultCluster,
    Reading,
    chat,
    full_replay,
    measure,
    read_some,
    result,
    result_text,
)

pytestmark = pytest.mark.faults


def start_stream(cluster: FaultCluster, client: httpx.Client, body: dict[str, object],
                 reading: Reading) -> threading.Thread:  # fmt: skip
    thread = threading.Thread(target=read_some, args=(client, reading, cluster.urls[0]),
                              kwargs={"body": body})  # fmt: skip
    thread.start()
    while not reading.stream_id:
        time.sleep(0.005)
    return thread


def test_worker_killed_before_the_first_token_is_rerun(healthy: FaultCluster) -> None:
    body = chat("fault-late", "killed before the first token")
    with httpx.Client(timeout=60) as client:
        reading = Reading()
        thread = start_stream(healthy, client, body, reading)
        victim = healthy.worker_running(reading.stream_id)
        killed_at = time.monotonic()
        healthy.kill(victim)
        thread.join(30)
        assert reading.finished
        took = time.monotonic() - killed_at
        # The same request on a healthy worker gives the same (deterministic) text.
        fresh = Reading()
        read_some(client, fresh, healthy.urls[1], body=body)
        assert reading.text() == fresh.text() != ""
        starts = [d for _, d in reading.events if '"role":"assistant"' in d]
        assert len(starts) == 1, "one attempt's output only"
        assert result(healthy.urls[1], reading.stream_id)["status"] == "completed"
        measure(f"re-queued and completed {took:.2f}s after the kill (lease {LEASE_S}s)")


def test_worker_killed_after_the_first_token_ends_with_worker_lost(healthy: FaultCluster) -> None:
    with httpx.Client(timeout=60) as client:
        reading = Reading()
        thread = start_stream(healthy, client, chat("fault-slow", "killed mid-stream"), reading)
        while len(reading.events) < 5:
            time.sleep(0.01)
        victim = healthy.worker_running(reading.stream_id)
        killed_at = time.monotonic()
        healthy.kill(victim)
        thread.join(LEASE_S + 10)
        ended_after = time.monotonic() - killed_at
        assert reading.finished, "the stream must end, not hang"
        assert ended_after < LEASE_S + 5, f"ended {ended_after:.2f}s after the kill"
        error = reading.error()
        assert error is not None and error["code"] == "worker_lost"
        done = result(healthy.urls[1], reading.stream_id)
        assert done["status"] == "failed"
        assert done["error"]["code"] == "worker_lost"  # type: ignore[index]
        assert result_text(healthy.urls[1], reading.stream_id) == reading.text() != ""
        measure(f"worker_lost after {ended_after:.2f}s (lease {LEASE_S}s)")


def test_a_stalled_worker_that_wakes_up_cannot_write(healthy: FaultCluster) -> None:
    with httpx.Client(timeout=60) as client:
        reading = Reading()
        thread = start_stream(healthy, client, chat("fault-slow", "stale worker"), reading)
        while len(reading.events) < 5:
            time.sleep(0.01)
        stale = healthy.worker_running(reading.stream_id)
        stale.process.send_signal(signal.SIGSTOP)
        try:
            thread.join(LEASE_S + 10)
            assert reading.finished and reading.error()["code"] == "worker_lost"  # type: ignore[index]
        finally:
            stale.process.send_signal(signal.SIGCONT)
        time.sleep(1.5)  # the stale worker runs on and tries to append its next tokens
        after = full_replay(client, healthy.urls[1], reading.stream_id)
        assert after.events == reading.events, "nothing was written after the terminal event"
        assert "fenced out" in stale.log()
        healthy.kill(stale, signal.SIGTERM)


def test_worker_sigterm_finishes_running_jobs(healthy: FaultCluster) -> None:
    with httpx.Client(timeout=60) as client:
        reading = Reading()
        body = chat("fault-slow", "graceful worker", max_tokens=30)
        thread = start_stream(healthy, client, body, reading)
        while len(reading.events) < 3:
            time.sleep(0.01)
        worker = healthy.worker_running(reading.stream_id)
        worker.process.send_signal(signal.SIGTERM)
        thread.join(20)
        assert reading.finished and reading.error() is None
        assert worker.process.wait(10) == 0
        healthy.workers.remove(worker)
        assert result(healthy.urls[0], reading.stream_id)["status"] == "completed"


def test_a_job_no_worker_picks_up_still_ends(healthy: FaultCluster) -> None:
    """With every worker gone, the API replicas' reaper ends queued jobs after
    queue_timeout_s instead of leaving readers waiting forever."""
    client_redis = healthy.redis_client()
    for worker in list(healthy.workers):
        healthy.kill(worker, signal.SIGTERM)
    with httpx.Client(timeout=60) as client:
        reading = Reading()
        thread = start_stream(healthy, client, chat("fault-demo", "nobody home"), reading)
        # Age the job past the queue timeout rather than waiting the default 10 minutes.
        client_redis.hset(f"spool:{{{reading.stream_id}}}:job", "queued_at", 0)
        client_redis.zadd("spool:queued", {reading.stream_id: 0})
        thread.join(15)
        assert reading.finished
        assert reading.error()["code"] == "queue_timeout"  # type: ignore[index]
