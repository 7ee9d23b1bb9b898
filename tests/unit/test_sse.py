"""Unit tests for shared/sse.py: the SSE writer and the incremental SSE decoder."""

from __future__ import annotations

import importlib

import pytest

from api.formats import PING
from shared.sse import ServerSentEvent, SSEDecoder, format_comment, format_event

TEXT = "héllo 日本語 ✓ 🎉"

# A realistic upstream stream: comments, blank keep-alives, every line-end style, multi-byte
# UTF-8, fields that must be ignored, and a persistent last-event id.
STREAM = (
    ": ping\r\n"
    "\r\n"
    "event: greeting\r\n"
    "id: 1\r\n"
    f"data: {TEXT}\r\n"
    "data: second line\r\n"
    "\r\n"
    "data: plain\n"
    "id: 2\n"
    "\n"
    ": comment with a colon: inside\r"
    "data: cr-only\r"
    "event: custom\r"
    "\r"
    "\n"
    'data: {"x": 1}\n'
    "retry: abc\n"
    "bogus line without colon\n"
    "unknown: field\n"
    "\n"
    "data:no-space\n"
    "data:  two-spaces\n"
    "retry: 1500\n"
    "\r\n"
    "\n"
    f"data: {TEXT}\r"
    "\r"
).encode()

EXPECTED = [
    ServerSentEvent(data=f"{TEXT}\nsecond line", event="greeting", id="1"),
    ServerSentEvent(data="plain", event="message", id="2"),
    # The last event id persists across events, as the spec says.
    ServerSentEvent(data="cr-only", event="custom", id="2"),
    ServerSentEvent(data='{"x": 1}', event="message", id="2"),
    ServerSentEvent(data="no-space\n two-spaces", event="message", id="2", retry=1500),
    ServerSentEvent(data=TEXT, event="message", id="2"),
]


def decode_reads(reads: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    out: list[ServerSentEvent] = []
    for read in reads:
        out.extend(decoder.feed(read))
    out.extend(decoder.close())
    return out


# --- format_event / format_comment ---------------------------------------------------------


def test_format_event_single_line() -> None:
    assert format_event("hello") == b"data: hello\n\n"


def test_format_event_empty_data_is_one_data_line() -> None:
    assert format_event("") == b"data: \n\n"


def test_format_event_encodes_utf8() -> None:
    assert format_event(TEXT) == f"data: {TEXT}\n\n".encode()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("a\nb", b"data: a\ndata: b\n\n"),
        ("a\r\nb", b"data: a\ndata: b\n\n"),
        ("a\rb", b"data: a\ndata: b\n\n"),
        ("a\nb\r\nc\rd", b"data: a\ndata: b\ndata: c\ndata: d\n\n"),
        ("a\n", b"data: a\ndata: \n\n"),
        ("a\r\n\r\nb", b"data: a\ndata: \ndata: b\n\n"),
    ],
)
def test_format_event_multi_line_data(data: str, expected: bytes) -> None:
    assert format_event(data) == expected


def test_format_event_event_and_id_lines() -> None:
    assert format_event("x", id="5-0", event="delta") == b"event: delta\ndata: x\nid: 5-0\n\n"
    assert format_event("x", id="7-1:2") == b"data: x\nid: 7-1:2\n\n"
    assert format_event("x", event="ping") == b"event: ping\ndata: x\n\n"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\0b", "\n", "x\0"])
def test_format_event_rejects_control_chars_in_id(bad: str) -> None:
    with pytest.raises(ValueError, match="id"):
        format_event("data", id=bad)


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\r\nb", "a\0b"])
def test_format_event_rejects_control_chars_in_event_name(bad: str) -> None:
    with pytest.raises(ValueError, match="event name"):
        format_event("data", event=bad)


def test_format_comment() -> None:
    assert format_comment("ping") == b": ping\n"
    assert format_comment() == b": \n"
    assert format_comment("a\nb") == b": a\n: b\n"
    assert format_comment("日本") == ": 日本\n".encode()


def test_format_comment_produces_no_event() -> None:
    assert decode_reads([format_comment("ping"), format_comment()]) == []


@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
def test_keepalives_after_an_event_are_no_event_to_the_sdks(sdk: str) -> None:
    """The official SDKs keep the last event id and dispatch an event at every blank line
    after it: a keep-alive must not end in one, or they read an event with empty data."""
    decoder_class = importlib.import_module(f"{sdk}._streaming").SSEDecoder
    wire = format_event('{"a":1}', id="1-0") + PING + format_comment("shutting down") + PING
    wire += format_event('{"b":2}', id="2-0")
    events = list(decoder_class().iter_bytes(iter([wire])))
    assert [(e.data, e.id) for e in events] == [('{"a":1}', "1-0"), ('{"b":2}', "2-0")]


# --- SSEDecoder ----------------------------------------------------------------------------


def test_decoder_whole_stream() -> None:
    assert decode_reads([STREAM]) == EXPECTED


