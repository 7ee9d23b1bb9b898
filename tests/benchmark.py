"""Spool's benchmark: what the broker adds, measured side by side in one run.

    .venv/bin/python tests/benchmark.py [--ttft-requests 300] [--streams 500]

Starts its own redis-server, a mock OpenAI-compatible upstream (its own process), one API
process and one worker process, then measures:
  1. time to first token calling the mock directly vs through Spool (interleaved requests);
  2. chunks per second end to end (demo model at full speed, 1 and 8 concurrent streams);
  3. concurrent open streams on one API process, and its memory per open stream.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.embedded_redis import EmbeddedRedis, free_port
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config

PROMPT = [{"role": "user", "content": "benchmark"}]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def first_token_ms(client: httpx.AsyncClient, url: str, model: str) -> float:
    """Milliseconds from sending the request to reading the first content delta."""
    body = {"model": model, "messages": PROMPT, "stream": True}
    start = time.perf_counter()
    elapsed: float | None = None
    async with client.stream("POST", url, json=body) as response:
        async for line in response.aiter_lines():
            if (
                elapsed is None
                and line.startswith("data: {")
                and '"content":"' in line
                and '"content":""' not in line
            ):
                elapsed = (time.perf_counter() - start) * 1000
    if elapsed is None:
        raise RuntimeError(f"no content from {url}")
    return elapsed


async def bench_ttft(spool: str, upstream: str, n: int) -> dict[str, Any]:
    direct: list[float] = []
    broker: list[float] = []
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(20):  # warm both paths' connections and code
            await first_token_ms(client, f"{upstream}/v1/chat/completions", "instant")
            await first_token_ms(client, f"{spool}/v1/chat/completions", "bench-mock")
        for _ in range(n):
            direct.append(
                await first_token_ms(client, f"{upstream}/v1/chat/completions", "instant")
            )
            broker.append(
                await first_token_ms(client, f"{spool}/v1/chat/completions", "bench-mock")
            )
    return {
        "direct_p50": statistics.median(direct),
        "direct_p99": percentile(direct, 0.99),
        "spool_p50": statistics.median(broker),
        "spool_p99": percentile(broker, 0.99),
        "added_p50": statistics.median(broker) - statistics.median(direct),
        "added_p99": percentile(broker, 0.99) - percentile(direct, 0.99),
    }


async def count_chunks(client: httpx.AsyncClient, spool: str, model: str) -> int:
    body = {"model": model, "messages": PROMPT, "stream": True}
    chunks = 0
    async with client.stream("POST", f"{spool}/v1/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if line.startswith("data: {"):
                chunks += 1
    return chunks


async def bench_throughput(spool: str, concurrency: int) -> float:
    async with httpx.AsyncClient(timeout=120) as client:
        await count_chunks(client, spool, "bench-fast")
        start = time.perf_counter()
        counts = await asyncio.gather(
            *(count_chunks(client, spool, "bench-fast") for _ in range(concurrency))
        )
        return sum(counts) / (time.perf_counter() - start)


async def bench_open_streams(spool: str, api_pid: int, streams: int) -> dict[str, Any]:
    api = psutil.Process(api_pid)
    limits = httpx.Limits(max_connections=streams + 10)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        await count_chunks(client, spool, "bench-fast")
        rss_before = api.memory_info().rss
        opened = asyncio.Event()
        first_chunks = 0
        stream_ids: list[str] = []

        async def hold() -> int:
            nonlocal first_chunks
            body = {"model": "bench-slow", "messages": PROMPT, "stream": True}
            received = 0
            async with client.stream("POST", f"{spool}/v1/chat/completions", json=body) as resp:
                stream_ids.append(resp.headers["x-spool-stream-id"])
                async for line in resp.aiter_lines():
                    if line.startswith("data: {") and '"content":"' in line:
                        received += 1
                        if received == 2:
                            first_chunks += 1
                            if first_chunks == streams:
                                opened.set()
                    if line == "data: [DONE]":
                        break
            return received

        tasks = [asyncio.create_task(hold()) for _ in range(streams)]
        start = time.perf_counter()
        await asyncio.wait_for(opened.wait(), 120)
        all_open_s = time.perf_counter() - start
        await asyncio.sleep(1.0)
        rss_open = api.memory_info().rss
        await asyncio.gather(
            *(client.post(f"{spool}/v1/streams/{sid}/cancel") for sid in stream_ids)
        )
        received = await asyncio.gather(*tasks)
    return {
        "streams": streams,
        "all_streaming_after_s": all_open_s,
        "rss_before_mb": rss_before / 2**20,
        "rss_open_mb": rss_open / 2**20,
        "kb_per_stream": (rss_open - rss_before) / streams / 1024,
        "min_chunks_per_stream": min(received),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--ttft-requests", type=int, default=300)
    parser.add_argument("--streams", type=int, default=500)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="spool-bench-") as tmp:
        workdir = Path(tmp)
        redis = EmbeddedRedis(workdir / "redis", appendonly=False)
        redis.start()
        upstream_port = free_port()
        upstream = subprocess.Popen(
            [sys.executable, "-m", "tests.mock_upstream", "--port", str(upstream_port)],
            cwd=Path(__file__).resolve().parent.parent,
        )
        upstream_url = f"http://127.0.0.1:{upstream_port}"
        models = {
            "bench-mock": {
                "provider": "openai",
                "base_url": f"{upstream_url}/v1",
                "model": "instant",
            },
            "bench-fast": {"provider": "demo", "tokens_per_second": 0, "max_output_tokens": 5000},
            "bench-slow": {"provider": "demo", "tokens_per_second": 2, "max_output_tokens": 1000},
        }
        config = write_config(
            workdir / "spool.yaml",
            models,
            worker_max_jobs=2000,
            keepalive_interval_s=15,
            auth_enabled=False,
            upstream_allowlist="127.0.0.1",
        )
        procs: list[SpoolProcess] = []
        try:
            procs.append(start_worker(redis.url, config, workdir))
            api = start_api(redis.url, config, workdir)
            procs.append(api)
            wait_ready(api.url)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    httpx.post(f"{upstream_url}/v1/chat/completions", json={"model": "instant"})
                    break
                except httpx.HTTPError:
                    time.sleep(0.05)

            ttft = asyncio.run(bench_ttft(api.url, upstream_url, args.ttft_requests))
            single = asyncio.run(bench_throughput(api.url, 1))
            eight = asyncio.run(bench_throughput(api.url, 8))
            held = asyncio.run(bench_open_streams(api.url, api.process.pid, args.streams))
        finally:
            for proc in procs:
                proc.stop()
            upstream.terminate()
            upstream.wait()
            redis.stop()

    print(f"\nSpool benchmark ({args.ttft_requests} TTFT pairs, {args.streams} held streams)\n")
    print("| measure | value |")
    print("|---|---|")
    print(
        f"| TTFT direct to mock upstream, p50 / p99 | {ttft['direct_p50']:.2f} / {ttft['direct_p99']:.2f} ms |"
    )
    print(
        f"| TTFT through Spool, p50 / p99 | {ttft['spool_p50']:.2f} / {ttft['spool_p99']:.2f} ms |"
    )
    print(
        f"| **TTFT added by Spool, p50 / p99** | **{ttft['added_p50']:.2f} / {ttft['added_p99']:.2f} ms** |"
    )
    print(f"| chunks/s end to end, 1 stream | {single:,.0f} |")
    print(f"| chunks/s end to end, 8 concurrent streams | {eight:,.0f} |")
    print(
        f"| open streams on one API process | {held['streams']} (all streaming after {held['all_streaming_after_s']:.1f} s) |"
    )
    print(
        f"| API memory per open stream | {held['kb_per_stream']:.1f} KiB (RSS {held['rss_before_mb']:.0f} → {held['rss_open_mb']:.0f} MiB) |"
    )


if __name__ == "__main__":
    main()
