"""Unit tests for api/formats/openai_chat.py and the frame/resume helpers in api/tail.py."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from api.formats import Frame, registry
from api.formats.openai_chat import OpenAIChatFormat, usage_object
from api.tail import ResumePoint, encode_frames, frame_ids
from shared import events as ev
from shared.errors import InvalidResumeId, ModelNotFound, StoreUnavailable
from shared.sse import ServerSentEvent, SSEDecoder, format_event
from shared.store import JobRecord, Status
from shared.transcript import Transcript

RENDER: dict[str, Any] = {
    "id": "chatcmpl-abc123",
    "created": 1_700_000_000,
    "model": "demo",
    "include_usage": True,
}
RENDER_NO_USAGE: dict[str, Any] = {**RENDER, "include_usage": False}

FMT = OpenAIChatFormat()


def parsed(frames: list[Frame]) -> list[Any]:
    return [f.data.decode() if f.data == b"[DONE]" else orjson.loads(f.data) for f in frames]


def only_chunk(event: ev.Event, render: dict[str, Any] = RENDER) -> dict[str, Any]:
    frames = FMT.frames(event, render)
    assert len(frames) == 1
    assert frames[0].event is None
    chunk = orjson.loads(frames[0].data)
    assert isinstance(chunk, dict)
    return chunk


def assert_chunk_envelope(chunk: dict[str, Any], render: dict[str, Any] = RENDER) -> None:
    assert chunk["object"] == "chat.completion.chunk"
    assert chunk["id"] == render["id"]
    assert chunk["created"] == render["created"]
    assert chunk["model"] == render["model"]


def test_registry_has_openai_chat() -> None:
    assert isinstance(registry()["openai.chat"], OpenAIChatFormat)
    assert FMT.surface == "openai.chat"


def test_start_is_role_chunk() -> None:
    chunk = only_chunk(ev.Start(model="demo", provider="demo"))
    assert_chunk_envelope(chunk)
    assert chunk["choices"] == [
        {
            "index": 0,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }
    ]


def test_text_delta_is_content_chunk() -> None:
    chunk = only_chunk(ev.TextDelta(text="héllo 日本語 🎉"))
    assert_chunk_envelope(chunk)
    assert len(chunk["choices"]) == 1
    choice = chunk["choices"][0]
    assert choice["index"] == 0
    assert choice["delta"] == {"content": "héllo 日本語 🎉"}
    assert choice["finish_reason"] is None


def test_reasoning_delta_is_reasoning_content_chunk() -> None:
    chunk = only_chunk(ev.ReasoningDelta(text="hmm"))
    assert chunk["choices"][0]["delta"] == {"reasoning_content": "hmm"}


def test_include_usage_puts_null_usage_on_content_chunks() -> None:
    assert only_chunk(ev.TextDelta(text="x"))["usage"] is None
    assert "usage" not in only_chunk(ev.TextDelta(text="x"), RENDER_NO_USAGE)


def test_every_chunk_has_envelope() -> None:
    events: list[ev.Event] = [
        ev.Start(model="demo", provider="demo"),
        ev.TextDelta(text="a"),
        ev.ReasoningDelta(text="b"),
        ev.ToolCallDelta(index=0, id="c", name="f"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=1, output_tokens=1)),
    ]
    other = {"id": "chatcmpl-other", "created": 42, "model": "gpt-x", "include_usage": True}
    for render in (RENDER, RENDER_NO_USAGE, other):
        for event in events:
            for data in parsed(FMT.frames(event, render)):
                if data == "[DONE]":
                    continue
                assert_chunk_envelope(data, render)
                assert data["system_fingerprint"] is None


def test_finish_with_include_usage() -> None:
    frames = FMT.frames(
        ev.Finish(reason="length", usage=ev.Usage(input_tokens=3, output_tokens=4)), RENDER
    )
    assert len(frames) == 3
    finish, usage, done = parsed(frames)
    assert_chunk_envelope(finish)
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    ]
    assert finish["usage"] is None
    assert_chunk_envelope(usage)
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    assert done == "[DONE]"
    assert frames[2] == Frame(b"[DONE]")


def test_finish_with_include_usage_but_no_usage_reports_zeros() -> None:
    frames = FMT.frames(ev.Finish(reason="stop"), RENDER)
    assert len(frames) == 3
    assert parsed(frames)[1]["usage"] == {
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "total_tokens": 0,
    }


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "content_filter"])
def test_finish_without_include_usage(reason: ev.FinishReason) -> None:
    frames = FMT.frames(
        ev.Finish(reason=reason, usage=ev.Usage(input_tokens=3, output_tokens=4)),
        RENDER_NO_USAGE,
    )
    assert len(frames) == 2
    finish, done = parsed(frames)
    assert finish["choices"][0]["finish_reason"] == reason
    assert finish["choices"][0]["delta"] == {}
    assert "usage" not in finish
    assert done == "[DONE]"


def test_render_without_include_usage_key_means_no_usage() -> None:
    render = {"id": "x", "created": 1, "model": "m"}
    assert len(FMT.frames(ev.Finish(reason="stop"), render)) == 2


@pytest.mark.parametrize(
    ("code", "type_"),
    [
        ("upstream_error", "upstream_error"),
        ("upstream_timeout", "upstream_error"),
        ("redis_unavailable", "service_unavailable"),
        ("internal_error", "server_error"),
        ("stream_expired", "server_error"),
    ],
)
def test_error_frames(code: str, type_: str) -> None:
    frames = FMT.frames(ev.Error(code=code, message="it broke", retryable=True), RENDER)
    assert len(frames) == 2
    error, done = parsed(frames)
    assert error == {"error": {"message": "it broke", "type": type_, "code": code}}
    assert done == "[DONE]"


def test_tool_call_first_and_later_fragments() -> None:
    first = only_chunk(ev.ToolCallDelta(index=0, id="call_a", name="get_weather"))
    assert first["choices"][0]["delta"] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": ""},
            }
        ]
    }
    later = only_chunk(ev.ToolCallDelta(index=0, arguments='{"city": "Paris"}'))
    assert later["choices"][0]["delta"] == {
        "tool_calls": [{"index": 0, "function": {"arguments": '{"city": "Paris"}'}}]
    }
    second = only_chunk(ev.ToolCallDelta(index=1, id="call_b", name="g", arguments="{}"))
    call = second["choices"][0]["delta"]["tool_calls"][0]
    assert call["index"] == 1
    assert call["id"] == "call_b"
    assert call["function"] == {"name": "g", "arguments": "{}"}


@pytest.mark.parametrize(
    "event",
    [ev.Usage(input_tokens=1), ev.TaskProgress(progress=0.5), ev.TaskResult()],
    ids=lambda e: e.type,
)
def test_events_without_frames(event: ev.Event) -> None:
    assert FMT.frames(event, RENDER) == []


def test_frames_are_deterministic() -> None:
    events: list[ev.Event] = [
        ev.Start(model="demo", provider="demo"),
        ev.TextDelta(text="x"),
        ev.ToolCallDelta(index=0, id="c", name="f", arguments="{}"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=1, output_tokens=2)),
        ev.Error(code="internal_error", message="m"),
    ]
    for event in events:
        assert FMT.frames(event, RENDER) == FMT.frames(event, dict(RENDER))


def test_usage_object() -> None:
    assert usage_object(ev.Usage(input_tokens=2, output_tokens=5)) == {
        "prompt_tokens": 2,
        "completion_tokens": 5,
        "total_tokens": 7,
    }
    assert usage_object(None) == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


# --- frame ids, encoding, resume points ----------------------------------------------------


def test_frame_ids() -> None:
    three = [Frame(b"a"), Frame(b"b"), Frame(b"c")]
    assert frame_ids("5-0", three) == ["5-0:0", "5-0:1", "5-0"]
    assert frame_ids("5-0", [Frame(b"a")]) == ["5-0"]
    assert frame_ids("1712345678901-3", [Frame(b"a"), Frame(b"b")]) == [
        "1712345678901-3:0",
        "1712345678901-3",
    ]
    assert frame_ids("5-0", []) == []


def decode(raw: bytes) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    out = list(decoder.feed(raw))
    out += list(decoder.close())
    return out


def test_encode_frames() -> None:
    frames = FMT.frames(
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=1, output_tokens=2)), RENDER
    )
    raw = encode_frames("5-0", frames)
    assert raw == b"".join(
        format_event(f.data, id=i, event=f.event)
        for f, i in zip(frames, ["5-0:0", "5-0:1", "5-0"], strict=True)
    )
    events = decode(raw)
    assert [e.id for e in events] == ["5-0:0", "5-0:1", "5-0"]
    assert [e.data for e in events] == [f.data.decode() for f in frames]
    assert events[-1].data == "[DONE]"


def test_encode_frames_skip_through() -> None:
    frames = [Frame(b"a"), Frame(b"b"), Frame(b"c", event="named")]
    assert [(e.data, e.id) for e in decode(encode_frames("5-0", frames, skip_through=0))] == [
        ("b", "5-0:1"),
        ("c", "5-0"),
    ]
    skipped_two = decode(encode_frames("5-0", frames, skip_through=1))
    assert skipped_two == [ServerSentEvent(data="c", event="named", id="5-0")]
    assert encode_frames("5-0", frames, skip_through=2) == b""
    assert encode_frames("5-0", frames, skip_through=-1) == encode_frames("5-0", frames)


def test_resume_point_parse_entry_id() -> None:
    assert ResumePoint.parse("5-0") == ResumePoint("5-0")
    assert ResumePoint.parse("5-0").frame is None
    assert ResumePoint.parse("  5-0 ") == ResumePoint("5-0")


def test_resume_point_parse_frame() -> None:
    point = ResumePoint.parse("5-0:1")
    assert point == ResumePoint("5-0", 1)
    assert point.entry_id == "5-0"
    assert point.frame == 1
    assert ResumePoint.parse("1712345678901-3:0") == ResumePoint("1712345678901-3", 0)


def test_resume_point_round_trips_frame_ids() -> None:
    for i, frame_id in enumerate(frame_ids("9-2", [Frame(b"a"), Frame(b"b"), Frame(b"c")])):
        point = ResumePoint.parse(frame_id)
        assert point.entry_id == "9-2"
        assert point.frame == (i if i < 2 else None)


@pytest.mark.parametrize(
    "bad", ["5-0:x", "5-0:", "5-0:-1", "5-0:1:2", "5-0:12345", "5-0:1.5", "5-0:\u00b2"]
)
def test_resume_point_parse_invalid(bad: str) -> None:
    with pytest.raises(InvalidResumeId):
        ResumePoint.parse(bad)


# --- non-streaming response ----------------------------------------------------------------


def record(render: dict[str, Any] = RENDER) -> JobRecord:
    return JobRecord(
        id="stream-1",
        status=Status.COMPLETED,
        surface="openai.chat",
        model="demo",
        created_at=1_700_000_000.0,
        started_at=1_700_000_000.5,
        finished_at=1_700_000_001.0,
        request={"model": "demo", "messages": [{"role": "user", "content": "hi"}]},
        render=render,
        output=None,
        cancel_requested=False,
        owner="key_test",
    )


def transcript(events: list[ev.Event]) -> Transcript:
    t = Transcript()
    for event in events:
        t.apply(event)
    return t


def test_response_plain_text() -> None:
    t = transcript(
        [
            ev.Start(model="demo", provider="demo"),
            ev.TextDelta(text="Hello "),
            ev.TextDelta(text="日本"),
            ev.Finish(reason="stop", usage=ev.Usage(input_tokens=4, output_tokens=2)),
        ]
    )
    assert FMT.response(record(), t) == {
        "id": "chatcmpl-abc123",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "demo",
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello 日本"},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }


def test_response_with_reasoning_and_tool_calls() -> None:
    t = transcript(
        [
            ev.Start(model="demo", provider="openai"),
            ev.ReasoningDelta(text="I should "),
            ev.ReasoningDelta(text="call tools."),
            ev.ToolCallDelta(index=1, id="call_b", name="no_args"),
            ev.ToolCallDelta(index=0, id="call_a", name="get_weather", arguments='{"city"'),
            ev.ToolCallDelta(index=0, arguments=': "Paris"}'),
            ev.Finish(reason="tool_calls"),
        ]
    )
    body = FMT.response(record(), t)
    message = body["choices"][0]["message"]
    assert message == {
        "role": "assistant",
        "content": None,  # OpenAI sends null when the message is only tool calls
        "reasoning_content": "I should call tools.",
        "tool_calls": [
            {
                "id": "call_a",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            },
            {
                "id": "call_b",
                "type": "function",
                "function": {"name": "no_args", "arguments": "{}"},
            },
        ],
    }
    assert body["choices"][0]["finish_reason"] == "tool_calls"
    assert body["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


def test_response_from_stored_transcript_json() -> None:
    t = transcript(
        [
            ev.TextDelta(text="x"),
            ev.ToolCallDelta(index=0, id="call_a", name="f"),
            ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=1, output_tokens=1)),
        ]
    )
    stored = Transcript.from_json(orjson.loads(orjson.dumps(t.to_json())))
    assert FMT.response(record(), stored) == FMT.response(record(), t)
    calls = FMT.response(record(), stored)["choices"][0]["message"]["tool_calls"]
    assert calls[0]["function"]["arguments"] == "{}"


def test_error_body() -> None:
    assert FMT.error_body(ModelNotFound("no model 'x'")) == {
        "error": {
            "message": "no model 'x'",
            "type": "invalid_request_error",
            "code": "model_not_found",
        }
    }
    assert FMT.error_body(StoreUnavailable()) == {
        "error": {
            "message": "Spool's Redis is unreachable; try again shortly.",
            "type": "service_unavailable",
            "code": "redis_unavailable",
        }
    }


@given(
    text=st.text(),
    model=st.text(),
    include_usage=st.booleans(),
)
def test_a_streams_text_chunks_are_the_general_paths_bytes(
    text: str, model: str, include_usage: bool
) -> None:
    fmt = OpenAIChatFormat()
    render = {"id": "chatcmpl-x", "created": 7, "model": model, "include_usage": include_usage}
    event = ev.TextDelta(text=text)
    fast = fmt.renderer(render).frames("1-0", event)
    assert [f.data for f in fast] == [f.data for f in fmt.frames(event, render)]


@given(st.text(), st.sampled_from([RENDER, RENDER_NO_USAGE]))
def test_a_spliced_text_event_is_the_rendered_one(text: str, render: dict[str, Any]) -> None:
    """A text delta rendered undecoded from its stored form is byte for byte the event the
    renderer and `encode_frames` make of it decoded."""
    raw = ev.encode(ev.TextDelta(text=text))
    renderer = FMT.renderer(render)
    expected = encode_frames("1700000000123-4", renderer.frames("1700000000123-4", ev.decode(raw)))
    stored = ev.plain_text(raw)
    if stored is None:
        assert any(c in text for c in '"\\') or any(ord(c) < 0x20 for c in text)
        return
    assert renderer.text_event("1700000000123-4", stored) == expected
