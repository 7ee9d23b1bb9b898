"""What a resume costs the API process: CPU to resume a 10,000-event stream near its start,
in its middle and near its end, in every stateful surface.

    .venv/bin/python tests/bench_resume.py [--events 10000] [--repeats 20]

Runs the API app in this process on its own redis-server, writes each stream as a worker
would, and measures this process' CPU time (Redis' own is not counted) for:
  - catch-up: `Tail.prepare`, which brings the surface's renderer up to the resume point;
  - request: the whole `GET /v1/streams/{id}` with `Last-Event-ID` (catch-up, then the
    rest of the stream rendered and sent).
First once before any tail has read the stream ("cold"), then after one tail read it from
the start, as the client that created it would have (medians of `--repeats` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from api.app import create_app
from api.deps import Services
from api.tail import ResumePoint, Tail
from shared import events as ev
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings
from shared.store import Entry, Status, StreamStore
from shared.transcript import Transcript

RENDER: dict[str, dict[str, Any]] = {
    "anthropic.messages": {"id": "msg_bench", "model": "demo"},
    "gemini": {"id": "bench", "model": "demo"},
    "simple": {"id": "bench", "model": "demo", "created_at": 1_700_000_000.0},
}


def stream_events(n: int) -> list[ev.Event]:
    """Text with a tool call and a reasoning run every 200 events, then the finish."""
    events: list[ev.Event] = [ev.Start(model="demo", provider="demo")]
    while len(events) < n - 1:
        k = len(events)
        if k % 200 == 0:
            events.append(ev.ToolCallDelta(index=k // 200, id=f"call_{k}", name="f"))
            events.append(ev.ToolCallDelta(index=k // 200, arguments='{"a": 1}'))
        elif k % 200 < 10:
            events.append(ev.ReasoningDelta(text=f"r{k} "))
        else:
            events.append(ev.TextDelta(text=f"t{k} "))
    events = events[: n - 1]
    events.append(ev.Finish(reason="stop", usage=ev.Usage(input_tokens=5, output_tokens=n)))
    return events


async def write_stream(store: StreamStore, surface: str, events: list[ev.Event]) -> str:
    stream_id = uuid.uuid4().hex
    await store.create(
        stream_id, surface=surface, model="demo", request={}, render=RENDER[surface], owner=""
    )
    await store.claim(stream_id, "a1", "w1")
    body, terminal = events[:-1], events[-1]
    assert isinstance(terminal, ev.Finish)
    for at in range(0, len(body), 1000):
        await store.append(stream_id, "a1", body[at : at + 1000], held=at)
    await store.finish(
        stream_id,
        "a1",
        status=Status.COMPLETED,
        terminal=terminal,
        transcript=Transcript(finish_reason="stop"),
        held=len(body),
    )
    return stream_id


async def cpu_ms(work: Callable[[str], Awaitable[object]], point: str) -> float:
    started = time.process_time()
    await work(point)
    return (time.process_time() - started) * 1000


async def settle(services: Services) -> None:
    """Let the background work the last request left (snapshot writes) finish."""
    await asyncio.gather(*list(services.background), return_exceptions=True)


async def measure_surface(
    services: Services, http: httpx.AsyncClient, surface: str, events: int, repeats: int
) -> list[list[str]]:
    store = services.store
    stream_id = await write_stream(store, surface, stream_events(events))
    entries: list[Entry] = await store.read_range(stream_id, "-", "+")
    record = await store.get(stream_id)
    fmt = services.formats[surface]
    near_end = entries[-11].id
    points = {
        "start (after event 1)": entries[0].id,
        f"middle (after {len(entries) // 2:,})": entries[len(entries) // 2 - 1].id,
        f"end (after {len(entries) - 10:,})": near_end,
    }

    async def prepare(point: str) -> None:
        await Tail(services, record, fmt).prepare(ResumePoint.parse(point))

    async def request(point: str) -> None:
        headers = {"Last-Event-ID": point}
        response = await http.get(f"/v1/streams/{stream_id}", headers=headers)
        assert response.status_code == 200, response.text

    cold = await cpu_ms(request, near_end)
    await settle(services)
    rows = [[surface, "end, cold: no tail has read the stream", "", f"{cold:.1f}"]]
    await http.get(f"/v1/streams/{stream_id}")  # the creating client, reading live
    await settle(services)
    for label, point in points.items():
        catch_up, whole = [], []
        for _ in range(repeats):
            catch_up.append(await cpu_ms(prepare, point))
            whole.append(await cpu_ms(request, point))
            await settle(services)
        median_catch_up, median_whole = statistics.median(catch_up), statistics.median(whole)
        rows.append([surface, label, f"{median_catch_up:.2f}", f"{median_whole:.1f}"])
    return rows


async def measure(events: int, repeats: int, redis_url: str) -> list[list[str]]:
    settings = Settings.model_validate(
        {"redis_url": redis_url, "auth_enabled": False, "stream_maxlen": events * 2}
    )
    app = create_app(settings)
    rows: list[list[str]] = []
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://spool") as http:
            for surface in sorted(RENDER):
                rows += await measure_surface(services, http, surface, events, repeats)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="spool-bench-resume-") as workdir:
        server = EmbeddedRedis(Path(workdir), appendonly=False)
        server.start()
        try:
            rows = asyncio.run(measure(args.events, args.repeats, server.url))
        finally:
            server.stop()
    print(f"\nResume CPU of the API process, {args.events:,}-event streams (median ms)\n")
    print("| surface | resume point | catch-up (Tail.prepare) | whole request |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
