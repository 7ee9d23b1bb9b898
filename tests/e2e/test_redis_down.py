"""With its Redis unreachable, the API answers 503 in the surface's shape and stays up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.redis.embedded import free_port
from tests.processes import SpoolProcess, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def orphan_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SpoolProcess]:
    workdir: Path = tmp_path_factory.mktemp("orphan")
    config = write_config(workdir / "spool.yaml", {}, auth_enabled=False)
    dead_redis = f"redis://127.0.0.1:{free_port()}/0"
    api = SpoolProcess("api", dead_redis, config, workdir, port=free_port())
    api.wait_healthy()
    yield api
    api.stop()


def test_requests_get_503_in_openai_shape(orphan_api: SpoolProcess) -> None:
    body = {"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream": True}
    for method, path, payload in (
        ("POST", "/v1/chat/completions", body),
        ("POST", "/v1/chat/completions", {**body, "stream": False}),
        ("GET", f"/v1/streams/{'a' * 32}", None),
        ("GET", f"/v1/streams/{'a' * 32}/result", None),
        ("POST", f"/v1/streams/{'a' * 32}/cancel", None),
    ):
        response = httpx.request(method, orphan_api.url + path, json=payload, timeout=10)
        assert response.status_code == 503, (path, response.text)
        assert response.json()["error"]["code"] == "redis_unavailable"
        assert response.headers["retry-after"] == "1"
    ready = httpx.get(f"{orphan_api.url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
    assert httpx.get(f"{orphan_api.url}/healthz", timeout=10).status_code == 200
    assert orphan_api.process.poll() is None, "the API process must survive"
