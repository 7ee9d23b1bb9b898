"""Resuming near the end of a long stream (10,000 events) in every stateful surface, in
process on a real redis-server: the client gets exactly the events after its point, and the
tail reads a bounded number of entries to bring its renderer there, from the snapshots of
its state that tails save as they render (or, for a stream no tail has rendered yet, once
from the start, saving snapshots as it goes)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
import orjson
import pytest
from redis.asyncio import Redis

from api.app import create_app
from api.deps import Services
from api.formats import StatefulRenderer
from api.tail import RENDER_STATE_EVERY, RENDER_STATE_MAX_BYTES, encode_frames
from shared import events as ev
from shared import keys
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings
from shared.sse import RETRY_FIELD, SSEDecoder
from shared.store import Entry, RenderState, Status, StreamStore
from shared.transcript import Transcript

EVENTS = 10_000
RENDER: dict[str, dict[str, Any]] = {
    "anthropic.messages": {"id": "msg_long", "model": "demo"},
    "gemini": {"id": "long", "model": "demo"},
    "simple": {"id": "long", "model": "demo", "created_at": 1_700_000_000.0},
}
# The most entries a resume may read to rebuild its renderer: the entries after the latest
# snapshot before its point, with room for snapshots kept at uneven batch ends.
BOUND = 2 * RENDER_STATE_EVERY


def long_stream() -> list[ev.Event]:
    """Reasoning, text and tool calls taking turns (every turn opens new content blocks),
    ending inside a tool call's fragments, then usage and the finish."""
    events: list[ev.Event] = [ev.Start(model="demo", provider="demo")]
    turn = 0
    while len(events) < EVENTS - 60:
        events += [ev.ReasoningDelta(text=f"think {turn}.{i} ") for i in range(4)]
        events.append(ev.ReasoningDelta(text="", signature=f"sig{turn}"))
        events += [ev.TextDelta(text=f"w{turn}.{i} ") for i in range(25)]
        call = turn % 1000
        events.append(ev.ToolCallDelta(index=call, id=f"call_{turn}", name="get_weather"))
        events += [ev.ToolCallDelta(index=call, arguments=a) for a in ('{"city"', ': "P', 'aris"}')]
        turn += 1
    fragments = ['{"q": "', *["ab"] * 17, '"}']
    events += [ev.TextDelta(text=f"end{i} ") for i in range(EVENTS - len(events) - 22)]
    events.append(ev.ToolCallDelta(index=1000, id="call_last", name="lookup"))
    events += [ev.ToolCallDelta(index=1000, arguments=a) for a in fragments]
    events.append(ev.Usage(input_tokens=12, output_tokens=9000))
    events.append(
        ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=12, output_tokens=9000))
    )
    assert len(events) == EVENTS
    return events


@dataclass
class Api:
    http: httpx.AsyncClient
    store: StreamStore
    services: Services
    read: list[int] = field(default_factory=list)  # entries each catch-up read

    async def stream_of(self, surface: str, events: list[ev.Event]) -> str:
        """A finished stream of `events` created by `surface`, as a worker writes one."""
        stream_id = uuid.uuid4().hex
        await self.store.create(
            stream_id, surface=surface, model="demo", request={}, render=RENDER[surface], owner=""
        )
        await self.store.claim(stream_id, "a1", "w1")
        body, terminal = events[:-1], events[-1]
        assert isinstance(terminal, ev.Finish)
        for at in range(0, len(body), 500):
            await self.store.append(stream_id, "a1", body[at : at + 500], held=at)
        await self.store.finish(
            stream_id,
            "a1",
            status=Status.COMPLETED,
            terminal=terminal,
            transcript=Transcript(finish_reason=terminal.reason),
            held=len(body),
        )
        return stream_id

    async def tail(self, stream_id: str, last_event_id: str | None = None) -> bytes:
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        response = await self.http.get(f"/v1/streams/{stream_id}", headers=headers)
        assert response.status_code == 200, response.text
        await self.saved()
        # The events, without the reconnection delay that leads every response.
        return response.content.removeprefix(RETRY_FIELD)

    async def saved(self) -> None:
        """Wait for the snapshots the tails are saving in the background."""
        saving = [t for t in self.services.background if t.get_name() == "spool-render-state"]
        await asyncio.gather(*saving)