def test_decoder_split_at_every_offset() -> None:
    for offset in range(len(STREAM) + 1):
        got = decode_reads([STREAM[:offset], STREAM[offset:]])
        assert got == EXPECTED, f"split at byte {offset}"


def test_decoder_split_at_every_pair_of_offsets_in_crlf_region() -> None:
    # Three reads: exercise a CR and its LF landing in different reads with an empty read
    # (or a read holding only part of a UTF-8 character) between them.
    region = STREAM[:80]
    for a in range(len(region) + 1):
        for b in range(a, len(region) + 1):
            got = decode_reads([STREAM[:a], STREAM[a:b], STREAM[b:]])
            assert got == EXPECTED, f"split at bytes {a}, {b}"


def test_decoder_one_byte_at_a_time() -> None:
    reads = [STREAM[i : i + 1] for i in range(len(STREAM))]
    assert decode_reads(reads) == EXPECTED


def test_decoder_yields_events_as_soon_as_complete() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: one\n")) == []
    assert list(decoder.feed(b"\n")) == [ServerSentEvent(data="one")]
    assert list(decoder.feed(b"data: two\n\ndata: three\n\n")) == [
        ServerSentEvent(data="two"),
        ServerSentEvent(data="three"),
    ]


def test_one_line_events_keep_the_id_and_retry_before_them() -> None:
    """Single `data:` line events (read on a shorter path) see the fields other lines set:
    the last event id stays, a retry goes with the next event only, an event name or an
    unfinished multi-line event is not skipped."""
    wire = (
        b"id: 7\nretry: 10\ndata: a\n\ndata: b\n\nevent: x\ndata: c\n\n"
        b"data: d\ndata: e\n\ndata:f\n\ndata: \n\n: note\ndata: g\n\n"
    )
    expected = [
        ServerSentEvent(data="a", id="7", retry=10),
        ServerSentEvent(data="b", id="7"),
        ServerSentEvent(data="c", event="x", id="7"),
        ServerSentEvent(data="d\ne", id="7"),
        ServerSentEvent(data="f", id="7"),
        ServerSentEvent(data="", id="7"),
        ServerSentEvent(data="g", id="7"),
    ]
    assert list(SSEDecoder().feed(wire)) == expected
    for split in range(len(wire) + 1):
        decoder = SSEDecoder()
        got = [*decoder.feed(wire[:split]), *decoder.feed(wire[split:])]
        assert got == expected, f"split at byte {split}"


def test_decoder_ignores_unknown_and_malformed_lines() -> None:
    raw = (
        b"no colon here\n"
        b"unknown: value\n"
        b"retry: 12a\n"
        b"retry: -5\n"
        b"retry: \n"
        b"Data: wrong case\n"
        b"data: ok\n"
        b"\n"
    )
    assert decode_reads([raw]) == [ServerSentEvent(data="ok", event="message", retry=None)]


@pytest.mark.parametrize("value", ["\u00b2", "1\u00b2", "\uff15", "\u0663"])
def test_decoder_retry_with_non_ascii_digits_is_ignored(value: str) -> None:
    # The spec: only a value of ASCII digits sets the reconnection time. Unicode "digits"
    # such as superscript two must be ignored, not crash the decoder.
    raw = f"retry: {value}\ndata: x\n\n".encode()
    assert decode_reads([raw]) == [ServerSentEvent(data="x", retry=None)]


def test_decoder_retry_with_digits_is_kept() -> None:
    assert decode_reads([b"retry: 3000\ndata: x\n\n"]) == [ServerSentEvent(data="x", retry=3000)]


def test_decoder_id_with_nul_is_ignored() -> None:
    assert decode_reads([b"id: ok\n\ndata: a\nid: b\x00c\n\n"]) == [
        ServerSentEvent(data="a", id="ok")
    ]


def test_decoder_blank_lines_without_data_dispatch_nothing() -> None:
    assert decode_reads([b"\n\n\r\n\r\r\n: ping\n\n"]) == []


def test_decoder_event_name_without_data_is_dropped() -> None:
    # An event with no data is not dispatched, and its event name does not leak.
    assert decode_reads([b"event: lonely\n\ndata: x\n\n"]) == [ServerSentEvent(data="x")]


def test_decoder_invalid_utf8_becomes_replacement_character() -> None:
    got = decode_reads([b"data: a\xffb\xc3(\n\n"])
    assert got == [ServerSentEvent(data="a\ufffdb\ufffd(")]


def test_decoder_truncated_utf8_at_end_of_stream_does_not_raise() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: ok\n\ndata: \xe6\x97")) == [ServerSentEvent(data="ok")]
    assert list(decoder.close()) == []


def test_decoder_utf8_character_split_across_reads() -> None:
    raw = f"data: {TEXT}\n\n".encode()
    emoji_start = raw.index("🎉".encode())
    for cut in range(emoji_start + 1, emoji_start + 4):
        assert decode_reads([raw[:cut], raw[cut:]]) == [ServerSentEvent(data=TEXT)]


