"""A deployment under attack: an API replica on a 1,024-descriptor limit, a second replica
and a worker, real processes on loopback, with keys required and short timeouts so each
attack and its remedy fit in seconds."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.redis.embedded import EmbeddedRedis
from tests.conftest import UPSTREAM_KEY, Tenancy, cluster_models
from tests.mock_upstream import MockUpstream
from tests.processes import SpoolProcess, free_port, start_api, start_worker, write_config

DESCRIPTORS = 1024
HEADER_TIMEOUT_S = 2.0
HOSTILE_SETTINGS: dict[str, object] = {
    "keepalive_interval_s": 0.5,
    "lease_s": 3,
    "header_timeout_s": HEADER_TIMEOUT_S,
    "max_stored_bytes_per_key": 4 * 1024 * 1024,
    "upstream_allowlist": "127.0.0.1",
}


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="session")
def hostile(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: EmbeddedRedis,
    mock_upstream: MockUpstream,
) -> Iterator[Tenancy]:
    workdir = tmp_path_factory.mktemp("hostile")
    models = {
        **cluster_models(mock_upstream),
        "demo-long": {"provider": "demo", "tokens_per_second": 0, "max_output_tokens": 6000},
    }
    config = write_config(workdir / "spool.yaml", models, **HOSTILE_SETTINGS)
    url = redis_server.url.replace("/0", "/7")
    os.environ["SPOOL_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    worker = start_worker(url, config, workdir)
    api = SpoolProcess(
        "api",
        url,
        config,
        workdir,
        port=free_port(),
        prefix=("prlimit", f"--nofile={DESCRIPTORS}:{DESCRIPTORS}", "--"),
    )
    apis = [api]
    try:
        api.wait_healthy()
        apis.append(start_api(url, config, workdir))  # a second replica, for races
        yield Tenancy(apis, worker, config, url)
    finally:
        for proc in (*apis, worker):
            proc.stop()
