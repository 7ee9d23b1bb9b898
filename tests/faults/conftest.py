"""The fault-injection cluster: its own redis-server (AOF on, restartable on the same port),
two API replicas and two workers, all real processes that tests may kill and replace."""

from __future__ import annotations

import asyncio
import random
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest
import redis as sync_redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from shared.redis.embedded import EmbeddedRedis, free_port
from shared.sse import SSEDecoder
from tests.mock_queue_http import MockQueueHttp, model_entry
from tests.mock_upstream import MockUpstream
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config

LEASE_S = 2.0
MEASUREMENTS: list[str] = []


def measure(line: str) -> None:
    """Record a figure (cancel latency, recovery time …) for the end-of-run summary."""
    MEASUREMENTS.append(line)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if MEASUREMENTS:
        terminalreporter.section("fault-injection measurements")
        for line in MEASUREMENTS:
            terminalreporter.write_line(line)


FAULT_SETTINGS = {
    "keepalive_interval_s": 0.5,
    "lease_s": LEASE_S,
    "upstream_backoff_s": 0.05,
    "upstream_backoff_max_s": 0.2,
    "upstream_retry_after_max_s": 5,
    "upstream_max_attempts": 3,
    "worker_shutdown_grace_s": 5,
    "redis_retry_s": 10,
    "auth_enabled": False,
    "upstream_allowlist": "127.0.0.1",
}


def fault_models(upstream: MockUpstream) -> dict[str, object]:
    def mock(name: str, base_url: str | None = None) -> dict[str, object]:
        return {
            "provider": "openai",
            "base_url": base_url or upstream.base_url,
            "model": name,
            "idle_timeout_s": 1,
            "connect_timeout_s": 1,
        }

    scripts = ("instant", "slow", "stall", "garbage", "endless-line", "many-malformed",
               "always-429", "429-then-ok", "503-then-ok")  # fmt: skip
    return {
        "fault-demo": {"provider": "demo", "tokens_per_second": 300, "max_output_tokens": 30},
        "fault-slow": {"provider": "demo", "tokens_per_second": 20, "max_output_tokens": 60},
        "fault-long": {"provider": "demo", "tokens_per_second": 20, "max_output_tokens": 200},
        "fault-burst": {"provider": "demo", "tokens_per_second": 0, "max_output_tokens": 3000},
        "fault-late": {
            "provider": "demo",
            "tokens_per_second": 50,
            "first_token_delay_ms": 2500,
            "max_output_tokens": 20,
        },
        **{f"mock-{name}": mock(name) for name in scripts},
        "mock-refused": mock("instant", f"http://127.0.0.1:{free_port()}/v1"),
    }


