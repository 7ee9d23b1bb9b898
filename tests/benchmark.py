"""Spool's benchmark: what the broker adds over calling the upstream directly, in one run.

    .venv/bin/python tests/benchmark.py [--ttft-requests 300] [--streams 10000]
        [--duration 5 | --requests N] [--rounds 2] [--skip-open] [--skip-multi]
        [--skip-cluster]
        [--open-sample 500] [--open-timeout 120] [--json PATH] [--workdir DIR]

Starts its own redis-server, a fast mock OpenAI-compatible upstream (tests/bench_upstream.py,
its own process), one API process and one worker process, and drives them with a raw
asyncio HTTP client (tests/loadgen.py) in this process. It measures:
  1. time to first token for 1 client, mock called directly vs through Spool, the requests
     interleaved so both paths see the same machine load;
  2. 50 concurrent clients x 64 tokens: content characters/s, chunks/s and TTFT, in
     alternating direct and Spool phases;
  3. N streams held open on one API process against a 1 token/s demo model: time until
     all are streaming, API memory per stream, the API's Redis connections; then all are
     cancelled and must end;
  4. the load of (2) through `spool api --processes 2` and `spool worker --processes 2`;
  5. the load of (2) with the streams on a Redis Cluster of 3 masters (its own
     redis-server processes) and the queue on the first Redis, with the commands each
     Redis served, beside the commands the one Redis of (2) served.
Every Spool stream's text (all of 1, 2 and 4, a sample of 3) is compared with the stream's
assembled output from `GET /v1/streams/{id}/result`, and mock-backed streams also with the
text the mock sent. A mismatch, a broken stream (error event, no `[DONE]`), or a held
stream that does not stream, or does not end as cancelled, makes the exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
import redis as redis_client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.redis.embedded import EmbeddedRedis, free_port
from tests import loadgen
from tests.bench_upstream import expected_text
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config
from tests.redis_topology import ClusterSet

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
CHAT = "/v1/chat/completions"
PROMPT = [{"role": "user", "content": "benchmark"}]
TOKENS = 64
CLIENTS = 50
UPSTREAM_MODEL = "bench"  # what the mock is asked for, directly and by Spool's worker
MOCK_MODEL = "bench-mock"  # Spool's name for the mock
SLOW_MODEL = "bench-slow"  # demo model at 1 token/s, for held streams
WARMUP_PAIRS = 20


def chat_body(model: str, tokens: int = TOKENS) -> dict[str, Any]:
    return {
        "model": model,
        "messages": PROMPT,
        "stream": True,
        "max_tokens": tokens,
        "stream_options": {"include_usage": True},
    }


DIRECT_BODY = orjson.dumps(chat_body(UPSTREAM_MODEL))
SPOOL_BODY = orjson.dumps(chat_body(MOCK_MODEL))
JSON_HEADERS = [("Content-Type", "application/json")]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: list[float]) -> dict[str, float | None]:
    values = [s * 1000 for s in seconds]
    return {
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
        "max": max(values, default=None),
        "mean": statistics.fmean(values) if values else None,
    }


def per_second(count: float, wall_s: float) -> float | None:
    return count / wall_s if wall_s > 0 else None


# -- what clients saw, and checking it --------------------------------------------------------


@dataclass
class Tally:
    """Streams of one side of one measurement: counts, and the Spool streams to check."""

    requests: int = 0
    chars: int = 0
    chunks: int = 0
    wall_s: float = 0.0
    ttft: list[float] = field(default_factory=list)
    broken: list[str] = field(default_factory=list)  # non-200, error event, no [DONE]
    upstream_mismatches: list[str] = field(default_factory=list)
    to_check: list[tuple[str, str]] = field(default_factory=list)  # (stream id, text)

    def add(self, response: loadgen.Response, spool: bool, expect: str | None) -> None:
        self.requests += 1
        self.chars += response.chars
        self.chunks += response.chunks
        if response.ttft is not None:
            self.ttft.append(response.ttft)
        problem = describe_broken(response)
        if problem:
            self.broken.append(problem)
        if expect is not None and response.text != expect:
            self.upstream_mismatches.append(
                f"{response.stream_id or 'direct'}: {len(response.text)} chars, "
                f"expected {len(expect)}"
            )
        if spool:
            if response.stream_id is None:
                self.broken.append(f"status {response.status}: no X-Spool-Stream-Id header")
            else:
                self.to_check.append((response.stream_id, response.text))

    def merge(self, other: Tally) -> None:
        self.requests += other.requests
        self.chars += other.chars
        self.chunks += other.chunks
        self.wall_s += other.wall_s
        self.ttft += other.ttft
        self.broken += other.broken
        self.upstream_mismatches += other.upstream_mismatches
        self.to_check += other.to_check

    def figures(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "chars": self.chars,
            "chunks": self.chunks,
            "wall_s": self.wall_s,
            "requests_per_s": per_second(self.requests, self.wall_s),
            "chars_per_s": per_second(self.chars, self.wall_s),
            "chunks_per_s": per_second(self.chunks, self.wall_s),
            "ttft_ms": ms(self.ttft),
            "broken": len(self.broken),
            "broken_examples": self.broken[:5],
            "upstream_mismatches": len(self.upstream_mismatches),
            "upstream_mismatch_examples": self.upstream_mismatches[:5],
        }


def describe_broken(response: loadgen.Response) -> str | None:
    if response.status != 200:
        return f"status {response.status}: {response.body[:200]!r}"
    if response.error is not None:
        return f"{response.stream_id}: error event {response.error}"
    if not response.done:
        return f"{response.stream_id}: ended without data: [DONE]"
    return None


async def check_results(
    port: int, streams: list[tuple[str, str]], timeout_s: float = 300.0
) -> dict[str, Any]:
    """Compares each stream's text as its client received it with the stream's assembled
    output from `GET /v1/streams/{id}/result`."""
    requests = [("GET", f"/v1/streams/{sid}/result", b"") for sid, _ in streams]
    answers = await loadgen.fetch_all(HOST, port, requests, concurrency=32, timeout_s=timeout_s)
    mismatches: list[str] = []
    statuses: dict[str, int] = {}
    unanswered = 0
    for (sid, text), answer in zip(streams, answers, strict=True):
        if answer is None:
            unanswered += 1
            continue
        if answer.status != 200:
            mismatches.append(f"{sid}: /result answered {answer.status}")
            continue
        result = answer.json()
        statuses[result["status"]] = statuses.get(result["status"], 0) + 1
        choices = (result.get("output") or {}).get("choices") or [{}]
        stored = (choices[0].get("message") or {}).get("content") or ""
        if stored != text:
            mismatches.append(
                f"{sid}: client got {len(text)} chars, /result holds {len(stored)} "
                f"(first difference at {first_difference(text, stored)})"
            )
    return {
        "checked": len(streams) - unanswered,
        "unanswered": unanswered,
        "mismatches": len(mismatches),
        "examples": mismatches[:5],
        "statuses": statuses,
    }


def first_difference(a: str, b: str) -> int:
    return next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )


# -- 1. one client, time to first token -------------------------------------------------------


async def bench_ttft(spool_port: int, upstream_port: int, pairs: int) -> dict[str, Any]:
    direct_client = loadgen.Client(HOST, upstream_port)
    spool_client = loadgen.Client(HOST, spool_port)
    direct, spool = Tally(), Tally()
    expect = expected_text(TOKENS)

    async def one(is_spool: bool, tally: Tally | None) -> None:
        client, body = (spool_client, SPOOL_BODY) if is_spool else (direct_client, DIRECT_BODY)
        response = await client.request("POST", CHAT, body, JSON_HEADERS)
        if tally is not None:
            tally.add(response, is_spool, expect)

    try:
        for i in range(WARMUP_PAIRS + pairs):
            measured = i >= WARMUP_PAIRS
            order = (False, True) if i % 2 == 0 else (True, False)  # neither always goes first
            for is_spool in order:
                await one(is_spool, (spool if is_spool else direct) if measured else None)
    finally:
        direct_client.close()
        spool_client.close()
    return {"direct": direct, "spool": spool}


# -- 2 and 4. fifty clients -------------------------------------------------------------------


async def load_phase(
    port: int, body: bytes, is_spool: bool, clients: int, duration_s: float, per_client: int
) -> Tally:
    """`clients` keep-alive clients each sending streamed requests back to back, for
    `per_client` requests each or else until `duration_s` has passed."""
    tally = Tally()
    expect = expected_text(TOKENS)
    pool = await loadgen.open_clients(HOST, port, clients)
    try:
        # One unmeasured request per client, so the measured phase starts warm.
        await asyncio.gather(*(c.request("POST", CHAT, body, JSON_HEADERS) for c in pool))
        start = time.perf_counter()
        deadline = start + duration_s

        async def drive(client: loadgen.Client) -> None:
            sent = 0
            while (sent < per_client) if per_client else (time.perf_counter() < deadline):
                tally.add(await client.request("POST", CHAT, body, JSON_HEADERS), is_spool, expect)
                sent += 1

        await asyncio.gather(*(drive(c) for c in pool))
        tally.wall_s = time.perf_counter() - start
    finally:
        for client in pool:
            client.close()
    return tally


class CpuMeter:
    """CPU seconds used by named processes (with their children) between two snapshots."""

    def __init__(self, pids: dict[str, int], alone: frozenset[str] = frozenset()) -> None:
        self.pids = pids
        self.alone = alone  # names whose children are counted apart
        self.used: dict[str, float] = dict.fromkeys(pids, 0.0)
        self.wall = 0.0

    @staticmethod
    def _cpu(pid: int, children: bool = True) -> float:
        try:
            root = psutil.Process(pid)
            total = 0.0
            for proc in [root, *(root.children(recursive=True) if children else [])]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.Error:
            return 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        mark = {name: self._cpu(pid, name not in self.alone) for name, pid in self.pids.items()}
        since = time.perf_counter()
        try:
            yield
        finally:
            self.wall += time.perf_counter() - since
            for name, pid in self.pids.items():
                self.used[name] += self._cpu(pid, name not in self.alone) - mark[name]

    def shares(self) -> dict[str, float]:
        """Each process's CPU use as a share of one core over the measured time."""
        return {name: used / self.wall for name, used in self.used.items()} if self.wall else {}


