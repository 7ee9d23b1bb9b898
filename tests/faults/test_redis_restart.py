"""Redis stopped and started under load: 503s while down, readers end with an error event,
everything recovers by itself, and AOF keeps what was written."""

from __future__ import annotations

import threading
import time

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
from tests.processes import wait_ready

pytestmark = pytest.mark.faults


def test_redis_restart_under_load(healthy: FaultCluster) -> None:
    with httpx.Client(timeout=30) as client:
        before = Reading()
        read_some(client, before, healthy.urls[0], body=chat("fault-demo", "written before"))
        assert before.finished

        readings = [Reading() for _ in range(8)]
        threads = [
            threading.Thread(
                target=read_some,
                args=(client, r, healthy.urls[n % 2]),
                kwargs={"body": chat("fault-slow", f"through the outage {n}", max_tokens=50)},
            )
            for n, r in enumerate(readings)
        ]
        for t in threads:
            t.start()
        while any(len(r.events) < 3 for r in readings):
            time.sleep(0.01)

        healthy.redis.stop()  # SIGTERM: Redis flushes its AOF and exits
        down_at = time.monotonic()
        for t in threads:
            t.join(10)
        readers_ended = time.monotonic() - down_at
        assert all(not t.is_alive() for t in threads), "a reader hung on a dead Redis"
        for r in readings:
            # The tail said why it ended, in the stream's format, then closed the stream.
            error = r.error()
            assert error is not None and error["code"] == "redis_unavailable"
            assert r.events[-1][1] == "[DONE]"
            # Those two frames carry no id of their own: resuming from the last id goes on
            # right after the last real event.
            r.events = r.events[:-2]
            r.finished = False

        response = client.post(f"{healthy.urls[0]}/v1/chat/completions",
                               json=chat("fault-demo", "while down"))  # fmt: skip
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "redis_unavailable"
        assert client.get(f"{healthy.urls[1]}/readyz").status_code == 503

        # Stay down long enough that workers must hold their writes through the outage.
        time.sleep(max(0.0, 2.0 - (time.monotonic() - down_at)))
        healthy.redis.start()  # same port, same data directory
        down_for = time.monotonic() - down_at
        wait_ready(healthy.urls[0], timeout_s=20)
        measure(
            f"readers ended {readers_ended:.2f}s after Redis stopped; it was down {down_for:.2f}s"
        )

        # Streams written before the restart are intact.
        replay = full_replay(client, healthy.urls[1], before.stream_id)
        assert replay.events == before.events

        # Streams that were running carry on: the workers rode out the outage.
        for r in readings:
            while not r.finished:
                read_some(client, r, healthy.any_url())
            assert r.error() is None
            assert r.text() == result_text(healthy.urls[0], r.stream_id)
            assert full_replay(client, healthy.urls[0], r.stream_id).events == r.events

        fresh = Reading()
        read_some(client, fresh, healthy.urls[1], body=chat("fault-demo", "after the restart"))
        assert fresh.finished and fresh.error() is None
    for proc in [*healthy.apis, *healthy.workers]:
        assert proc.process.poll() is None, "every process recovered without a restart"
