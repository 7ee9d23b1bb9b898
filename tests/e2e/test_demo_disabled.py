"""A deployment with `demo_enabled: false`, through real HTTP against an API process: no
demo model on any surface, no demo task model, no `demo/<x>` pass-through."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.redis.embedded import EmbeddedRedis
from tests.conftest import UPSTREAM_KEY, cluster_models
from tests.mock_upstream import MockUpstream
from tests.processes import SpoolProcess, start_api, write_config

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: EmbeddedRedis,
    mock_upstream: MockUpstream,
) -> Iterator[SpoolProcess]:
    """One API process and no worker: every request here is refused before it is queued."""
    workdir = tmp_path_factory.mktemp("demo-disabled")
    models = {"mock-instant": cluster_models(mock_upstream)["mock-instant"]}
    config = write_config(
        workdir / "spool.yaml",
        models,
        demo_enabled=False,
        auth_enabled=False,
        upstream_allowlist="127.0.0.1",
    )
    os.environ["SPOOL_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    proc = start_api(redis_server.url.replace("/0", "/8"), config, workdir)
    yield proc
    proc.stop()


def chat(model: str) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def test_no_demo_model_is_listed(api: SpoolProcess) -> None:
    listed = httpx.get(f"{api.url}/v1/models").json()
    assert [m["id"] for m in listed["data"]] == ["mock-instant"]
    assert httpx.get(f"{api.url}/v1/models/demo").status_code == 404


@pytest.mark.parametrize("model", ["demo", "demo/fast"])
def test_demo_is_an_unknown_model_on_every_surface(api: SpoolProcess, model: str) -> None:
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    for path, payload, shape in (
        ("/v1/chat/completions", chat(model), lambda b: b["error"]["code"] == "model_not_found"),
        ("/v1/completions", {"model": model, "prompt": "x"},
         lambda b: b["error"]["code"] == "model_not_found"),
        ("/v1/messages", {**chat(model), "max_tokens": 5},
         lambda b: b["error"]["type"] == "not_found_error"),
        (f"/v1beta/models/{model}:generateContent", body,
         lambda b: b["error"]["status"] == "NOT_FOUND"),
        ("/api/chat", {"message": "x", "model": model},
         lambda b: b["error_code"] == "model_not_found"),
    ):  # fmt: skip
        if "/" in model and path.startswith("/v1beta"):
            continue  # a Gemini model name is one path segment
        refused = httpx.post(api.url + path, json=payload)
        assert refused.status_code == 404 and shape(refused.json()), (path, refused.text)


def test_the_simple_api_default_model_is_gone_too(api: SpoolProcess) -> None:
    refused = httpx.post(f"{api.url}/api/chat", json={"message": "x"})
    assert refused.status_code == 404 and refused.json()["error_code"] == "model_not_found"


def test_no_demo_task_model(api: SpoolProcess) -> None:
    task = {"kind": "image", "model": "demo", "input": {"prompt": "a lighthouse"}}
    refused = httpx.post(f"{api.url}/v1/tasks", json=task)
    assert refused.status_code == 404, refused.text
    assert refused.json()["error"]["code"] == "model_not_found"


def test_a_demo_entry_is_refused_at_startup(tmp_path: Path, redis_server: EmbeddedRedis) -> None:
    config = write_config(
        tmp_path / "spool.yaml", {"fast": {"provider": "demo"}}, demo_enabled=False
    )
    proc = SpoolProcess("api", redis_server.url.replace("/0", "/8"), config, tmp_path, port=1)
    assert proc.process.wait(30) != 0
    proc.stop()
    assert "demo_enabled is false, but models.fast use provider: demo" in proc.log()