async def bench_load(
    spool_port: int,
    upstream_port: int,
    args: argparse.Namespace,
    cpu: CpuMeter,
) -> dict[str, Tally]:
    direct, spool = Tally(), Tally()
    for _ in range(args.rounds):
        direct.merge(
            await load_phase(
                upstream_port, DIRECT_BODY, False, CLIENTS, args.duration, args.requests
            )
        )
        with cpu.measure():
            spool.merge(
                await load_phase(
                    spool_port, SPOOL_BODY, True, CLIENTS, args.duration, args.requests
                )
            )
    return {"direct": direct, "spool": spool}


# -- 3. open streams on one API process -------------------------------------------------------


def family(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def rss_bytes(pid: int) -> int:
    total = 0
    for proc in family(pid):
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def connections_to(pid: int, port: int) -> int:
    count = 0
    for proc in family(pid):
        with contextlib.suppress(psutil.Error):
            lister = getattr(proc, "net_connections", None) or proc.connections
            count += sum(1 for c in lister(kind="tcp") if c.raddr and c.raddr.port == port)
    return count


def outcome(response: loadgen.Response) -> str:
    """How a held stream ended: its finish reason, or its error's code."""
    if response.error is not None:
        error = response.error
        if isinstance(error, dict):
            return f"error {error.get('code') or error.get('type') or error.get('message')}"
        return f"error {str(error)[:60]}"
    if not response.done:
        return "no [DONE]"
    return response.finish_reason or "no finish reason"


async def bench_open_streams(
    api: SpoolProcess,
    worker: SpoolProcess,
    redis_port: int,
    args: argparse.Namespace,
    cpu: CpuMeter,
) -> dict[str, Any]:
    assert api.port is not None
    n = args.streams
    body = orjson.dumps(chat_body(SLOW_MODEL, 1000))
    out: dict[str, Any] = {"streams": n}
    rss_before = rss_bytes(api.process.pid)
    out["redis_connections_before"] = connections_to(api.process.pid, redis_port)
    clients = [loadgen.Client(HOST, api.port) for _ in range(n)]
    responses: list[loadgen.Response | None] = [None] * n
    failures: list[str] = []  # connections that broke
    never_streamed = 0  # answers that ended before their first content
    first = 0
    last_first_at = 0.0
    settled = asyncio.Event()
    gate = asyncio.Semaphore(512)  # connection attempts in flight

    def check_settled() -> None:
        if first + len(failures) + never_streamed >= n:
            settled.set()

    def on_first(_: loadgen.Response) -> None:
        nonlocal first, last_first_at
        first += 1
        last_first_at = time.perf_counter()
        check_settled()

    async def hold(i: int) -> loadgen.Response | None:
        nonlocal never_streamed
        response: loadgen.Response | None = None
        try:
            async with gate:
                connection = await clients[i].connect()
            answer = connection.request("POST", CHAT, body, JSON_HEADERS, on_first)
            response = responses[i] = connection.response
            await answer
        except (OSError, loadgen.HTTPError) as exc:
            failures.append(f"stream {i}: {exc!r}")
            if response is None or response.ttft is None:
                check_settled()
            return None
        if response.ttft is None:
            never_streamed += 1
            check_settled()
        return response

    start = time.perf_counter()
    tasks = [asyncio.create_task(hold(i)) for i in range(n)]
    with cpu.measure():
        try:
            await asyncio.wait_for(settled.wait(), args.open_timeout)
        except TimeoutError:
            out["timed_out"] = True
    out["cpu_share_opening"] = cpu.shares()
    out["streaming"] = first
    out["all_streaming_after_s"] = (last_first_at - start) if first == n else None
    out["streaming_after_s"] = time.perf_counter() - start
    await asyncio.sleep(1.0)
    rss_open = rss_bytes(api.process.pid)
    out["rss_before_mib"] = rss_before / 2**20
    out["rss_open_mib"] = rss_open / 2**20
    out["kib_per_stream"] = (rss_open - rss_before) / n / 1024
    out["redis_connections"] = connections_to(api.process.pid, redis_port)
    out["worker_redis_connections"] = connections_to(worker.process.pid, redis_port)

    ids = [r.stream_id for r in responses if r is not None and r.stream_id]
    cancel_start = time.perf_counter()
    cancels = await loadgen.fetch_all(
        HOST,
        api.port,
        [("POST", f"/v1/streams/{sid}/cancel", b"") for sid in ids],
        concurrency=64,
        timeout_s=args.open_timeout,
    )
    out["cancels_sent"] = len(ids)
    out["cancels_unanswered"] = sum(1 for c in cancels if c is None)
    refused = [c for c in cancels if c is not None and c.status != 200]
    out["cancels_refused"] = len(refused)
    out["cancels_refused_examples"] = [f"{c.status}: {c.body[:200]!r}" for c in refused[:3]]
    out["cancels_answered_after_s"] = time.perf_counter() - cancel_start
    left_s = max(10.0, args.open_timeout - (time.perf_counter() - cancel_start))
    done, pending = await asyncio.wait(tasks, timeout=left_s)
    out["cancel_to_all_ended_s"] = time.perf_counter() - cancel_start
    for task in pending:
        task.cancel()
    ended = [r for t in done if not t.cancelled() and (r := t.result()) is not None]
    outcomes: dict[str, int] = {}
    for response in ended:
        outcomes[outcome(response)] = outcomes.get(outcome(response), 0) + 1
    out["ttft_ms"] = ms([r.ttft for r in responses if r is not None and r.ttft is not None])
    out["ended"] = len(ended)
    out["ended_cancelled"] = outcomes.get("cancelled", 0)
    out["outcomes"] = outcomes
    out["not_ended"] = len(pending)
    out["never_streamed"] = never_streamed
    out["failures"] = len(failures)
    out["failure_examples"] = failures[:5]
    for client in clients:
        client.close()

    sample = [r for r in ended if r.stream_id]
    sample = random.Random(7).sample(sample, min(len(sample), args.open_sample))
    out["check"] = await check_results(
        api.port, [(r.stream_id or "", r.text) for r in sample], args.open_timeout
    )
    return out


# -- processes --------------------------------------------------------------------------------


def raise_file_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the mock upstream exited with status {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError("the mock upstream never listened")


class ProcessesUnsupported(Exception):
    """`spool api/worker --processes N` is refused by this version of the CLI."""


def rejected_flag(proc: SpoolProcess) -> bool:
    return proc.process.poll() == 2 and "unrecognized arguments" in proc.log()


def start_cluster(
    redis_url: str, config: Path, workdir: Path, processes: int
) -> tuple[SpoolProcess, SpoolProcess]:
    """A worker and an API, each `processes` processes, once the API is ready."""
    worker = start_worker(redis_url, config, workdir, processes=processes)
    try:
        api = start_api(redis_url, config, workdir, processes=processes)
    except RuntimeError as exc:
        rejected = "unrecognized arguments" in str(exc) or rejected_flag(worker)
        stop_all([worker])
        if processes > 1 and rejected:
            raise ProcessesUnsupported from None
        raise
    time.sleep(0.2)
    if processes > 1 and rejected_flag(worker):
        stop_all([api, worker])
        raise ProcessesUnsupported
    try:
        wait_ready(api.url, timeout_s=30)
    except RuntimeError:
        stop_all([api, worker])
        raise
    return api, worker


def stop_all(procs: list[SpoolProcess]) -> None:
    """Stops each process; children a supervisor left behind are killed too."""
    for proc in procs:
        try:
            children = psutil.Process(proc.process.pid).children(recursive=True)
        except psutil.Error:
            children = []
        proc.stop()
        for child in children:
            with contextlib.suppress(psutil.Error):
                child.kill()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    workdir: Path
    redis: EmbeddedRedis
    upstream_port: int
    upstream: subprocess.Popen[bytes]
    config: Path
    figures: dict[str, Any] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    def single(self) -> None:
        api, worker = start_cluster(self.redis.url, self.config, self.workdir, 1)
        assert api.port is not None
        try:
            ttft = loadgen.run(bench_ttft(api.port, self.upstream_port, self.args.ttft_requests))
            self.record("ttft", ttft, api.port)
            cpu = self.meter(api, worker)
            before = commands_served([self.redis.url])
            load = loadgen.run(bench_load(api.port, self.upstream_port, self.args, cpu))
            self.record("load", load, api.port)
            self.figures["load"]["cpu_share"] = cpu.shares()
            self.figures["load"]["redis_commands"] = served_since(before)
            if not self.args.skip_open:
                assert self.redis.port is not None
                cpu = self.meter(api, worker)
                held = loadgen.run(bench_open_streams(api, worker, self.redis.port, self.args, cpu))
                self.figures["open"] = held
                if held["check"]["mismatches"] or held["check"]["unanswered"]:
                    self.failed.append(
                        f"open streams: {held['check']['mismatches']} mismatches,"
                        f" {held['check']['unanswered']} /result requests unanswered"
                    )
                if held["failures"] or held["not_ended"] or held["streaming"] < held["streams"]:
                    self.failed.append("open streams: not every stream opened, streamed, ended")
                others = {k: v for k, v in held["outcomes"].items() if k != "cancelled"}
                if others:
                    self.failed.append(f"open streams: cancelled streams ended otherwise: {others}")
        finally:
            stop_all([api, worker])

    def multi(self) -> None:
        # Jobs and streams the first cluster left behind (retried, reaped, expiring) would
        # otherwise be work for this one.
        with redis_client.Redis.from_url(self.redis.url) as client:
            client.flushall()
        try:
            api, worker = start_cluster(self.redis.url, self.config, self.workdir, 2)
        except ProcessesUnsupported:
            self.figures["multi"] = {"unsupported": True}
            return
        assert api.port is not None
        try:
            cpu = self.meter(api, worker)
            load = loadgen.run(bench_load(api.port, self.upstream_port, self.args, cpu))
            self.record("multi", load, api.port)
            self.figures["multi"]["cpu_share"] = cpu.shares()
        finally:
            stop_all([api, worker])

    def cluster(self) -> None:
        """The load of `single`, the streams on a 3-master Redis Cluster."""
        with redis_client.Redis.from_url(self.redis.url) as client:
            client.flushall()
        topology = ClusterSet(self.workdir / "cluster", replicas_each=0).start()
        settings = yaml_settings(self.config)
        models = settings.pop("models")
        config = write_config(
            self.workdir / "spool-cluster.yaml", models, **settings, queue_url=self.redis.url
        )
        try:
            api, worker = start_cluster(topology.url, config, self.workdir, 1)
            assert api.port is not None
            try:
                nodes = [f"redis://{n.ip}:{n.port}/0" for n in topology.nodes]
                before = commands_served([self.redis.url, *nodes])
                cpu = self.meter(api, worker)
                load = loadgen.run(bench_load(api.port, self.upstream_port, self.args, cpu))
                self.record("cluster", load, api.port)
                self.figures["cluster"]["cpu_share"] = cpu.shares()
                self.figures["cluster"]["redis_commands"] = served_since(before)
            finally:
                stop_all([api, worker])
        finally:
            topology.stop()

    def meter(self, api: SpoolProcess, worker: SpoolProcess) -> CpuMeter:
        assert self.redis.process is not None
        return CpuMeter(
            {
                "api": api.process.pid,
                "worker": worker.process.pid,
                "redis": self.redis.process.pid,
                "upstream": self.upstream.pid,
                "client": os.getpid(),
            },
            alone=frozenset({"client"}),
        )

    def record(self, name: str, sides: dict[str, Tally], port: int) -> None:
        direct, spool = sides["direct"], sides["spool"]
        check = loadgen.run(check_results(port, spool.to_check))
        self.figures[name] = {"direct": direct.figures(), "spool": spool.figures(), "check": check}
        for side, tally in sides.items():
            if tally.broken or tally.upstream_mismatches:
                self.failed.append(f"{name} {side}: broken or wrong streams")
        if check["mismatches"]:
            self.failed.append(f"{name}: {check['mismatches']} client/result mismatches")
        if check["unanswered"]:
            self.failed.append(f"{name}: {check['unanswered']} /result requests unanswered")


def commands_served(urls: list[str]) -> dict[str, int]:
    """Commands each Redis has served so far (INFO stats), by URL."""
    counts = {}
    for url in urls:
        with redis_client.Redis.from_url(url) as client:
            counts[url] = int(client.info("stats")["total_commands_processed"])
    return counts


def served_since(before: dict[str, int]) -> dict[str, int]:
    now = commands_served(list(before))
    return {url.split("//")[1].rsplit("/", 1)[0]: now[url] - n for url, n in before.items()}


def yaml_settings(config: Path) -> dict[str, Any]:
    import yaml

    settings: dict[str, Any] = yaml.safe_load(config.read_text())
    return settings


def start_run(args: argparse.Namespace, workdir: Path) -> Run:
    redis = EmbeddedRedis(workdir / "redis", appendonly=False)
    redis.start()
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tests.bench_upstream", "--port", str(upstream_port)], cwd=ROOT
    )
    try:
        wait_listening(upstream_port, upstream)
    except RuntimeError:
        upstream.kill()
        redis.stop()
        raise
    models = {
        MOCK_MODEL: {
            "provider": "openai",
            "base_url": f"http://{HOST}:{upstream_port}/v1",
            "model": UPSTREAM_MODEL,
        },
        SLOW_MODEL: {"provider": "demo", "tokens_per_second": 1, "max_output_tokens": 1000},
    }
    config = write_config(
        workdir / "spool.yaml",
        models,
        worker_max_jobs=max(args.streams, CLIENTS) + 100,
        keepalive_interval_s=15,
        auth_enabled=False,
        upstream_allowlist=HOST,
        retention_s=3600,
    )
    return Run(args, workdir, redis, upstream_port, upstream, config)


# -- the table --------------------------------------------------------------------------------


Figure = float | None


def fmt_ms(value: Figure) -> str:
    return "n/a" if value is None else f"{value:.2f} ms"


def fmt_rate(value: Figure) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def ratio(spool: Figure, direct: Figure) -> str:
    return f"{spool / direct:.2f}x" if spool is not None and direct else "n/a"


def ttft_row(label: str, direct: Figure, spool: Figure) -> list[str]:
    added = f" (+{spool - direct:.2f} ms)" if spool is not None and direct is not None else ""
    return [label, fmt_ms(direct), fmt_ms(spool), ratio(spool, direct) + added]


def load_rows(label: str, figures: dict[str, Any]) -> list[list[str]]:
    d, s = figures["direct"], figures["spool"]
    rows = []
    for key, name in (("chars_per_s", "content chars/s"), ("chunks_per_s", "chunks/s")):
        rows.append([f"{label}: {name}", fmt_rate(d[key]), fmt_rate(s[key]), ratio(s[key], d[key])])
    rows.append(
        [
            f"{label}: requests/s",
            fmt_rate(d["requests_per_s"]),
            fmt_rate(s["requests_per_s"]),
            ratio(s["requests_per_s"], d["requests_per_s"]),
        ]
    )
    for q in ("p50", "p99"):
        rows.append(ttft_row(f"{label}: TTFT {q}", d["ttft_ms"][q], s["ttft_ms"][q]))
    shares = figures.get("cpu_share")
    if shares:
        text = ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
        rows.append([f"{label}: CPU during Spool phases (1 core = 100%)", "", text, ""])
    return rows


def table(figures: dict[str, Any], args: argparse.Namespace) -> str:
    rows: list[list[str]] = []
    if "ttft" in figures:
        d, s = figures["ttft"]["direct"]["ttft_ms"], figures["ttft"]["spool"]["ttft_ms"]
        for q in ("p50", "p99"):
            rows.append(ttft_row(f"1 client: TTFT {q}", d[q], s[q]))
    if "load" in figures:
        rows += load_rows(f"{CLIENTS} clients x {TOKENS} tokens", figures["load"])
    multi = figures.get("multi")
    multi_label = f"2 API + 2 worker, {CLIENTS} clients"
    if multi is None:
        pass
    elif multi.get("unsupported"):
        rows.append([multi_label, "", "n/a (--processes unsupported)", ""])
    else:
        rows += load_rows(multi_label, multi)
    if "cluster" in figures:
        rows += load_rows(f"{CLIENTS} clients, streams on a 3-master cluster", figures["cluster"])
    for name, label in (("load", "one Redis"), ("cluster", "cluster run")):
        served = (figures.get(name) or {}).get("redis_commands")
        if served:
            text = ", ".join(f"{addr} {n:,}" for addr, n in served.items())
            rows.append([f"Redis commands served, {label} (queue Redis first)", "", text, ""])
    held = figures.get("open")
    if held is not None:
        opened = held["streams"]
        after = held["all_streaming_after_s"]
        streaming = (
            f"all streaming after {after:.1f} s"
            if after is not None
            else f"{held['streaming']:,} streaming after {held['streaming_after_s']:.1f} s"
        )
        rows.append(["open streams on 1 API process", "", f"{opened:,}: {streaming}", ""])
        ttft = held["ttft_ms"]
        rows.append(
            [
                "open streams: TTFT p50 / p99 / max / mean",
                "",
                " / ".join("n/a" if v is None else f"{v / 1000:.1f}" for v in ttft.values()) + " s",
                "",
            ]
        )
        shares = held.get("cpu_share_opening")
        if shares:
            text = ", ".join(f"{k} {v:.0%}" for k, v in shares.items())
            rows.append(["open streams: CPU while opening (1 core = 100%)", "", text, ""])
        rows.append(
            [
                "API RSS per open stream",
                "",
                f"{held['kib_per_stream']:.1f} KiB "
                f"({held['rss_before_mib']:.0f} → {held['rss_open_mib']:.0f} MiB)",
                "",
            ]
        )
        rows.append(
            [
                "Redis connections held by that API process",
                "",
                f"{held['redis_connections']:,} (idle: {held['redis_connections_before']})",
                "",
            ]
        )
        ended = f"{held['ended_cancelled']:,} of {opened:,} ended as cancelled"
        others = {k: v for k, v in held["outcomes"].items() if k != "cancelled"}
        if others:
            ended += " (" + ", ".join(f"{v:,} {k}" for k, v in others.items()) + ")"
        if held["not_ended"]:
            ended += f"; {held['not_ended']:,} had not ended"
            ended += f" {held['cancel_to_all_ended_s']:.0f} s after the cancels began"
        else:
            ended += f", all in {held['cancel_to_all_ended_s']:.1f} s"
        if held["cancels_unanswered"] or held["cancels_refused"]:
            ended += (
                f"; cancel requests: {held['cancels_unanswered']:,} unanswered,"
                f" {held['cancels_refused']:,} refused"
            )
        if held["never_streamed"]:
            ended += f"; {held['never_streamed']:,} of them had sent no content yet"
        if held["failures"]:
            ended += f"; {held['failures']:,} connections broke ({held['failure_examples'][0]})"
        rows.append(["cancel all open streams", "", ended, ""])
    checks = []
    direct_bad = 0
    for name in ("ttft", "load", "multi", "cluster"):
        part = figures.get(name) or {}
        if "check" in part:
            checks.append(part["check"])
            direct_bad += part["direct"]["upstream_mismatches"] + part["direct"]["broken"]
    if held is not None:
        checks.append(held["check"])
    checked = sum(c["checked"] for c in checks)
    wrong = sum(c["mismatches"] for c in checks)
    unanswered = sum(c["unanswered"] for c in checks)
    unchecked = f" ({unanswered:,} /result requests unanswered)" if unanswered else ""
    broken = sum(
        (figures.get(n) or {}).get("spool", {}).get("broken", 0)
        + (figures.get(n) or {}).get("spool", {}).get("upstream_mismatches", 0)
        for n in ("ttft", "load", "multi", "cluster")
    )
    rows.append(
        [
            "mismatches: client text vs /result (Spool); vs mock text (direct)",
            f"{direct_bad}",
            f"{wrong} of {checked:,} checked{unchecked}",
            "",
        ]
    )
    rows.append(
        ["broken Spool streams (error, no [DONE], not the mock's text)", "", f"{broken}", ""]
    )
    lines = [
        f"Spool benchmark: {args.ttft_requests} TTFT pairs, {CLIENTS} clients x {TOKENS} tokens "
        + (f"x {args.requests} requests" if args.requests else f"for {args.duration:g} s per phase")
        + f", rounds: {args.rounds}, CPUs: {os.cpu_count()}",
        "",
        "| measure | direct | Spool | Spool/direct |",
        "|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def brief(exc: BaseException) -> str:
    """An exception in a line: its type and the last line of its message (a process's log
    tail ends with the error that stopped it)."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1][:300] if lines else ''}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ttft-requests", type=int, default=300, help="measured 1-client pairs")
    parser.add_argument("--streams", type=int, default=10_000, help="streams held open at once")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per load phase")
    parser.add_argument(
        "--requests", type=int, default=0, help="requests per client per load phase (not time)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="direct+Spool load phase pairs")
    parser.add_argument("--open-sample", type=int, default=500, help="held streams to check")
    parser.add_argument(
        "--open-timeout", type=float, default=120.0, help="seconds for each step of (3)"
    )
    parser.add_argument("--skip-open", action="store_true", help="skip the held streams")
    parser.add_argument("--skip-multi", action="store_true", help="skip 2 API + 2 workers")
    parser.add_argument("--skip-cluster", action="store_true", help="skip the Redis Cluster")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument(
        "--workdir", type=Path, help="keep Redis data, settings and process logs here"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_file_limit()
    with contextlib.ExitStack() as stack:
        if args.workdir is not None:
            args.workdir.mkdir(parents=True, exist_ok=True)
            workdir = args.workdir
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="spool-bench-")))
        run = start_run(args, workdir)
        try:
            steps: list[tuple[str, Callable[[], None]]] = [("single", run.single)]
            if not args.skip_multi:
                steps.append(("multi", run.multi))
            if not args.skip_cluster:
                steps.append(("cluster", run.cluster))
            for name, step in steps:
                try:
                    step()
                except Exception as exc:
                    run.failed.append(f"{name}: {brief(exc)}")
                    print(f"benchmark part {name!r} failed: {exc}", file=sys.stderr)
        finally:
            run.upstream.terminate()
            run.upstream.wait()
            run.redis.stop()
    print()
    print(table(run.figures, args))
    if run.failed:
        print("\nFAILED: " + "; ".join(run.failed))
    if args.json:
        dump = {"args": vars(args), **run.figures, "failed": run.failed}
        args.json.write_text(json.dumps(dump, indent=2, default=str) + "\n")
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