class FaultQueueHttp(MockQueueHttp):
    """The queue_http mock with one more behaviour, for worker-loss tests: the first submit
    of a prompt starting "hang-once" gets no answer until its client goes away, so the
    worker that sent it has written nothing to the task yet; later submits of the same
    prompt go on as "succeed"."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.hanging: list[str] = []  # prompts whose first submit was held
        self._hung = threading.Condition()

    def wait_for_hang(self, prompt: str, timeout_s: float = 10.0) -> bool:
        """Wait (in the test's thread) until the first submit of `prompt` is being held."""
        with self._hung:
            return self._hung.wait_for(lambda: prompt in self.hanging, timeout_s)

    async def submit(self, request: Request) -> Response:
        try:
            inputs = orjson.loads(await request.body()).get("input") or {}
            prompt = str(inputs.get("prompt") or "")
        except (orjson.JSONDecodeError, AttributeError):
            prompt = ""
        if not prompt.startswith("hang-once") or prompt in self.hanging:
            return await super().submit(request)
        with self._hung:
            self.hanging.append(prompt)
            self._hung.notify_all()
        for _ in range(1200):  # a minute at most
            if await request.is_disconnected():
                break
            await asyncio.sleep(0.05)
        return JSONResponse({"detail": "held until the client went away"}, status_code=503)


@pytest.fixture(scope="session")
def fault_queue_http() -> Iterator[FaultQueueHttp]:
    upstream = FaultQueueHttp().start()
    yield upstream
    upstream.stop()


def fault_task_models(queue_http: MockQueueHttp) -> dict[str, object]:
    # "demo" (the built-in demo task model) is always there besides these.
    return {"fault-queue": model_entry(queue_http)}


@dataclass
class Deployed:
    """Spool's processes on a Redis topology of a test's own (Sentinel, a cluster)."""

    apis: list[SpoolProcess]
    workers: list[SpoolProcess]

    @property
    def urls(self) -> list[str]:
        return [api.url for api in self.apis]

    def all_alive(self) -> bool:
        return all(proc.process.poll() is None for proc in [*self.apis, *self.workers])


@dataclass
class FaultCluster:
    workdir: Path
    config: Path
    redis: EmbeddedRedis
    upstream: MockUpstream
    apis: list[SpoolProcess] = field(default_factory=list)
    workers: list[SpoolProcess] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [api.url for api in self.apis]

    def any_url(self) -> str:
        return random.choice(self.urls)

    def add_api(self) -> SpoolProcess:
        api = start_api(self.redis.url, self.config, self.workdir)
        self.apis.append(api)
        return api

    def add_worker(self) -> SpoolProcess:
        worker = start_worker(self.redis.url, self.config, self.workdir)
        self.workers.append(worker)
        return worker

    def redis_client(self) -> sync_redis.Redis:
        return sync_redis.Redis.from_url(self.redis.url)

    def worker_running(self, stream_id: str, timeout_s: float = 10.0) -> SpoolProcess:
        """The worker process that has claimed the stream."""
        client = self.redis_client()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            name = client.hget(f"spool:{{{stream_id}}}:job", "worker")
            if name:
                pid = int(name.decode().split(":")[1])
                return next(w for w in self.workers if w.process.pid == pid)
            time.sleep(0.01)
        raise AssertionError(f"no worker claimed {stream_id}")

    def kill(self, proc: SpoolProcess, sig: int = signal.SIGKILL) -> None:
        # Out of the lists first: no client picks a process that is going away.
        for group in (self.apis, self.workers):
            if proc in group:
                group.remove(proc)
        proc.process.send_signal(sig)
        proc.process.wait(10)

    def stop_all(self) -> None:
        for proc in [*self.apis, *self.workers]:
            proc.stop()


@contextmanager
def running_cluster(
    workdir: Path, config: Path, upstream: MockUpstream, *, appendonly: bool = True
) -> Iterator[FaultCluster]:
    """Two APIs and two workers on a Redis of their own, stopped when done."""
    redis = EmbeddedRedis(workdir / "redis", appendonly=appendonly)
    redis.start()
    cluster = FaultCluster(workdir, config, redis, upstream)
    try:
        for _ in range(2):
            cluster.add_worker()
            cluster.add_api()
        wait_ready(cluster.urls[0])
        yield cluster
    finally:
        cluster.stop_all()
        redis.stop()


@pytest.fixture(scope="session")
def faults(
    tmp_path_factory: pytest.TempPathFactory,
    mock_upstream: MockUpstream,
    fault_queue_http: FaultQueueHttp,
) -> Iterator[FaultCluster]:
    workdir = tmp_path_factory.mktemp("faults")
    config = write_config(
        workdir / "spool.yaml",
        fault_models(mock_upstream),
        task_models=fault_task_models(fault_queue_http),
        **FAULT_SETTINGS,
    )
    with running_cluster(workdir, config, mock_upstream) as cluster:
        yield cluster


@pytest.fixture
def healthy(faults: FaultCluster) -> FaultCluster:
    """The fault cluster, topped back up to two APIs and two workers after earlier tests."""
    while len(faults.apis) < 2:
        faults.add_api()
    while len(faults.workers) < 2:
        faults.add_worker()
    wait_ready(faults.urls[0])
    return faults


# -- reading streams through faults -----------------------------------------------------


@dataclass
class Reading:
    stream_id: str = ""
    events: list[tuple[str, str]] = field(default_factory=list)  # (id, data)
    drops: int = 0
    finished: bool = False

    @property
    def last_id(self) -> str | None:
        return self.events[-1][0] if self.events else None

    def text(self) -> str:
        out = []
        for _, data in self.events:
            if data.startswith("{"):
                chunk = orjson.loads(data)
                for choice in chunk.get("choices") or []:
                    out.append(choice["delta"].get("content") or "")
        return "".join(out)

    def error(self) -> dict[str, object] | None:
        for _, data in self.events:
            if data.startswith('{"error"'):
                return orjson.loads(data)["error"]  # type: ignore[no-any-return]
        return None


def read_some(
    client: httpx.Client,
    reading: Reading,
    url: str,
    *,
    body: dict[str, object] | None = None,
    stop_after: int | None = None,
) -> None:
    """One connection's worth of events: POST `body` (a new stream) or GET the stream,
    resuming after the last id seen. Connection errors count as a drop."""
    headers = {"Last-Event-ID": reading.last_id} if reading.last_id else {}
    request = (
        client.build_request("POST", f"{url}/v1/chat/completions", json=body)
        if body is not None
        else client.build_request("GET", f"{url}/v1/streams/{reading.stream_id}", headers=headers)
    )
    decoder = SSEDecoder()
    taken = 0
    try:
        response = client.send(request, stream=True)
        try:
            if response.status_code != 200:
                raise AssertionError(f"{response.status_code}: {response.read()!r}")
            reading.stream_id = response.headers["x-spool-stream-id"]
            for raw in response.iter_raw():
                for event in decoder.feed(raw):
                    assert event.id, "every data event carries an id"
                    reading.events.append((event.id, event.data))
                    taken += 1
                    if event.data == "[DONE]":
                        reading.finished = True
                        return
                    if stop_after is not None and taken >= stop_after:
                        reading.drops += 1
                        return
            reading.drops += 1  # the server ended the response before [DONE]
        finally:
            response.close()
    except httpx.TransportError:
        reading.drops += 1


def chat(model: str, prompt: str, **extra: object) -> dict[str, object]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        **extra,
    }


