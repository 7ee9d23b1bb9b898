"""Observability end to end, with real `spool` processes: JSON logs by default off a
terminal, naming each job (and its key by id only) with failures' codes and reasons and no
secret anywhere; OpenTelemetry spans exported over OTLP/HTTP to a collector (a receiver in
this test) forming one trace from the API's enqueue through the worker to each upstream
attempt; worker metrics on `--metrics-port`; and Ctrl-C or SIGTERM ending every command
without a traceback."""

from __future__ import annotations

import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from shared.redis.embedded import EmbeddedRedis, free_port
from tests.conftest import UPSTREAM_KEY
from tests.mock_fleet import MockFleet, deployment
from tests.mock_upstream import MockUpstream
from tests.processes import wait_ready, write_config

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIRST = 1_000_000.0  # a weight that puts a deployment first nearly always


# -- an OTLP/HTTP collector -------------------------------------------------------------


@dataclass
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


@dataclass
class Collector:
    """Takes OTLP/HTTP trace exports (protobuf) on /v1/traces and keeps their spans."""

    spans: list[Span] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    port: int = field(default_factory=free_port)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def take(self, body: bytes) -> None:
        export = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource in export.resource_spans:
            service = next(
                a.value.string_value
                for a in resource.resource.attributes
                if a.key == "service.name"
            )
            for scope in resource.scope_spans:
                for span in scope.spans:
                    attributes = {
                        a.key: getattr(a.value, a.value.WhichOneof("value"))
                        for a in span.attributes
                    }
                    found.append(
                        Span(service, span.name, span.trace_id.hex(), span.span_id.hex(),
                             span.parent_span_id.hex(), attributes)
                    )  # fmt: skip
        with self.changed:
            self.spans += found
            self.changed.notify_all()

    def wait_for(self, ready: Callable[[list[Span]], bool], timeout_s: float = 20) -> list[Span]:
        with self.changed:
            assert self.changed.wait_for(lambda: ready(self.spans), timeout_s), self.spans
            return list(self.spans)

    def start(self) -> ThreadingHTTPServer:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                ok = self.path == "/v1/traces"
                if ok:
                    collector.take(body)
                self.send_response(200 if ok else 404)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


# -- processes --------------------------------------------------------------------------


