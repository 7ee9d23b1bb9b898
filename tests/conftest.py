from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from redis.asyncio import Redis

from shared.redis.clients import create_redis
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings
from tests.mcp_servers import stdio_command
from tests.mock_upstream import MockUpstream
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def redis(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    # Database 1: the end-to-end cluster uses database 0 of the same server.
    client = Redis.from_url(redis_server.url.replace("/0", "/1"))
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture
async def mux(redis_server: EmbeddedRedis) -> AsyncIterator[Redis]:
    """A multiplexed client (`shared.redis.mux`) on database 6, emptied first."""
    client = create_redis(Settings(), url=redis_server.url.replace("/0", "/6"), multiplexed=True)
    await client.flushdb()
    yield client
    await client.aclose(close_connection_pool=True)


@pytest.fixture(scope="session")
def mock_upstream() -> Iterator[MockUpstream]:
    upstream = MockUpstream().start()
    yield upstream
    upstream.stop()


@dataclass
class Cluster:
    apis: list[SpoolProcess]
    worker: SpoolProcess
    upstream: MockUpstream
    redis: EmbeddedRedis

    @property
    def url(self) -> str:
        return self.apis[0].url

    @property
    def other_url(self) -> str:
        return self.apis[1].url


UPSTREAM_KEY = "sk-test-upstream-key"
# Upstream Retry-After hints over 5 s are not waited out: the stream fails fast with the hint.
E2E_SETTINGS = {
    "keepalive_interval_s": 0.5,
    "lease_s": 3,
    "upstream_retry_after_max_s": 5,
    # Keys, ownership and limits have their own suite (tests/e2e/test_tenancy.py).
    "auth_enabled": False,
    "upstream_allowlist": "127.0.0.1",
    "cors_origins": ["http://app.example"],
    "max_media_bytes": 1024 * 1024,
}


def cluster_models(upstream: MockUpstream) -> dict[str, object]:
    def mock(upstream_model: str) -> dict[str, object]:
        return {
            "provider": "openai",
            "base_url": upstream.base_url,
            "model": upstream_model,
            "api_key_env": "SPOOL_TEST_UPSTREAM_KEY",
            "idle_timeout_s": 10,
        }

    return {
        "demo-fast": {"provider": "demo", "tokens_per_second": 0, "max_output_tokens": 40},
        "demo-slow": {"provider": "demo", "tokens_per_second": 20, "max_output_tokens": 400},
        "demo-late": {"provider": "demo", "tokens_per_second": 0, "first_token_delay_ms": 1600},
        **{f"mock-{name}": mock(name) for name in (
            "instant", "split-utf8", "slow", "midstream-error", "garbage", "no-finish",
            "status-429",
        )},
        "up-openai-text": mock("instant"),
        "up-openai-tools": mock("tools"),
        "up-openai-json": mock("json"),
        **{
            f"up-responses-{name}": {
                "provider": "responses", "base_url": upstream.base_url,
                "model": f"responses-{name}", "api_key_env": "SPOOL_TEST_UPSTREAM_KEY",
                "idle_timeout_s": 10,
            }
            for name in ("text", "tools", "reasoning", "split", "json", "incomplete", "failed",
                         "error", "no-terminal")
        },
        **{
            f"up-anthropic-{name}": {
                "provider": "anthropic", "base_url": upstream.base_url, "model": f"claude-{name}",
                "api_key_env": "SPOOL_TEST_UPSTREAM_KEY",
            }
            for name in ("text", "tools", "thinking", "split", "overloaded", "json")
        },
        **{
            f"up-gemini-{name}": {
                "provider": "gemini", "base_url": upstream.base_url + "beta",
                "model": f"gemini-{name}", "api_key_env": "SPOOL_TEST_UPSTREAM_KEY",
            }
            for name in ("text", "tools", "thinking", "split", "error-midstream", "json")
        },
    }  # fmt: skip


@pytest.fixture(scope="session")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: EmbeddedRedis,
    mock_upstream: MockUpstream,
) -> Iterator[Cluster]:
    """Two API replicas and one worker, real processes, on the session's redis-server."""
    workdir = tmp_path_factory.mktemp("cluster")
    config = write_config(workdir / "spool.yaml", cluster_models(mock_upstream), **E2E_SETTINGS)
    os.environ["SPOOL_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    worker = start_worker(redis_server.url, config, workdir)
    apis: list[SpoolProcess] = []
    try:
        apis = [start_api(redis_server.url, config, workdir) for _ in range(2)]
        wait_ready(apis[0].url)
        yield Cluster(apis=apis, worker=worker, upstream=mock_upstream, redis=redis_server)
    finally:
        for proc in [*apis, worker]:
            proc.stop()


# -- a cluster with authentication on, as deployed by default ------------------------

TENANCY_SETTINGS = {
    "keepalive_interval_s": 0.5,
    "max_concurrent_generations": 12,
    "max_messages": 50,
    "max_string_chars": 10_000,
    "max_tools": 8,
    "max_json_depth": 40,
    "max_header_bytes": 8192,
    "max_follow_tokens": 3,
    # Loopback is allowed for the mock upstream only by name: 127.0.0.1 stays forbidden.
    "upstream_allowlist": "localhost",
}


@dataclass
class Tenancy:
    apis: list[SpoolProcess]
    worker: SpoolProcess
    config: Path
    redis_url: str

    @property
    def url(self) -> str:
        return self.apis[0].url

    def spool(self, *args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "shared.cli", "--config", str(self.config), *args],
            env={"REDIS_URL": self.redis_url, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    def new_key(self, name: str, *limits: str) -> tuple[str, str]:
        """(key id, secret) from `spool keys create`."""
        out = self.spool("keys", "create", "--name", name, *limits)
        key_id = re.search(r"created (key_\w+)", out)
        assert key_id is not None
        return key_id[1], out.strip().splitlines()[-1]


@pytest.fixture(scope="session")
def tenancy(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: EmbeddedRedis,
    mock_upstream: MockUpstream,
) -> Iterator[Tenancy]:
    workdir = tmp_path_factory.mktemp("tenancy")
    models = cluster_models(mock_upstream)
    models["echo-key"] = {
        **models["mock-instant"],
        "model": "echo-key",  # type: ignore[dict-item]
        "base_url": mock_upstream.base_url.replace("127.0.0.1", "localhost"),
    }
    models["echo-key-midstream"] = {**models["echo-key"], "model": "echo-key-midstream"}
    models["internal"] = models["mock-instant"]  # 127.0.0.1: not allow-listed here
    # The README's routing example: a group with a fallback, and an auto-router.
    fast_demo = {"provider": "demo", "tokens_per_second": 0, "max_output_tokens": 12}
    models["chat"] = {"deployments": [fast_demo, fast_demo], "fallbacks": ["demo-fast"]}
    models["coder"] = fast_demo
    models["auto"] = {
        "router": {
            "rules": [
                {"when": {"has_tools": True}, "use": "chat"},
                {"when": {"matches": r"(?i)\b(sql|python|def)\b"}, "use": "coder", "name": "code"},
            ],
            "default": "chat",
        }
    }
    # The README's MCP example asks for `calc`: the test tools, over stdio.
    calc = {"command": stdio_command(), "allowed_tools": ["add"]}
    config = write_config(
        workdir / "spool.yaml", models, mcp_servers={"calc": calc}, **TENANCY_SETTINGS
    )
    url = redis_server.url.replace("/0", "/3")
    os.environ["SPOOL_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    worker = start_worker(url, config, workdir)
    apis = [start_api(url, config, workdir) for _ in range(2)]
    yield Tenancy(apis, worker, config, url)
    for proc in [*apis, worker]:
        proc.stop()