def result(url: str, stream_id: str) -> dict[str, object]:
    response = httpx.get(f"{url}/v1/streams/{stream_id}/result", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def result_text(url: str, stream_id: str) -> str:
    output = result(url, stream_id)["output"]
    return output["choices"][0]["message"]["content"]  # type: ignore[index,no-any-return]


def full_replay(client: httpx.Client, url: str, stream_id: str) -> Reading:
    reading = Reading(stream_id=stream_id)
    read_some(client, reading, url)
    assert reading.finished
    return reading


def read_to_the_end(client: httpx.Client, reading: Reading, urls: list[str]) -> bool:
    """Resume until the stream's end, alternating replicas; False when the stream no longer
    holds the event to resume from (Redis lost it in the failover)."""
    attempts = 0
    forget_outage(reading)
    while not reading.finished:
        attempts += 1
        assert attempts < 200, "the stream never ended"
        try:
            read_some(client, reading, urls[attempts % len(urls)])
        except AssertionError as exc:
            if str(exc).startswith("503"):
                time.sleep(0.2)  # the API has not reached the new primary yet
                continue
            assert str(exc).startswith("410"), exc
            return False
        if forget_outage(reading):
            time.sleep(0.1)
    return True


def forget_outage(reading: Reading) -> bool:
    """A tail that ended with the failover (its error event and [DONE], neither with an
    id of its own) is resumed after its last real event."""
    error = reading.error()
    if error is None or error["code"] != "redis_unavailable":
        return False
    assert reading.events[-2][1].startswith('{"error"') and reading.events[-1][1] == "[DONE]"
    reading.events = reading.events[:-2]
    reading.finished = False
    return True


def finish_after_failover(
    client: httpx.Client, readings: list[Reading], urls: list[str]
) -> tuple[int, int]:
    """Resume every stream to its end after a failover. Each either continued exactly
    (its text and a full replay match) or ended visibly with `events_lost`; returns how
    many did each."""
    continued = lost = 0
    for r in readings:
        if not read_to_the_end(client, r, urls):
            # Resuming from an event the new primary never received: the stream says so.
            outcome = result(urls[0], r.stream_id)
            assert outcome["error"]["code"] == "events_lost", outcome  # type: ignore[index]
            lost += 1
            continue
        error = r.error()
        if error is not None:
            assert error["code"] == "events_lost", error
            lost += 1
            continue
        assert r.text() == result_text(urls[0], r.stream_id)
        assert full_replay(client, urls[-1], r.stream_id).events == r.events
        continued += 1
    assert continued + lost == len(readings)
    return continued, lost


def start_readers(
    client: httpx.Client,
    urls: str | list[str],
    model: str,
    count: int,
    label: str,
    max_tokens: int = 50,
) -> tuple[list[Reading], list[threading.Thread]]:
    """`count` streams of `model`, each read in a thread of its own through `urls` in
    turn, once every one has at least three events."""
    urls = [urls] if isinstance(urls, str) else urls
    readings = [Reading() for _ in range(count)]
    threads = [
        threading.Thread(
            target=read_some,
            args=(client, r, urls[n % len(urls)]),
            kwargs={"body": chat(model, f"{label} {n}", max_tokens=max_tokens)},
        )
        for n, r in enumerate(readings)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 20
    while any(len(r.events) < 3 for r in readings):
        assert time.monotonic() < deadline, "streams did not start"
        time.sleep(0.01)
    return readings, threads
