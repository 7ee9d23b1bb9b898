"""Storage a client can make Spool keep: bounded per request, per key and per deployment,
with Redis' own limit met by refusing new jobs, not by failing running ones."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from shared.redis.embedded import EmbeddedRedis
from tests.adversarial.conftest import HOSTILE_SETTINGS
from tests.conftest import UPSTREAM_KEY, Tenancy, cluster_models
from tests.mock_upstream import MockUpstream
from tests.processes import start_api, start_worker, wait_ready, write_config


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def test_unknown_task_input_fields_are_refused(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("junk")
    body = {"kind": "image", "model": "demo", "input": {"prompt": "x", "junk": "y" * 100_000}}
    answer = httpx.post(f"{hostile.url}/v1/tasks", json=body, headers=bearer(secret), timeout=30)
    assert answer.status_code == 400
    assert "input.junk" in answer.json()["error"]["message"]


def test_a_request_too_large_to_keep_is_refused(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("bulky")
    messages = [{"role": "user", "content": "z" * 900_000} for _ in range(3)]
    answer = httpx.post(
        f"{hostile.url}/v1/chat/completions",
        json={"model": "demo-fast", "messages": messages},
        headers=bearer(secret),
        timeout=30,
    )
    assert answer.status_code == 413
    assert "max_stored_request_bytes" in answer.json()["error"]["message"]


def test_a_key_filling_redis_with_tasks_is_stopped_at_its_quota(hostile: Tenancy) -> None:
    quota = HOSTILE_SETTINGS["max_stored_bytes_per_key"]
    assert isinstance(quota, int)
    _, secret = hostile.new_key("filler")
    client = redis.Redis.from_url(hostile.redis_url)
    before = int(client.info("memory")["used_memory"])
    prompt = "p" * 19_000  # a task's input is kept for the 7-day task retention: 7 times its size
    admitted = refused = 0
    with httpx.Client(timeout=30) as http:
        for _ in range(200):
            body = {"kind": "image", "model": "demo", "input": {"prompt": prompt}}
            answer = http.post(f"{hostile.url}/v1/tasks", json=body, headers=bearer(secret))
            if answer.status_code == 429:
                assert "keeps as much as it may" in answer.json()["error"]["message"]
                assert int(answer.headers["retry-after"]) >= 1
                refused += 1
                continue
            assert answer.status_code == 202, answer.text
            admitted += 1
    grown = int(client.info("memory")["used_memory"]) - before
    # 19 KB times 7 days' weight: a 4 MiB quota holds about 30 of them.
    assert 20 <= admitted <= 40 and refused == 200 - admitted
    assert grown < 4 * quota, f"redis grew {grown} bytes"
    # Another key is not held back by this one.
    _, other = hostile.new_key("bystander")
    body = {"kind": "image", "model": "demo", "input": {"prompt": prompt}}
    answer = httpx.post(f"{hostile.url}/v1/tasks", json=body, headers=bearer(other), timeout=30)
    assert answer.status_code == 202


def test_usage_by_invented_model_names_adds_no_fields(hostile: Tenancy) -> None:
    _, secret = hostile.new_key("inventor")
    with httpx.Client(timeout=30) as http:
        for n in range(30):
            answer = http.post(
                f"{hostile.url}/v1/chat/completions",
                json={"model": f"demo/name-{n}", "messages": [{"role": "user", "content": "hi"}]},
                headers=bearer(secret),
            )
            assert answer.status_code == 200, answer.text
        usage = http.get(f"{hostile.url}/v1/usage", headers=bearer(secret)).json()
    assert [m["model"] for m in usage["models"]] == ["demo/*"]
    assert usage["models"][0]["requests"] == 30
    client = redis.Redis.from_url(hostile.redis_url)
    day_keys = client.keys("spool:usage:*:*")
    assert day_keys and all(0 < client.ttl(k) <= 31 * 86400 for k in day_keys)


# -- a Redis near its maxmemory ----------------------------------------------------------


@pytest.fixture
def small_redis(
    tmp_path: Path, mock_upstream: MockUpstream
) -> Iterator[tuple[str, str, redis.Redis]]:
    """A Redis of its own (its memory is filled on purpose), an API and a worker on it."""
    server = EmbeddedRedis(tmp_path / "redis", appendonly=False)
    url = server.start()
    config = write_config(
        tmp_path / "spool.yaml",
        cluster_models(mock_upstream),
        **{**HOSTILE_SETTINGS, "auth_enabled": False},
    )
    os.environ["SPOOL_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    worker = start_worker(url, config, tmp_path)
    api = start_api(url, config, tmp_path)
    client = redis.Redis.from_url(url)
    try:
        wait_ready(api.url)
        yield api.url, url, client
    finally:
        api.stop()
        worker.stop()
        client.close()
        server.stop()


def _post(api_url: str, **extra: object) -> httpx.Response:
    body = {"model": "demo-fast", "messages": [{"role": "user", "content": "hi"}], **extra}
    return httpx.post(f"{api_url}/v1/chat/completions", json=body, timeout=30)


def _until(check: object, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_near_maxmemory_new_jobs_get_503_and_running_ones_finish(
    small_redis: tuple[str, str, redis.Redis],
) -> None:
    api_url, _, client = small_redis
    used = int(client.info("memory")["used_memory"])
    limit = used + 32 * 1024 * 1024
    client.config_set("maxmemory-policy", "noeviction")
    client.config_set("maxmemory", limit)
    assert _post(api_url).status_code == 200
    with httpx.stream(
        "POST",
        f"{api_url}/v1/chat/completions",
        json={
            "model": "demo-slow",
            "max_tokens": 40,
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        },
        timeout=30,
    ) as running:
        assert running.status_code == 200
        # Something else fills Redis past 90% of its maxmemory.
        n = 0
        while int(client.info("memory")["used_memory"]) < 0.93 * limit:
            client.set(f"ballast:{n}", b"b" * (1 << 20))
            n += 1
        _until(lambda: _post(api_url).status_code == 503)
        refused = _post(api_url)
        assert refused.json()["error"]["code"] == "redis_memory_full"
        assert int(refused.headers["retry-after"]) >= 1
        text = running.read().decode()
    # The stream that was running when Redis filled up ended as usual.
    assert '"finish_reason":"length"' in text and "data: [DONE]" in text.splitlines()[-3:]
    client.delete(*(f"ballast:{i}" for i in range(n)))
    _until(lambda: _post(api_url).status_code == 200)
