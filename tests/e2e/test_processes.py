"""`spool api --processes N` and `spool worker --processes N`: one command, N processes
that share the port and the queue, supervised, and stopped together."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import orjson
import psutil
import pytest
import redis

from shared import keys
from shared.redis.embedded import EmbeddedRedis
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def group(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[tuple[SpoolProcess, SpoolProcess, str]]:
    workdir: Path = tmp_path_factory.mktemp("processes")
    models = {"slow": {"provider": "demo", "tokens_per_second": 10, "max_output_tokens": 30}}
    config = write_config(
        workdir / "spool.yaml", models, auth_enabled=False, keepalive_interval_s=0.5
    )
    url = redis_server.url.replace("/0", "/5")  # a database no other suite uses
    worker = start_worker(url, config, workdir, processes=2)
    api = start_api(url, config, workdir, processes=2)
    wait_ready(api.url)
    # One API process answering is not both: wait until each listens on the port.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(listening(api)) < 2:
        time.sleep(0.1)
    yield api, worker, url
    api.stop()
    worker.stop()


def children(proc: SpoolProcess) -> list[psutil.Process]:
    return psutil.Process(proc.process.pid).children()


def listening(api: SpoolProcess) -> list[psutil.Process]:
    return [
        child
        for child in children(api)
        if any(
            c.status == psutil.CONN_LISTEN and c.laddr.port == api.port
            for c in child.net_connections()
        )
    ]


def stream(url: str) -> tuple[str, str]:
    body = {"model": "slow", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    text = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=30) as resp:
        stream_id = resp.headers["x-spool-stream-id"]
        for line in resp.iter_lines():
            if line.startswith("data: {"):
                delta = orjson.loads(line[6:])["choices"]
                if delta and delta[0]["delta"].get("content"):
                    text.append(delta[0]["delta"]["content"])
    return stream_id, "".join(text)


def test_n_processes_share_the_port_and_the_queue(
    group: tuple[SpoolProcess, SpoolProcess, str],
) -> None:
    api, worker, redis_url = group
    assert len(children(api)) == 2 and len(children(worker)) == 2
    client = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 10
    while client.zcard(keys.WORKERS_KEY) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.zcard(keys.WORKERS_KEY) == 2  # both workers heartbeat

    served_by: set[int] = set()

    def one() -> tuple[str, str]:
        return stream(api.url)

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one) for _ in range(16)]
        deadline = time.monotonic() + 2.5  # the 16 streams last 3 s: all open at once
        while len(served_by) < 2 and time.monotonic() < deadline:
            for child in children(api):
                connections = child.net_connections()
                if any(c.laddr and c.laddr.port == api.port and c.raddr for c in connections):
                    served_by.add(child.pid)
            time.sleep(0.1)
        results = [f.result() for f in futures]
    # The kernel spread the connections over both API processes.
    assert len(served_by) == 2
    for stream_id, text in results:
        result = httpx.get(f"{api.url}/v1/streams/{stream_id}/result").json()
        assert result["status"] == "completed"
        assert result["output"]["choices"][0]["message"]["content"] == text != ""


def test_a_process_that_dies_is_restarted_and_sigterm_stops_them_all(
    group: tuple[SpoolProcess, SpoolProcess, str],
) -> None:
    api, worker, _ = group
    victim = children(api)[0]
    victim.kill()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        alive = [c for c in children(api) if c.pid != victim.pid and c.is_running()]
        if len(alive) == 2:
            break
        time.sleep(0.1)
    assert len(alive) == 2, "the supervisor did not replace the killed process"
    wait_ready(api.url)
    assert stream(api.url)[1]

    everyone = [*children(api), *children(worker)]
    api.process.send_signal(signal.SIGTERM)
    worker.process.send_signal(signal.SIGTERM)
    assert api.process.wait(20) == 0 and worker.process.wait(40) == 0
    _, alive = psutil.wait_procs(everyone, timeout=5)
    assert not alive
