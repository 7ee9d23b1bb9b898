"""Redis frozen (SIGSTOP) under load, for up to twice the lease: no healthy stream is taken
for a dead worker's. Leases run out by Redis' clock while nobody can renew them; the
reapers see the gap in their own stamps and give the workers a lease period to renew.
Requests that arrive during a stall answer 503 within `redis_request_timeout_s`, and the
API's connections outlive the stall."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from shared.settings import Settings
from tests.faults.conftest import (
    FAULT_SETTINGS,
    LEASE_S,
    FaultCluster,
    Reading,
    chat,
    full_replay,
    measure,
    read_some,
    read_to_the_end,
    result_text,
    running_cluster,
    start_readers,
)
from tests.mock_upstream import MockUpstream
from tests.processes import wait_ready, write_config

pytestmark = pytest.mark.faults


def streams_through_a_stall(
    cluster: FaultCluster, model: str, stall_s: float, max_tokens: int = 50
) -> None:
    """10 streams read through Redis frozen for `stall_s`: every one goes on to its end,
    exactly, with no error."""
    process = cluster.redis.process
    assert process is not None
    with httpx.Client(timeout=30) as client:
        readings, threads = start_readers(
            client, cluster.urls, model, 10, "through a stall", max_tokens=max_tokens
        )
        process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(stall_s)
        finally:
            process.send_signal(signal.SIGCONT)
        for t in threads:
            t.join(60)
        assert all(not t.is_alive() for t in threads), "a reader hung after the stall"
        for r in readings:
            assert read_to_the_end(client, r, cluster.urls)
            assert r.error() is None, r.error()  # not worker_lost, nor anything else
            assert r.text() == result_text(cluster.urls[0], r.stream_id)
            assert full_replay(client, cluster.urls[1], r.stream_id).events == r.events


@pytest.mark.parametrize("stall_s", [1.5 * LEASE_S, 2 * LEASE_S])
def test_a_redis_stall_is_not_a_worker_death(healthy: FaultCluster, stall_s: float) -> None:
    streams_through_a_stall(healthy, "fault-slow", stall_s, max_tokens=60)
    measure(f"redis frozen {stall_s:.1f}s (lease {LEASE_S}s): 10 of 10 streams went on")


@pytest.fixture(scope="module")
def default_lease(
    tmp_path_factory: pytest.TempPathFactory, mock_upstream: MockUpstream
) -> Iterator[FaultCluster]:
    """Two APIs and two workers with the default lease (10 s), on a Redis of their own."""
    workdir = tmp_path_factory.mktemp("default-lease")
    models = {"steady": {"provider": "demo", "tokens_per_second": 5, "max_output_tokens": 80}}
    settings = {**FAULT_SETTINGS, "lease_s": Settings().lease_s}
    config = write_config(workdir / "spool.yaml", models, **settings)
    with running_cluster(workdir, config, mock_upstream, appendonly=False) as cluster:
        yield cluster


@pytest.mark.parametrize("stall_s", [8.0, 12.0])
def test_redis_frozen_for_8_and_12_s_at_the_default_lease_ends_no_stream(
    default_lease: FaultCluster, stall_s: float
) -> None:
    streams_through_a_stall(default_lease, "steady", stall_s)
    measure(f"redis frozen {stall_s:.0f}s (lease 10s): 10 of 10 streams went on")


REQUEST_BOUND_S = 3.0  # the default redis_request_timeout_s
STALL_S = 6.0


def mux_ids(cluster: FaultCluster) -> dict[str, str]:
    """Each API process's multiplexed connection to Redis, by its client name."""
    names = {f"spool-api-{api.process.pid}-mux" for api in cluster.apis}
    clients = cluster.redis_client().client_list()
    return {c["name"]: c["id"] for c in clients if c["name"] in names}


def test_requests_during_a_redis_stall_get_503_within_the_bound(healthy: FaultCluster) -> None:
    process = healthy.redis.process
    assert process is not None
    with httpx.Client(timeout=30) as client:
        done = Reading()
        read_some(client, done, healthy.urls[0], body=chat("fault-demo", "before the stall"))
        assert done.finished
        before = mux_ids(healthy)
        assert len(before) == len(healthy.apis)
        requests = [
            ("POST", "/v1/chat/completions", chat("fault-demo", "during the stall")),
            ("POST", "/v1/chat/completions", {**chat("fault-demo", "not streamed"), "stream": False}),
            ("GET", f"/v1/streams/{done.stream_id}/result", None),
            ("GET", f"/v1/streams/{done.stream_id}", None),
            ("POST", "/v1/messages", {"model": "fault-demo", "max_tokens": 10, "stream": True,
                                      "messages": [{"role": "user", "content": "stalled"}]}),
        ]  # fmt: skip
        outcomes: list[tuple[int, float, dict[str, object], str | None]] = []

        def ask(method: str, path: str, body: dict[str, object] | None, url: str) -> None:
            started = time.monotonic()
            response = client.request(method, f"{url}{path}", json=body)
            took = time.monotonic() - started
            outcomes.append(
                (response.status_code, took, response.json(), response.headers.get("retry-after"))
            )

        process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # Requests arriving at the start of the stall, and after the first have timed out.
            for wave in range(2):
                threads = [
                    threading.Thread(target=ask, args=(*request, url))
                    for request in requests
                    for url in healthy.urls
                ]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(REQUEST_BOUND_S + 5)
                assert len(outcomes) == (wave + 1) * len(threads), "a request hung"
            time.sleep(max(0.0, frozen_at + STALL_S - time.monotonic()))
        finally:
            process.send_signal(signal.SIGCONT)
        thawed_at = time.monotonic()
        for status, took, body, retry_after in outcomes:
            assert status == 503, body
            assert took < REQUEST_BOUND_S + 1, f"answered after {took:.2f}s"
            assert retry_after is not None
            error = body["error"]
            assert isinstance(error, dict)
            if body.get("type") == "error":  # Anthropic's shape
                assert error["type"] == "overloaded_error", body
            else:
                assert error["code"] == "redis_unavailable", body
        slowest = max(took for _, took, _, _ in outcomes)

        # Everything works again at once, on the same connections: no reconnect storm.
        wait_ready(healthy.urls[1], timeout_s=2)
        recovered_s = time.monotonic() - thawed_at
        after = Reading()
        read_some(client, after, healthy.urls[1], body=chat("fault-demo", "after the stall"))
        assert after.finished and after.error() is None
        assert after.text() == result_text(healthy.urls[0], after.stream_id) != ""
        assert mux_ids(healthy) == before
    measure(f"redis frozen {STALL_S:.0f}s: {len(outcomes)} requests answered 503 in at most "
            f"{slowest:.2f}s; ready {recovered_s:.2f}s after it thawed")  # fmt: skip