def test_decoder_close_does_not_emit_unterminated_event() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: complete\n\ndata: partial")) == [
        ServerSentEvent(data="complete")
    ]
    assert list(decoder.close()) == []


def test_decoder_close_does_not_emit_event_missing_blank_line() -> None:
    decoder = SSEDecoder()
    assert list(decoder.feed(b"event: x\ndata: whole line\n")) == []
    assert list(decoder.close()) == []
    decoder = SSEDecoder()
    assert list(decoder.feed(b"data: cr ended\r")) == []
    assert list(decoder.close()) == []


def test_decoder_cr_then_lf_in_next_read_is_one_line_end() -> None:
    decoder = SSEDecoder()
    events = list(decoder.feed(b"data: a\r"))
    events += list(decoder.feed(b"\ndata: b\n\n"))
    events += list(decoder.close())
    assert events == [ServerSentEvent(data="a\nb")]


def test_decoder_cr_then_empty_read_then_lf_is_one_line_end() -> None:
    decoder = SSEDecoder()
    events = list(decoder.feed(b"data: a\r"))
    events += list(decoder.feed(b""))
    events += list(decoder.feed(b"\ndata: b\r\n\r\n"))
    assert events == [ServerSentEvent(data="a\nb")]


def test_decoder_cr_then_read_of_half_a_character() -> None:
    # The read after the CR decodes to nothing yet (half a character); that must not lose
    # the line that follows.
    decoder = SSEDecoder()
    events = list(decoder.feed(b"data: a\r"))
    events += list(decoder.feed(b"\xc3"))
    events += list(decoder.feed(b"\xa9t: ignored\r\ndata: b\r\n\r\n"))
    assert events == [ServerSentEvent(data="a\nb")]


def test_decoder_cr_cr_is_two_line_ends_even_across_reads() -> None:
    decoder = SSEDecoder()
    events = list(decoder.feed(b"data: a\r"))
    events += list(decoder.feed(b"\rdata: b\n\n"))
    assert events == [ServerSentEvent(data="a"), ServerSentEvent(data="b")]


def test_decoder_lf_after_dispatching_cr_is_not_another_blank_line() -> None:
    # "\r" + "\n" across reads after a data line: if the LF counted as its own line, the
    # event would be dispatched early and "b" would be a separate event.
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for read in (b"data: a\r", b"\n", b"data: b\r", b"\n", b"\r", b"\n"):
        events += list(decoder.feed(read))
    assert events == [ServerSentEvent(data="a\nb")]


def test_decoder_line_size_limit() -> None:
    decoder = SSEDecoder(max_line_chars=16)
    assert list(decoder.feed(b"data: short\n\n")) == [ServerSentEvent(data="short")]
    with pytest.raises(ValueError, match="size limit"):
        list(decoder.feed(b"data: " + b"x" * 64))


def test_decoder_data_field_with_colon_in_value() -> None:
    assert decode_reads([b"data: a: b:c\n\n"]) == [ServerSentEvent(data="a: b:c")]


# --- round trip ----------------------------------------------------------------------------


ROUND_TRIP = [
    ("hello", "1-0", None),
    (TEXT, "1-0:0", "delta"),
    ("line one\nline two\n\nline four", "2-0", "message"),
    ('{"choices": [{"delta": {"content": "日本"}}]}', "3-5", None),
    ("", "4-0", "empty"),
    (" leading space and trailing ", "5-0", None),
    (": not a comment", "6-0", None),
    ("[DONE]", "7-0", None),
]


def test_round_trip_format_then_decode() -> None:
    raw = b"".join(format_event(data, id=i, event=e) for data, i, e in ROUND_TRIP)
    expected = [ServerSentEvent(data=d, id=i, event=e or "message") for d, i, e in ROUND_TRIP]
    assert decode_reads([raw]) == expected
    assert decode_reads([raw[k : k + 1] for k in range(len(raw))]) == expected
    for offset in range(len(raw) + 1):
        assert decode_reads([raw[:offset], raw[offset:]]) == expected


def test_round_trip_normalises_line_ends_in_data() -> None:
    raw = format_event("a\r\nb\rc", id="9-0")
    assert decode_reads([raw]) == [ServerSentEvent(data="a\nb\nc", id="9-0")]


def test_round_trip_without_id_or_event() -> None:
    assert decode_reads([format_event("x")]) == [ServerSentEvent(data="x", event="message")]


def test_a_leading_byte_order_mark_is_ignored() -> None:
    decoder = SSEDecoder()
    events = list(decoder.feed(b"\xef\xbb\xbfdata: first\n\n")) + list(
        decoder.feed(b"data: \xef\xbb\xbfkept\n\n")
    )
    assert [e.data for e in events] == ["first", "\ufeffkept"]