@pytest.fixture
async def api(
    redis: Redis, redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Api]:
    settings = Settings.model_validate(
        {
            "redis_url": redis_server.url.replace("/0", "/1"),  # the `redis` fixture's database
            "auth_enabled": False,
            "stream_maxlen": 50_000,
        }
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        services: Services = app.state.services
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://spool") as http:
            harness = Api(http, StreamStore(redis, settings), services)
            store = services.store
            # Count what each catch-up reads from Redis, whichever way it reads it.
            spied: Callable[..., Awaitable[Any]] = store.read_to_resume
            plain: Callable[..., Awaitable[list[Entry]]] = store.read_range

            async def read_to_resume(*args: Any) -> Any:
                snapshot, entries = await spied(*args)
                harness.read.append(len(entries))
                return snapshot, entries

            async def read_range(*args: Any) -> list[Entry]:
                entries = await plain(*args)
                harness.read.append(len(entries))
                return entries

            monkeypatch.setattr(store, "read_to_resume", read_to_resume)
            monkeypatch.setattr(store, "read_range", read_range)
            yield harness


def wire_events(surface: str, wire: bytes) -> list[tuple[str, bytes]]:
    """(resume id, raw bytes) of each SSE event of a tail's body: the `id:` line, or for
    Gemini the `responseId` its data carries."""
    out: list[tuple[str, bytes]] = []
    for raw in wire.split(b"\n\n")[:-1]:
        decoded = list(SSEDecoder().feed(raw + b"\n\n"))
        assert len(decoded) == 1, raw
        event = decoded[0]
        resume_id = event.id if surface != "gemini" else _gemini_id(event.data)
        out.append((resume_id or "", raw + b"\n\n"))
    return out


def _gemini_id(data: str) -> str:
    return str(orjson.loads(data).get("responseId", ""))


def rendered(surface: str, api: Api, entries: list[Entry]) -> bytes:
    """The whole stream rendered by one renderer from its first event: what a client that
    read it live got."""
    fmt = api.services.formats[surface]
    renderer = fmt.renderer(RENDER[surface])
    return b"".join(
        encode_frames(e.id, renderer.frames(e.id, e.event), with_ids=fmt.sse_ids) for e in entries
    )


@pytest.mark.parametrize("surface", sorted(RENDER))
async def test_resuming_near_the_end_of_a_long_stream_reads_a_bounded_part(
    api: Api, surface: str
) -> None:
    events = long_stream()
    stream_id = await api.stream_of(surface, events)
    entries = await api.store.read_range(stream_id, "-", "+")
    assert [e.event for e in entries] == events
    whole = rendered(surface, api, entries)
    sent = wire_events(surface, whole)
    tag = cast(StatefulRenderer, api.services.formats[surface].renderer(RENDER[surface])).state_tag
    snapshots = keys.render_state_key(stream_id, tag)

    def rest_after(resume_id: str) -> bytes:
        at = max(i for i, (rid, _) in enumerate(sent) if rid == resume_id)
        return b"".join(raw for _, raw in sent[at + 1 :])

    # Read live from the start: the tail saves its renderer's state as it goes.
    assert await api.tail(stream_id) == whole
    assert api.read == []  # a tail from the start rebuilds nothing
    kept = await api.store.redis.zcard(snapshots)
    assert EVENTS // RENDER_STATE_EVERY - 1 <= kept <= EVENTS // RENDER_STATE_EVERY + 1
    # Both times to live read at one moment (MULTI), not a busy moment apart.
    async with api.store.redis.pipeline(transaction=True) as pipe:
        pipe.pttl(snapshots)
        pipe.pttl(keys.stream_key(stream_id))
        snapshots_ttl, stream_ttl = await pipe.execute()
    assert 0 < snapshots_ttl <= stream_ttl + 1

    # Resume at several points near the end (and one in the middle): exactly the rest, from
    # a bounded read. For formats with several events per entry, also inside an entry.
    points = [sent[-k][0] for k in (2, 5, 13, 30)] + [sent[len(sent) // 2][0]]
    points += [rid for rid, _ in sent[-40:] if ":" in rid][:1]
    for resume_id in points:
        api.read.clear()
        assert await api.tail(stream_id, resume_id) == rest_after(resume_id), resume_id
        assert len(api.read) == 1 and 0 < api.read[0] <= BOUND, (resume_id, api.read)

    # A stream no tail has rendered (its snapshots gone): the first resume reads it from
    # the start once, and saves snapshots as it goes; the next ones read a bounded part.
    await api.store.redis.delete(snapshots)
    point = sent[-3][0]
    api.read.clear()
    assert await api.tail(stream_id, point) == rest_after(point)
    assert api.read[0] > EVENTS - 30
    point = sent[-7][0]
    api.read.clear()
    assert await api.tail(stream_id, point) == rest_after(point)
    assert 0 < api.read[0] <= BOUND


async def test_snapshots_are_spaced_and_kept_as_long_as_their_stream(api: Api) -> None:
    stream_id = await api.stream_of(
        "simple", [ev.TextDelta(text="x")] * 40 + [ev.Finish(reason="stop")]
    )
    entries = await api.store.read_range(stream_id, "-", "+")
    snapshots = keys.render_state_key(stream_id, "test.1")

    def at(seq: int) -> RenderState:
        return RenderState(seq, entries[seq - 1].id, b"[%d]" % seq)

    # Another tail's snapshot within the spacing of one already kept is not kept.
    await api.store.save_render_states(stream_id, "test.1", [at(10), at(19), at(20), at(1)], 10)
    assert await api.store.redis.zrange(snapshots, 0, -1) == [at(10).member(), at(20).member()]
    stream_ttl = await api.store.redis.pttl(keys.stream_key(stream_id))
    assert stream_ttl - 1000 < await api.store.redis.pttl(snapshots) <= stream_ttl
    # A resume takes the latest snapshot before its point, and the entries after it.
    for point, (kept, first) in {25: (20, 21), 21: (20, 21), 20: (10, 11), 5: (None, 1)}.items():
        snapshot, read = await api.store.read_to_resume(stream_id, "test.1", entries[point - 1])
        assert snapshot == (at(kept) if kept else None)
        assert [e.seq for e in read] == list(range(first, point + 1))
    # Nothing is kept for a stream that is gone.
    await api.store.redis.delete(keys.stream_key(stream_id), snapshots)
    await api.store.save_render_states(stream_id, "test.1", [at(30)], 10)
    assert not await api.store.redis.exists(snapshots)


@pytest.mark.parametrize("surface", ["gemini", "simple"])
async def test_a_long_tool_call_is_not_copied_into_every_snapshot(api: Api, surface: str) -> None:
    call = [ev.ToolCallDelta(index=0, id="call_1", name="write", arguments='{"text": "')]
    call += [ev.ToolCallDelta(index=0, arguments="x" * 100) for _ in range(1500)]
    call.append(ev.ToolCallDelta(index=0, arguments='"}'))
    texts = [ev.TextDelta(text=f"t{i} ") for i in range(300)]
    events = [*texts, *call, *texts, ev.Finish(reason="stop")]
    stream_id = await api.stream_of(surface, events)
    whole = rendered(surface, api, await api.store.read_range(stream_id, "-", "+"))
    assert await api.tail(stream_id) == whole
    tag = cast(StatefulRenderer, api.services.formats[surface].renderer(RENDER[surface])).state_tag
    kept = await api.store.redis.zrange(keys.render_state_key(stream_id, tag), 0, -1)
    assert kept and all(len(member) <= RENDER_STATE_MAX_BYTES + 64 for member in kept)
    sent = wire_events(surface, whole)
    resume_id = sent[-3][0]
    api.read.clear()
    rest = b"".join(raw for _, raw in sent[-2:])
    assert await api.tail(stream_id, resume_id) == rest
    assert api.read[0] <= BOUND