class Spool:
    """One `spool …` command, its stdout and stderr in one file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, **popen: Any) -> None:
        self.log_path = log
        self._log = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", *args],
            env=env,
            cwd=REPO,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            **popen,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 30) -> None:
        eventually(lambda: text in self.log(), timeout_s, f"{text!r} in\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 45) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self._log.close()
        return code


def eventually(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Until `condition` holds (a process's log or its port is outside this process's
    events, so it is looked at every 50 ms)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOL_", "OTEL_"))}
    env.pop("REDIS_URL", None)
    return {**env, **extra}


@dataclass
class Observed:
    api: Spool
    worker: Spool
    url: str
    metrics_url: str
    collector: Collector
    key_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}

    def json_lines(self, proc: Spool) -> list[dict[str, Any]]:
        return [json.loads(line) for line in proc.log().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def observed(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, mock_upstream: MockUpstream
) -> Iterator[Observed]:
    workdir = tmp_path_factory.mktemp("observed")
    fleet = MockFleet().start()
    fleet.script("o-down", "503")
    collector = Collector()
    receiver = collector.start()
    models = {
        "grp": {
            "deployments": [deployment(fleet, "o-down", weight=FIRST), deployment(fleet, "o-up")]
        },
        "echo-key": {
            "provider": "openai",
            "base_url": mock_upstream.base_url,
            "model": "echo-key",
            "api_key_env": "SPOOL_TEST_UPSTREAM_KEY",
        },
        "fast": {"provider": "demo", "tokens_per_second": 0, "max_output_tokens": 8},
    }
    # The upstream quotes its key after the first token, in an error event.
    models["echo-key-midstream"] = {**models["echo-key"], "model": "echo-key-midstream"}
    config = write_config(
        workdir / "spool.yaml",
        models,
        keepalive_interval_s=0.5,
        lease_s=3,
        upstream_allowlist="127.0.0.1",
        upstream_backoff_s=0.05,
    )
    env = base_env(
        REDIS_URL=redis_url,
        SPOOL_CONFIG=str(config),
        SPOOL_LOG_LEVEL="info",  # every job's lines, not only its warnings
        SPOOL_OTLP_ENDPOINT=collector.endpoint,
        OTEL_BSP_SCHEDULE_DELAY="100",  # export every 100 ms rather than every 5 s
        SPOOL_TEST_UPSTREAM_KEY=UPSTREAM_KEY,
    )
    port, metrics_port = free_port(), free_port()
    worker = Spool(["worker", "--metrics-port", str(metrics_port)], env, workdir / "worker.log")
    api = Spool(["api", "--port", str(port)], env, workdir / "api.log")
    url = f"http://127.0.0.1:{port}"
    try:
        eventually(lambda: healthy(url), 30, "the API")
        wait_ready(url)
        created = subprocess.run(
            [sys.executable, "-m", "shared.cli", "keys", "create", "--name", "observed"],
            env=env, capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        key_id = created.stdout.split()[1]
        secret = created.stdout.strip().splitlines()[-1]
        assert key_id.startswith("key_") and secret.startswith("sk-spool-")
        metrics_url = f"http://127.0.0.1:{metrics_port}"
        yield Observed(api, worker, url, metrics_url, collector, key_id, secret)
    finally:
        api.stop()
        worker.stop()
        receiver.shutdown()
        fleet.stop()


def chat(model: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}]}


def test_job_logs_are_json_name_the_job_and_hold_no_secret(observed: Observed) -> None:
    key_id, secret = observed.key_id, observed.secret
    headers = observed.headers
    echoed = httpx.post(f"{observed.url}/v1/chat/completions", json=chat("echo-key"),
                        headers=headers, timeout=30)  # fmt: skip
    assert echoed.status_code == 502
    stream_id = echoed.headers["x-spool-stream-id"]
    late = httpx.post(f"{observed.url}/v1/chat/completions", json=chat("echo-key-midstream"),
                      headers=headers, timeout=30)  # fmt: skip
    late_id = late.headers["x-spool-stream-id"]
    gemini = httpx.post(
        f"{observed.url}/v1beta/models/fast:generateContent",
        params={"key": secret},
        json={"contents": [{"parts": [{"text": "x"}]}]},
        timeout=30,
    )
    assert gemini.status_code == 200

    def failure_logged() -> bool:
        failed = {
            line.get("stream_id")
            for line in observed.json_lines(observed.worker)
            if line.get("status") == "failed"
        }
        return {stream_id, late_id} <= failed

    eventually(failure_logged, 10, "the failure's line")
    eventually(lambda: "generateContent?" in observed.api.log(), 10, "the access line")

    worker_lines = observed.json_lines(observed.worker)  # every line is JSON
    api_lines = observed.json_lines(observed.api)
    (failure,) = [
        line
        for line in worker_lines
        if line.get("stream_id") == stream_id and line.get("status") == "failed"
    ]
    assert failure["key_id"] == key_id  # the key's id; never the key
    assert failure["model"] == "echo-key" and failure["provider"] == "openai"
    assert failure["deployment"] == "echo-key" and failure["level"] == "warning"
    assert failure["code"] == "upstream_error"
    assert failure["reason"] == "upstream answered 401: Incorrect API key provided: [redacted]"
    (access,) = [
        line
        for line in api_lines
        if line["logger"] == "uvicorn.access" and "generateContent" in line["message"]
    ]
    assert "generateContent?[redacted]" in access["message"]
    for proc in (observed.api, observed.worker):
        text = proc.log()
        assert secret not in text and UPSTREAM_KEY not in text
        assert "Traceback" not in text


def test_one_trace_runs_from_the_api_through_the_worker_to_each_attempt(
    observed: Observed,
) -> None:
    routed = httpx.post(
        f"{observed.url}/v1/chat/completions", json=chat("grp"), headers=observed.headers
    )
    assert routed.status_code == 200, routed.text
    stream_id = routed.headers["x-spool-stream-id"]

    def complete(spans: list[Span]) -> bool:
        mine = [s for s in spans if s.attributes.get("spool.stream_id") == stream_id]
        return len(mine) == 4  # create, run, two attempts

    spans = [
        s
        for s in observed.collector.wait_for(complete)
        if s.attributes.get("spool.stream_id") == stream_id
    ]
    (create,) = [s for s in spans if s.name == "generation.create"]
    (run,) = [s for s in spans if s.name == "generation.run"]
    attempts = [s for s in spans if s.name == "upstream.attempt"]
    assert create.service == "spool-api" and run.service == "spool-worker"
    assert {s.trace_id for s in spans} == {create.trace_id}
    assert run.parent_id == create.span_id
    assert all(a.parent_id == run.span_id and a.service == "spool-worker" for a in attempts)
    assert sorted((a.attributes["spool.deployment"], a.attributes["spool.outcome"])
                  for a in attempts) == [("o-down", "upstream_error"), ("o-up", "ok")]  # fmt: skip
    assert run.attributes["spool.deployment"] == "o-up"
    assert run.attributes["spool.outcome"] == "completed"
    assert create.attributes["spool.model"] == "grp"


def test_the_worker_serves_its_metrics(observed: Observed) -> None:
    routed = httpx.post(
        f"{observed.url}/v1/chat/completions", json=chat("grp"), headers=observed.headers
    )
    assert routed.status_code == 200
    text = httpx.get(f"{observed.metrics_url}/metrics", timeout=5).text
    for series in (
        'spool_worker_attempts_total{deployment="o-down",model="grp",outcome="upstream_error"}',
        'spool_worker_attempts_total{deployment="o-up",model="grp",outcome="ok"}',
        'spool_worker_upstream_errors_total{code="upstream_error",provider="openai",status="503"}',
        'spool_worker_jobs_total{kind="generation",status="completed"}',
        'spool_worker_open_jobs{kind="generation"} 0.0',
        'spool_worker_time_to_first_token_seconds_count{model="grp",provider="openai"}',
        'spool_worker_tokens_total{direction="output",model="grp"}',
    ):
        assert series in text, series
    assert "spool_queue_depth" in httpx.get(f"{observed.url}/metrics").text


# -- Ctrl-C and SIGTERM -----------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_api_and_worker_stop_quietly(redis_url: str, tmp_path: Path, sig: int) -> None:
    port = free_port()
    env = base_env(REDIS_URL=redis_url, SPOOL_AUTH_ENABLED="false")
    worker = Spool(["worker"], env, tmp_path / "worker.log")
    api = Spool(["api", "--port", str(port)], env, tmp_path / "api.log")
    try:
        eventually(lambda: healthy(f"http://127.0.0.1:{port}"), 30, "the API")
        worker.wait_for_log("ready")
    finally:
        codes = api.stop(sig), worker.stop(sig)
    assert codes == (0, 0), (api.log(), worker.log())
    for proc in (api, worker):
        assert "Traceback" not in proc.log() and "KeyboardInterrupt" not in proc.log()


@pytest.mark.parametrize("when", ["starting", "serving"])
def test_ctrl_c_stops_spool_dev_quietly(tmp_path: Path, when: str) -> None:
    port = free_port()
    env = base_env(SPOOL_PORT=str(port), SPOOL_DATA_DIR=str(tmp_path / "data"))
    # Its own process group, which the terminal's Ctrl-C reaches whole.
    dev = Spool(["dev"], env, tmp_path / "dev.log", start_new_session=True)
    try:
        dev.wait_for_log("Spool is serving")  # the API and worker are still starting
        if when == "serving":
            eventually(lambda: healthy(f"http://127.0.0.1:{port}"), 30, "the API")
        os.killpg(dev.process.pid, signal.SIGINT)
        code = dev.process.wait(60)
    finally:
        dev.stop(signal.SIGKILL)
    assert code == 0, dev.log()
    assert "Traceback" not in dev.log() and "KeyboardInterrupt" not in dev.log(), dev.log()


def test_ctrl_c_stops_a_keys_command_quietly(tmp_path: Path) -> None:
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never answers
    env = base_env(REDIS_URL=f"redis://127.0.0.1:{silent.getsockname()[1]}/0")
    keys = Spool(["keys", "list"], env, tmp_path / "keys.log")
    try:
        connection, _ = silent.accept()  # the command is waiting for Redis now
        code = keys.stop(signal.SIGINT, timeout_s=20)
        connection.close()
    finally:
        silent.close()
    assert code == 130, keys.log()
    assert "Traceback" not in keys.log(), keys.log()


def test_each_worker_process_serves_its_metrics_on_its_own_port(
    redis_url: str, tmp_path: Path
) -> None:
    port = free_port()
    while not all(free(p) for p in (port, port + 1)):
        port = free_port()
    env = base_env(REDIS_URL=redis_url)
    group = Spool(
        ["worker", "--processes", "2", "--metrics-port", str(port)], env, tmp_path / "w.log"
    )
    try:
        for each in (port, port + 1):
            eventually(lambda p=each: scraped(p), 30, f"metrics on port {each}")
    finally:
        code = group.stop(signal.SIGTERM)
    assert code == 0 and "Traceback" not in group.log(), group.log()


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def scraped(port: int) -> bool:
    try:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=0.5).text
    except httpx.HTTPError:
        return False
    return 'spool_worker_open_jobs{kind="generation"}' in text
