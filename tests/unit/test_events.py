"""Unit tests for shared/events.py (the canonical event model) and shared/transcript.py."""

from __future__ import annotations

import json

import orjson
import pytest
from pydantic import ValidationError

from shared import events as ev
from shared.transcript import ToolCall, Transcript

ALL_EVENTS: list[ev.Event] = [
    ev.Start(model="demo", provider="demo"),
    ev.TextDelta(text="héllo 日本語 ✓ 🎉"),
    ev.TextDelta(text=""),
    ev.ReasoningDelta(text="thinking…"),
    ev.ToolCallDelta(index=0, id="call_1", name="get_weather", arguments='{"city": "Par'),
    ev.ToolCallDelta(index=2, arguments='is"}'),
    ev.Usage(input_tokens=12, output_tokens=34),
    ev.Usage(),
    ev.Finish(reason="stop", usage=ev.Usage(input_tokens=1, output_tokens=2)),
    ev.Finish(reason="length"),
    ev.Finish(reason="tool_calls"),
    ev.Finish(reason="content_filter"),
    ev.Finish(reason="cancelled"),
    ev.Error(code="upstream_error", message="boom", retryable=True, retry_after=1.5, status=429),
    ev.Error(code="internal_error", message="oops"),
    ev.TaskProgress(progress=0.5, message="halfway"),
    ev.TaskProgress(progress=1),
    ev.TaskResult(outputs=[{"url": "https://example.com/a.png", "n": 1}]),
    ev.TaskResult(),
]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: f"{e.type}")
def test_encode_decode_round_trip(event: ev.Event) -> None:
    raw = ev.encode(event)
    assert isinstance(raw, bytes)
    back = ev.decode(raw)
    assert type(back) is type(event)
    assert back == event
    # decode accepts str as well as bytes
    assert ev.decode(raw.decode()) == event


def test_every_event_type_is_covered() -> None:
    assert {e.type for e in ALL_EVENTS} == {
        "start",
        "text",
        "reasoning",
        "tool_call",
        "usage",
        "finish",
        "error",
        "task_progress",
        "task_result",
    }


def test_encode_is_json_with_type_and_without_nones() -> None:
    data = orjson.loads(ev.encode(ev.Finish(reason="stop")))
    assert data == {"type": "finish", "reason": "stop"}
    data = orjson.loads(ev.encode(ev.ToolCallDelta(index=1, arguments="{}")))
    assert data == {"type": "tool_call", "index": 1, "arguments": "{}"}
    data = orjson.loads(ev.encode(ev.TextDelta(text="日本")))
    assert data == {"type": "text", "text": "日本"}


def test_encode_keeps_utf8_verbatim() -> None:
    assert "日本".encode() in ev.encode(ev.TextDelta(text="日本"))


def test_decode_from_handwritten_json() -> None:
    event = ev.decode(b'{"type": "finish", "reason": "length", "usage": {"output_tokens": 3}}')
    assert event == ev.Finish(reason="length", usage=ev.Usage(output_tokens=3))


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        b"[]",
        b'{"text": "no type"}',
        b'{"type": "nope"}',
        b'{"type": "text"}',
        b'{"type": "text", "text": "a", "extra": 1}',
        b'{"type": "finish", "reason": "exploded"}',
        b'{"type": "tool_call", "index": -1}',
        b'{"type": "usage", "input_tokens": -1}',
        b'{"type": "task_progress", "progress": 1.5}',
        b'{"type": "text", "text": "a"',
    ],
)
def test_decode_invalid_raises_validation_error(raw: bytes) -> None:
    with pytest.raises(ValidationError):
        ev.decode(raw)


def test_events_are_frozen() -> None:
    event = ev.TextDelta(text="a")
    with pytest.raises(ValidationError):
        event.text = "b"  # type: ignore[misc]


@pytest.mark.parametrize("event", ALL_EVENTS, ids=lambda e: f"{e.type}")
def test_is_terminal(event: ev.Event) -> None:
    assert ev.is_terminal(event) == (event.type in {"finish", "error", "task_result"})


