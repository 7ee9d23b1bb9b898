"""What happens to a generation when its readers go away, or read slowly."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.faults.conftest import (
    FAULT_SETTINGS,
    FaultCluster,
    Reading,
    chat,
    fault_models,
    full_replay,
    measure,
    read_some,
    result,
)
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config

pytestmark = pytest.mark.faults


def wait_for_status(url: str, stream_id: str, wanted: str, timeout_s: float) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if result(url, stream_id)["status"] == wanted:
            return time.monotonic() - started
        time.sleep(0.05)
    raise AssertionError(f"stream {stream_id} never became {wanted}")


def test_disconnect_continues_by_default(healthy: FaultCluster) -> None:
    with httpx.Client(timeout=30) as client:
        reading = Reading()
        body = chat("fault-slow", "keep going", max_tokens=20)
        read_some(client, reading, healthy.urls[0], body=body, stop_after=2)
        wait_for_status(healthy.urls[1], reading.stream_id, "completed", 10)


def test_disconnect_cancels_when_asked(healthy: FaultCluster) -> None:
    with httpx.Client(timeout=30, headers={"X-Spool-On-Disconnect": "cancel"}) as client:
        reading = Reading()
        read_some(client, reading, healthy.urls[0], body=chat("fault-slow", "stop if I go"),
                  stop_after=2)  # fmt: skip
    took = wait_for_status(healthy.urls[1], reading.stream_id, "cancelled", 5)
    measure(f"disconnect → cancelled in {took * 1000:.0f} ms")
    output = result(healthy.urls[1], reading.stream_id)["output"]
    assert output["choices"][0]["finish_reason"] == "cancelled"  # type: ignore[index]


def test_an_invalid_disconnect_policy_is_a_clear_error(healthy: FaultCluster) -> None:
    response = httpx.post(f"{healthy.urls[0]}/v1/chat/completions",
                          json=chat("fault-demo", "x"), headers={"X-Spool-On-Disconnect": "explode"})  # fmt: skip
    assert response.status_code == 422
    assert "x-spool-on-disconnect" in response.json()["error"]["message"].lower()


def test_a_slow_reader_never_slows_the_worker(healthy: FaultCluster) -> None:
    with httpx.Client(timeout=60) as client:
        body = chat("fault-burst", "slow reader")
        with client.stream("POST", f"{healthy.urls[0]}/v1/chat/completions", json=body) as resp:
            stream_id = resp.headers["x-spool-stream-id"]
            chunks = resp.iter_raw(1024)
            next(chunks)  # read a little, then stop reading
            took = wait_for_status(healthy.urls[1], stream_id, "completed", 20)
            rest = b"".join(chunks)
        assert rest.rstrip().endswith(b"data: [DONE]\nid: " + rest.rstrip().rsplit(b"id: ", 1)[1])
        replay = full_replay(client, healthy.urls[1], stream_id)
        assert len(replay.events) == 3000 + 3  # role, tokens, finish, [DONE]
        measure(f"3000 tokens generated in {took:.2f}s while the reader was paused")


@pytest.fixture(scope="module")
def abandoning(faults: FaultCluster) -> Iterator[tuple[SpoolProcess, SpoolProcess]]:
    """One API and one worker, on their own Redis database, that cancel streams nobody
    has read for two seconds."""
    config = write_config(
        faults.workdir / "abandon.yaml",
        {
            **fault_models(faults.upstream),
            # Six seconds long: three times the grace.
            "fault-crawl": {"provider": "demo", "tokens_per_second": 10, "max_output_tokens": 60},
        },
        **{**FAULT_SETTINGS, "abandon_grace_s": 2},
    )
    url = faults.redis.url.replace("/0", "/2")
    worker = start_worker(url, config, faults.workdir)
    api = start_api(url, config, faults.workdir)
    wait_ready(api.url)
    yield api, worker
    api.stop()
    worker.stop()


def test_abandoned_streams_are_cancelled_after_the_grace(
    abandoning: tuple[SpoolProcess, SpoolProcess],
) -> None:
    api, _ = abandoning
    with httpx.Client(timeout=30) as client:
        left = Reading()
        read_some(client, left, api.url, body=chat("fault-slow", "abandoned"), stop_after=2)
        took = wait_for_status(api.url, left.stream_id, "cancelled", 10)
        assert 1.5 < took < 6, f"cancelled {took:.2f}s after the reader left"

        # A stream that is being read for longer than the grace is left alone.
        watched = Reading()
        read_some(client, watched, api.url, body=chat("fault-slow", "watched", max_tokens=60))
        assert watched.finished and watched.error() is None
        assert result(api.url, watched.stream_id)["status"] == "completed"


def test_a_background_response_nobody_reads_is_not_abandoned(
    abandoning: tuple[SpoolProcess, SpoolProcess],
) -> None:
    api, _ = abandoning
    body = {"model": "fault-crawl", "input": "run on your own", "background": True}
    created = httpx.post(f"{api.url}/v1/responses", json=body, timeout=10).json()
    assert created["status"] == "queued"
    started = time.monotonic()
    while time.monotonic() - started < 20:
        response = httpx.get(f"{api.url}/v1/responses/{created['id']}", timeout=10).json()
        if response["status"] not in ("queued", "in_progress"):
            break
        time.sleep(0.2)
    assert response["status"] == "completed", response
    assert response["usage"]["output_tokens"] == 60
    assert time.monotonic() - started > 4  # it ran well past the grace, unread
