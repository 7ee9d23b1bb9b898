"""Snapshots of a stateful renderer's state: a renderer restored from a snapshot taken at
any point of any stream renders the rest of it byte for byte as the renderer that rendered
the whole stream, and as one rebuilt by replaying every event before that point."""

from __future__ import annotations

from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from api.formats import StatefulRenderer, registry
from api.tail import encode_frames
from shared import events as ev
from shared.store import RenderState
from tests.unit.test_properties import (
    BASE,
    RENDER,
    RENDER_EXAMPLE,
    middle_events,
    terminal_events,
    tool_arguments,
)

STATEFUL = sorted(surface for surface, fmt in registry().items() if fmt.stateful)

# Streams with long runs of tool-call fragments, blocks that open and close many times,
# and signature-only reasoning (which opens a thinking block but sends no text).
tool_fragments = st.builds(
    ev.ToolCallDelta,
    index=st.integers(0, 4),
    id=st.none() | st.sampled_from(["call_a", "call_b"]),
    name=st.none() | st.sampled_from(["get_weather", "f"]),
    arguments=tool_arguments,
)
stream_events = st.builds(
    lambda start, middle, end: [*start, *middle, *end],
    st.lists(st.just(ev.Start(model="m", provider="demo")), max_size=1),
    st.lists(
        st.one_of(
            middle_events,
            tool_fragments,
            st.builds(ev.ReasoningDelta, text=st.just(""), signature=st.just("sig")),
        ),
        max_size=40,
    ),
    st.lists(terminal_events, max_size=1),
)


def _wire(surface: str, renderer: Any, entries: list[tuple[str, ev.Event]]) -> bytes:
    fmt = registry()[surface]
    return b"".join(
        encode_frames(entry_id, renderer.frames(entry_id, event), with_ids=fmt.sse_ids)
        for entry_id, event in entries
    )


def _fresh(surface: str, render: dict[str, Any]) -> StatefulRenderer:
    return cast(StatefulRenderer, registry()[surface].renderer(render))


def test_every_stateful_format_can_save_and_restore_its_state() -> None:
    assert {"anthropic.messages", "gemini", "simple"} <= set(STATEFUL)
    tags = []
    for surface in STATEFUL:
        renderer = registry()[surface].renderer(RENDER_EXAMPLE[surface])
        assert callable(getattr(renderer, "snapshot", None)), surface
        assert callable(getattr(renderer, "restore", None)), surface
        tags.append(getattr(renderer, "state_tag", None))
    assert all(isinstance(t, str) and " " not in t for t in tags)
    assert len(set(tags)) == len(tags)


@pytest.mark.parametrize("surface", STATEFUL)
@settings(BASE, max_examples=120)
@given(data=st.data(), events=stream_events)
def test_a_restored_renderer_renders_the_rest_identically(
    surface: str, data: st.DataObject, events: list[ev.Event]
) -> None:
    render = data.draw(RENDER[surface], label="render")
    entries = [(f"{1_700_000_000_000 + i}-0", e) for i, e in enumerate(events)]
    whole = _wire(surface, _fresh(surface, render), entries)
    live = _fresh(surface, render)
    for k in range(len(entries) + 1):
        # The live tail's state after entries[:k], through the bytes Redis keeps of it.
        entry_id = entries[k - 1][0] if k else "0-0"
        kept = RenderState.from_member(RenderState(k, entry_id, live.snapshot()).member())
        assert (kept.seq, kept.entry_id) == (k, entry_id)
        restored = _fresh(surface, render)
        restored.restore(kept.state)
        assert restored.snapshot() == kept.state
        replayed = _fresh(surface, render)
        for replay_id, event in entries[:k]:
            replayed.frames(replay_id, event)
        rest = _wire(surface, restored, entries[k:])
        assert rest == _wire(surface, replayed, entries[k:])
        assert whole.endswith(rest)
        assert _wire(surface, _fresh(surface, render), entries[:k]) + rest == whole
        if k < len(entries):
            live.frames(*entries[k])


@pytest.mark.parametrize("surface", STATEFUL)
def test_a_snapshot_holds_any_tool_call_text(surface: str) -> None:
    renderer = _fresh(surface, RENDER_EXAMPLE[surface])
    odd = ' {"a": "x y\nz \\u0000 é 日本 \U0001f600"} '
    renderer.frames("1-0", ev.ToolCallDelta(index=3, id="c 1", name="n m", arguments=odd))
    member = RenderState(1, "1-0", renderer.snapshot()).member()
    restored = _fresh(surface, RENDER_EXAMPLE[surface])
    restored.restore(RenderState.from_member(member).state)
    finish = ev.Finish(reason="tool_calls")
    assert restored.frames("2-0", finish) == renderer.frames("2-0", finish)


def test_held_calls_keep_their_signatures_across_a_snapshot() -> None:
    from api.formats import restore_calls, snapshot_calls
    from shared.transcript import ToolCall

    held = {0: ToolCall(0, "c0", "f", '{"a"', "sig-0"), 1: ToolCall(1, "c1", "g", "{}")}
    assert restore_calls(snapshot_calls(held)) == held