def test_is_terminal_explicit() -> None:
    assert ev.is_terminal(ev.Finish(reason="stop"))
    assert ev.is_terminal(ev.Error(code="x", message="y"))
    assert ev.is_terminal(ev.TaskResult())
    assert not ev.is_terminal(ev.TextDelta(text="x"))
    assert not ev.is_terminal(ev.Start(model="m", provider="p"))
    assert not ev.is_terminal(ev.Usage())
    assert not ev.is_terminal(ev.TaskProgress(progress=0.1))


def test_usage_total_tokens() -> None:
    assert ev.Usage(input_tokens=3, output_tokens=4).total_tokens == 7
    assert ev.Usage().total_tokens == 0


# --- Transcript ----------------------------------------------------------------------------


def build(events: list[ev.Event]) -> Transcript:
    t = Transcript()
    for event in events:
        t.apply(event)
    return t


def test_transcript_text_and_reasoning() -> None:
    t = build(
        [
            ev.Start(model="gpt-x", provider="openai"),
            ev.ReasoningDelta(text="Let me "),
            ev.ReasoningDelta(text="think."),
            ev.TextDelta(text="Hel"),
            ev.TextDelta(text="lo ✓"),
            ev.Finish(reason="stop"),
        ]
    )
    assert t.model == "gpt-x"
    assert t.provider == "openai"
    assert t.content == "Hello ✓"
    assert t.reasoning_content == "Let me think."
    assert t.finish_reason == "stop"
    assert t.usage is None
    assert t.error is None
    assert t.events == 6
    assert t.has_output


def test_transcript_empty_has_no_output() -> None:
    t = build([ev.Start(model="m", provider="demo"), ev.Finish(reason="stop")])
    assert not t.has_output
    assert t.content == ""
    assert t.reasoning_content == ""


def test_transcript_merges_tool_call_deltas_by_index() -> None:
    t = build(
        [
            ev.ToolCallDelta(index=0, id="call_a", name="get_weather", arguments=""),
            ev.ToolCallDelta(index=0, arguments='{"city": '),
            ev.ToolCallDelta(index=1, id="call_b", name="get_time"),
            ev.ToolCallDelta(index=0, arguments='"Paris"}'),
            ev.ToolCallDelta(index=1, arguments='{"tz": "CET"}'),
            ev.Finish(reason="tool_calls"),
        ]
    )
    assert set(t.tool_calls) == {0, 1}
    first, second = t.tool_calls[0], t.tool_calls[1]
    assert (first.index, first.id, first.name) == (0, "call_a", "get_weather")
    assert first.arguments == '{"city": "Paris"}'
    assert (second.index, second.id, second.name) == (1, "call_b", "get_time")
    assert second.arguments == '{"tz": "CET"}'
    assert t.has_output
    assert t.finish_reason == "tool_calls"


def test_transcript_later_fragments_do_not_erase_id_or_name() -> None:
    t = build(
        [
            ev.ToolCallDelta(index=0, id="call_a", name="f"),
            ev.ToolCallDelta(index=0, id=None, name=None, arguments="{}"),
            ev.ToolCallDelta(index=0, id="", name="", arguments=""),
        ]
    )
    assert t.tool_calls[0] == ToolCall(index=0, id="call_a", name="f", arguments="{}")


def test_final_arguments() -> None:
    t = build(
        [
            ev.ToolCallDelta(index=0, id="call_a", name="no_args"),
            ev.ToolCallDelta(index=1, id="call_b", name="with_args", arguments='{"x": 1}'),
        ]
    )
    assert t.tool_calls[0].arguments == ""
    assert t.tool_calls[0].final_arguments() == "{}"
    assert t.tool_calls[1].final_arguments() == '{"x": 1}'


def test_finish_carries_usage() -> None:
    usage = ev.Usage(input_tokens=5, output_tokens=7)
    t = build([ev.TextDelta(text="x"), ev.Finish(reason="length", usage=usage)])
    assert t.usage == usage
    assert t.finish_reason == "length"


def test_finish_without_usage_keeps_earlier_usage_event() -> None:
    usage = ev.Usage(input_tokens=1, output_tokens=2)
    t = build([ev.Usage(input_tokens=1, output_tokens=2), ev.Finish(reason="stop")])
    assert t.usage == usage


