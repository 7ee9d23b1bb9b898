"""Upstreams that fail, stall or talk nonsense: retried before the first token, a visible
error after it, never a hang or a clean-looking end."""

from __future__ import annotations

import statistics
import threading
import time

import httpx
import pytest

from tests.faults.conftest import FaultCluster, Reading, chat, measure, read_some, result

pytestmark = pytest.mark.faults


def run(cluster: FaultCluster, model: str, prompt: str) -> tuple[Reading, float]:
    reading = Reading()
    started = time.monotonic()
    with httpx.Client(timeout=60) as client:
        read_some(client, reading, cluster.urls[0], body=chat(model, prompt))
    assert reading.finished, "every stream ends with [DONE]"
    return reading, time.monotonic() - started


def test_429_with_retry_after_is_retried_after_the_hint(healthy: FaultCluster) -> None:
    reading, took = run(healthy, "mock-429-then-ok", "rate limited once")
    assert reading.error() is None and reading.text() == "Hello from the mock upstream."
    assert len(healthy.upstream.requests_for("429-then-ok", "rate limited once")) == 2
    assert took >= 1.0, "Retry-After: 1 was honoured"


def test_503_then_success_is_retried(healthy: FaultCluster) -> None:
    reading, _ = run(healthy, "mock-503-then-ok", "overloaded once")
    assert reading.error() is None and reading.text() == "Hello from the mock upstream."
    assert len(healthy.upstream.requests_for("503-then-ok", "overloaded once")) == 2


def test_persistent_429_ends_with_the_upstream_status_and_hint(healthy: FaultCluster) -> None:
    reading, _ = run(healthy, "mock-always-429", "always limited")
    error = reading.error()
    assert error is not None and error["code"] == "upstream_error"
    assert len(healthy.upstream.requests_for("always-429", "always limited")) == 3
    stored = result(healthy.urls[1], reading.stream_id)["error"]
    assert stored["status"] == 429 and stored["retry_after"] == 1  # type: ignore[index]


def test_connect_refused_is_retried_then_reported(healthy: FaultCluster) -> None:
    reading, _ = run(healthy, "mock-refused", "nobody listens")
    error = reading.error()
    assert error is not None and error["code"] == "upstream_connect_error"


def test_stall_after_the_first_token_ends_with_a_timeout(healthy: FaultCluster) -> None:
    reading, took = run(healthy, "mock-stall", "stall")
    assert reading.text() == "before the stall"
    error = reading.error()
    assert error is not None and error["code"] == "upstream_timeout"
    assert took < 5, "idle_timeout_s is 1"
    assert len(healthy.upstream.requests_for("stall", "stall")) == 1, "no retry after output"
    assert result(healthy.urls[0], reading.stream_id)["status"] == "failed"


def test_garbage_events_are_skipped(healthy: FaultCluster) -> None:
    reading, _ = run(healthy, "mock-garbage", "garbage")
    assert reading.error() is None and reading.text() == "before after"


def test_untrustworthy_streams_end_with_an_error(healthy: FaultCluster) -> None:
    for model, prompt in (("mock-endless-line", "endless"), ("mock-many-malformed", "noise")):
        reading, _ = run(healthy, model, prompt)
        error = reading.error()
        assert error is not None and error["code"] == "upstream_malformed", model
    for api in healthy.apis:
        assert api.process.poll() is None
    for worker in healthy.workers:
        assert worker.process.poll() is None


def test_cancel_closes_the_upstream_request_fast(healthy: FaultCluster) -> None:
    """Measured on every run: from the cancel request to the upstream socket closing."""
    latencies = []
    with httpx.Client(timeout=30) as client:
        for n in range(10):
            reading = Reading()
            prompt = f"cancel latency {n}"
            thread = threading.Thread(
                target=read_some,
                args=(client, reading, healthy.urls[n % 2]),
                kwargs={"body": chat("mock-slow", prompt)},
            )
            thread.start()
            while len(reading.events) < 3:
                time.sleep(0.005)
            seen = healthy.upstream.requests_for("slow", prompt)[-1]
            asked = time.monotonic()
            response = client.post(
                f"{healthy.urls[(n + 1) % 2]}/v1/streams/{reading.stream_id}/cancel"
            )
            assert response.status_code == 200
            assert seen.closed_early.wait(5), "the upstream request was never closed"
            assert seen.closed_early_at is not None
            latencies.append((seen.closed_early_at - asked) * 1000)
            thread.join(10)
            assert reading.finished
    measure(
        f"cancel → upstream closed: p50 {statistics.median(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms over {len(latencies)} runs"
    )
    assert max(latencies) < 1000