def test_finish_usage_replaces_earlier_usage_event() -> None:
    final = ev.Usage(input_tokens=9, output_tokens=9)
    t = build([ev.Usage(input_tokens=1, output_tokens=2), ev.Finish(reason="stop", usage=final)])
    assert t.usage == final


def test_transcript_records_error() -> None:
    error = ev.Error(code="upstream_error", message="boom", status=502)
    t = build([ev.TextDelta(text="partial"), error])
    assert t.error == error
    assert t.finish_reason is None
    assert t.content == "partial"


def test_transcript_ignores_task_events_but_counts_them() -> None:
    t = build([ev.TaskProgress(progress=0.5), ev.TaskResult()])
    assert t.events == 2
    assert not t.has_output


def roundtrip(t: Transcript) -> Transcript:
    # Through real JSON, as the store does.
    return Transcript.from_json(json.loads(json.dumps(t.to_json())))


def test_to_json_shape() -> None:
    t = build(
        [
            ev.Start(model="m", provider="openai"),
            ev.TextDelta(text="hi"),
            ev.ToolCallDelta(index=1, id="b", name="g", arguments="{}"),
            ev.ToolCallDelta(index=0, id="a", name="f"),
            ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=1, output_tokens=2)),
        ]
    )
    assert t.to_json() == {
        "model": "m",
        "provider": "openai",
        "text": "hi",
        "reasoning_signature": None,
        "reasoning": "",
        "tool_calls": [
            {"index": 0, "id": "a", "name": "f", "arguments": ""},
            {"index": 1, "id": "b", "name": "g", "arguments": "{}"},
        ],
        "usage": {"input_tokens": 1, "output_tokens": 2},
        "finish_reason": "tool_calls",
        "error": None,
    }


def test_to_json_from_json_round_trip_full() -> None:
    t = build(
        [
            ev.Start(model="gpt-x", provider="openai"),
            ev.ReasoningDelta(text="hmm "),
            ev.ReasoningDelta(text="ok"),
            ev.TextDelta(text="héllo "),
            ev.TextDelta(text="日本語 🎉"),
            ev.ToolCallDelta(index=0, id="call_a", name="f", arguments='{"a"'),
            ev.ToolCallDelta(index=0, arguments=": 1}"),
            ev.ToolCallDelta(index=1, id="call_b", name="g"),
            ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=3, output_tokens=4)),
        ]
    )
    back = roundtrip(t)
    assert back.model == "gpt-x"
    assert back.provider == "openai"
    assert back.content == "héllo 日本語 🎉"
    assert back.reasoning_content == "hmm ok"
    assert back.tool_calls == {
        0: ToolCall(index=0, id="call_a", name="f", arguments='{"a": 1}'),
        1: ToolCall(index=1, id="call_b", name="g", arguments=""),
    }
    assert back.tool_calls[1].final_arguments() == "{}"
    assert back.usage == ev.Usage(input_tokens=3, output_tokens=4)
    assert back.finish_reason == "tool_calls"
    assert back.error is None
    assert back.to_json() == t.to_json()


def test_to_json_from_json_round_trip_error() -> None:
    error = ev.Error(
        code="upstream_error", message="rate limited", retryable=True, retry_after=7.0, status=429
    )
    t = build([ev.Start(model="m", provider="openai"), ev.TextDelta(text="part"), error])
    back = roundtrip(t)
    assert back.error == error
    assert back.finish_reason is None
    assert back.usage is None
    assert back.content == "part"
    assert back.to_json() == t.to_json()


def test_to_json_from_json_round_trip_minimal_error() -> None:
    error = ev.Error(code="internal_error", message="x")
    back = roundtrip(build([error]))
    assert back.error == error
    assert back.error is not None
    assert back.error.retry_after is None


def test_from_json_of_empty_transcript() -> None:
    back = roundtrip(Transcript())
    assert back.model is None
    assert back.content == ""
    assert back.reasoning_content == ""
    assert back.tool_calls == {}
    assert back.usage is None
    assert back.finish_reason is None
    assert back.error is None
    assert not back.has_output


# -- plain text deltas, read without decoding ------------------------------------------------


@pytest.mark.parametrize("text", ["", " tok", "héllo 日本 🎉", "a/b", "x\x7fy", "{}", "a'b"])
def test_plain_text_is_the_texts_bytes(text: str) -> None:
    raw = ev.encode(ev.TextDelta(text=text))
    found = ev.plain_text(raw)
    assert found == text.encode()
    assert ev.stored_text(raw) == found
    assert orjson.loads(b'"' + found + b'"') == text  # splices into JSON as it is


@pytest.mark.parametrize(
    "event",
    [
        ev.TextDelta(text='say "hi"'),
        ev.TextDelta(text="back\\slash"),
        ev.TextDelta(text="line\nbreak"),
        ev.TextDelta(text="tab\there"),
        ev.TextDelta(text="a", logprobs=[{"token": "a", "logprob": -0.1}]),
        ev.ReasoningDelta(text="thinking"),
        ev.Finish(reason="stop"),
        ev.Start(model="m", provider="demo"),
    ],
)
def test_plain_text_refuses_what_needs_decoding(event: ev.Event) -> None:
    assert ev.plain_text(ev.encode(event)) is None


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"text","text":"a","x":"b"}',  # not what `encode` writes: decoded instead
        b'{"type":"text","text":"a"} ',
        b'{"type":"text","text":"a\\u0041"}',
        b'{"type":"texts","text":"a"}',
        b'{"type":"text","text":"a\x01b"}',  # a control character JSON must escape
    ],
)
def test_plain_text_refuses_other_shapes(raw: bytes) -> None:
    assert ev.plain_text(raw) is None


def test_a_stored_entry_keeps_plain_text_undecoded_and_decodes_on_demand() -> None:
    from shared.store import Entry

    text = Entry.read(b"5-0", 3, ev.encode(ev.TextDelta(text="hé")))
    assert text.value == ev.encode(ev.TextDelta(text="hé"))
    assert text.event == ev.TextDelta(text="hé")
    assert (text.id, text.seq, text.terminal) == ("5-0", 3, False)
    finish = Entry.read(b"6-0", 4, ev.encode(ev.Finish(reason="stop")))
    assert finish.value == finish.event == ev.Finish(reason="stop")
    assert finish.terminal
    quoted = Entry.read(b"7-0", 5, ev.encode(ev.TextDelta(text='"')))
    assert quoted.value == ev.TextDelta(text='"')


def test_a_text_delta_is_made_as_the_model_makes_it_and_short_ones_are_reused() -> None:
    for text in ["a", " tok", "é日本", "", "x" * (ev.TEXT_DELTA_KEPT_CHARS + 1)]:
        made = ev.text_delta(text)
        assert made == ev.TextDelta(text=text) and type(made) is ev.TextDelta
    assert ev.text_delta(" the") is ev.text_delta(" the")  # frozen: safe to share
    long = "y" * (ev.TEXT_DELTA_KEPT_CHARS + 1)
    assert ev.text_delta(long) is not ev.text_delta(long)  # a whole answer is not kept
    with pytest.raises(ValidationError):
        ev.text_delta(" the").text = "changed"  # type: ignore[misc]


def test_the_kept_text_deltas_stay_bounded() -> None:
    for i in range(ev.TEXT_DELTAS_KEPT * 2 + 5):
        assert ev.text_delta(f"t{i}").text == f"t{i}"
    assert len(ev._TEXT_DELTAS) <= ev.TEXT_DELTAS_KEPT


def test_a_kept_text_deltas_json_is_the_json_of_its_event() -> None:
    for text in [" tok", 'a "q"', "\n", "é", "z" * (ev.TEXT_DELTA_KEPT_CHARS + 3)]:
        for _ in range(2):  # made, then kept
            assert ev.encode(ev.text_delta(text)) == orjson.dumps({"type": "text", "text": text})
            assert ev.decode(ev.encode(ev.TextDelta(text=text))) == ev.TextDelta(text=text)


@pytest.mark.parametrize("bad", [None, 3, ["a"], {"a": 1}])
def test_a_text_delta_of_something_not_text_is_refused_as_the_model_refuses_it(bad: object) -> None:
    with pytest.raises(ValidationError):
        ev.TextDelta(text=bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ev.text_delta(bad)  # type: ignore[arg-type]
