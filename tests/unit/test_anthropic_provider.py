"""Unit tests for worker/providers/anthropic.py against in-process upstreams: an
httpx.MockTransport with scripted bytes, and the mock Anthropic handler in
tests/mock_anthropic.py behind httpx.ASGITransport. No network."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
from collections.abc import Callable, MutableMapping
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared import events as ev
from shared.errors import UpstreamError
from shared.model_table import ModelEntry
from shared.request import GenerationRequest
from tests import mock_anthropic as mock
from tests.mock_upstream import MockUpstream
from tests.unit.upstream_fakes import (
    ChunkStream,
    Upstream,
    make_request,
    run_provider,
    run_provider_until_error,
    sse_upstream,
)
from worker.providers.anthropic import AnthropicProvider, build_body

KEY_ENV = "SPOOL_UNIT_TEST_ANTHROPIC_KEY"
BASE_URL = "http://upstream.test/v1"


def make_entry(**kw: Any) -> ModelEntry:
    return ModelEntry.model_validate(
        {
            "provider": "anthropic",
            "base_url": BASE_URL,
            "model": "claude-upstream",
            "api_key_env": KEY_ENV,
            **kw,
        }
    )


async def run(
    upstream: Upstream,
    request: GenerationRequest | None = None,
    entry: ModelEntry | None = None,
) -> list[ev.Event]:
    return await run_provider(
        AnthropicProvider, upstream, request or make_request(), entry or make_entry()
    )


async def run_until_error(upstream: Upstream) -> tuple[list[ev.Event], UpstreamError]:
    return await run_provider_until_error(AnthropicProvider, upstream, make_request(), make_entry())


# --- wire helpers: Anthropic's own framing ---------------------------------------------------


def frame(data: dict[str, Any], name: str | None = None) -> bytes:
    return mock.frame(name or data["type"], data)


def start(input_tokens: int = 5, **usage: int) -> bytes:
    return frame(
        {
            "type": "message_start",
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-upstream",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": input_tokens, "output_tokens": 1, **usage},
            },
        }
    )


PING = frame({"type": "ping"})


def block_start(index: int, block: dict[str, Any]) -> bytes:
    return frame({"type": "content_block_start", "index": index, "content_block": block})


def delta(index: int, body: dict[str, Any]) -> bytes:
    return frame({"type": "content_block_delta", "index": index, "delta": body})


def text(index: int, value: str) -> bytes:
    return delta(index, {"type": "text_delta", "text": value})


def block_stop(index: int) -> bytes:
    return frame({"type": "content_block_stop", "index": index})


def message_delta(stop_reason: str | None, usage: dict[str, Any] | None = None) -> bytes:
    data: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
    }
    if usage is not None:
        data["usage"] = usage
    return frame(data)


STOP = frame({"type": "message_stop"})


def error_event(kind: str, message: str) -> bytes:
    return frame({"type": "error", "error": {"type": kind, "message": message}})


def text_message(
    *pieces: str, stop_reason: str | None = "end_turn", output: int = 3
) -> list[bytes]:
    return [
        start(),
        block_start(0, {"type": "text", "text": ""}),
        *(text(0, p) for p in pieces),
        block_stop(0),
        message_delta(stop_reason, {"output_tokens": output}),
        STOP,
    ]


# --- content mapping -----------------------------------------------------------------------


async def test_text_deltas_and_usage() -> None:
    upstream = sse_upstream(
        [
            start(input_tokens=25),
            block_start(0, {"type": "text", "text": ""}),
            PING,
            text(0, "Hello"),
            text(0, ""),
            text(0, "!"),
            block_stop(0),
            message_delta("end_turn", {"output_tokens": 15}),
            STOP,
        ]
    )
    assert await run(upstream) == [
        ev.Usage(input_tokens=25),  # message_start's count, ahead of the first content
        ev.TextDelta(text="Hello"),
        ev.TextDelta(text="!"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=25, output_tokens=15)),
    ]


async def test_start_event_is_left_to_the_caller() -> None:
    events = await run(sse_upstream(text_message("x")))
    assert not any(isinstance(e, ev.Start) for e in events)


async def test_tool_use_blocks_become_tool_call_deltas() -> None:
    upstream = sse_upstream(
        [
            start(),
            block_start(0, {"type": "text", "text": ""}),
            text(0, "Let me check."),
            block_stop(0),
            block_start(
                1, {"type": "tool_use", "id": "toolu_a", "name": "get_weather", "input": {}}
            ),
            delta(1, {"type": "input_json_delta", "partial_json": ""}),
            delta(1, {"type": "input_json_delta", "partial_json": '{"city": '}),
            delta(1, {"type": "input_json_delta", "partial_json": '"Paris"}'}),
            block_stop(1),
            block_start(2, {"type": "tool_use", "id": "toolu_b", "name": "get_time", "input": {}}),
            delta(2, {"type": "input_json_delta", "partial_json": "{}"}),
            block_stop(2),
            message_delta("tool_use", {"output_tokens": 40}),
            STOP,
        ]
    )
    assert await run(upstream) == [
        ev.Usage(input_tokens=5),
        ev.TextDelta(text="Let me check."),
        ev.ToolCallDelta(index=0, id="toolu_a", name="get_weather", arguments=""),
        ev.ToolCallDelta(index=0, arguments='{"city": '),
        ev.ToolCallDelta(index=0, arguments='"Paris"}'),
        ev.ToolCallDelta(index=1, id="toolu_b", name="get_time", arguments=""),
        ev.ToolCallDelta(index=1, arguments="{}"),
        ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=5, output_tokens=40)),
    ]


async def test_tool_index_counts_tool_blocks_only() -> None:
    # The tool_use block is content block 3, but it is the first tool call: index 0.
    upstream = sse_upstream(
        [
            start(),
            block_start(0, {"type": "thinking", "thinking": ""}),
            block_stop(0),
            block_start(1, {"type": "text", "text": ""}),
            block_stop(1),
            block_start(2, {"type": "text", "text": ""}),
            block_stop(2),
            block_start(3, {"type": "tool_use", "id": "toolu_x", "name": "f", "input": {}}),
            delta(3, {"type": "input_json_delta", "partial_json": "{}"}),
            block_stop(3),
            message_delta("tool_use"),
            STOP,
        ]
    )
    assert await run(upstream) == [
        ev.Usage(input_tokens=5),
        ev.ToolCallDelta(index=0, id="toolu_x", name="f"),
        ev.ToolCallDelta(index=0, arguments="{}"),
        ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=5, output_tokens=1)),
    ]


async def test_thinking_and_signature_deltas() -> None:
    upstream = sse_upstream(
        [
            start(),
            block_start(0, {"type": "thinking", "thinking": ""}),
            delta(0, {"type": "thinking_delta", "thinking": "Let me solve"}),
            delta(0, {"type": "thinking_delta", "thinking": " this."}),
            delta(0, {"type": "signature_delta", "signature": "EqQBCgIYAh=="}),
            block_stop(0),
            block_start(1, {"type": "text", "text": ""}),
            text(1, "12,231"),
            block_stop(1),
            message_delta("end_turn", {"output_tokens": 9}),
            STOP,
        ]
    )
    assert await run(upstream) == [
        ev.Usage(input_tokens=5),
        ev.ReasoningDelta(text="Let me solve"),
        ev.ReasoningDelta(text=" this."),
        ev.ReasoningDelta(text="", signature="EqQBCgIYAh=="),
        ev.TextDelta(text="12,231"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=5, output_tokens=9)),
    ]


async def test_unknown_blocks_deltas_and_events_are_ignored() -> None:
    upstream = sse_upstream(
        [
            start(),
            frame({"type": "something_new", "payload": 1}),
            block_start(0, {"type": "redacted_thinking", "data": "opaque"}),
            block_stop(0),
            block_start(1, {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search"}),
            delta(1, {"type": "input_json_delta", "partial_json": '{"query": "x"}'}),
            block_stop(1),
            block_start(2, {"type": "text", "text": ""}),
            delta(2, {"type": "citations_delta", "citation": {"type": "char_location"}}),
            delta(2, {"type": "brand_new_delta", "x": 1}),
            text(2, "kept"),
            block_stop(2),
            message_delta("end_turn"),
            STOP,
        ]
    )
    events = await run(upstream)
    assert events[:-1] == [ev.Usage(input_tokens=5), ev.TextDelta(text="kept")]
    assert isinstance(events[-1], ev.Finish)


async def test_type_from_event_name_when_data_lacks_it() -> None:
    upstream = sse_upstream(
        [
            mock.frame(
                "content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "a"}}
            ),
            mock.frame("message_delta", {"delta": {"stop_reason": "max_tokens"}}),
            mock.frame("message_stop", {}),
        ]
    )
    assert await run(upstream) == [ev.TextDelta(text="a"), ev.Finish(reason="length")]


@pytest.mark.parametrize(
    ("stop_reason", "expected"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        ("something_new", "stop"),
        (None, "stop"),
    ],
)
async def test_stop_reason_mapping(stop_reason: str | None, expected: str) -> None:
    events = await run(sse_upstream(text_message("x", stop_reason=stop_reason)))
    last = events[-1]
    assert isinstance(last, ev.Finish)
    assert last.reason == expected


async def test_message_stop_without_message_delta_finishes_with_stop() -> None:
    upstream = sse_upstream(
        [start(), block_start(0, {"type": "text", "text": ""}), text(0, "a"), STOP]
    )
    assert await run(upstream) == [
        ev.Usage(input_tokens=5),
        ev.TextDelta(text="a"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=5, output_tokens=1)),
    ]


async def test_usage_counts_cache_input_and_is_cumulative() -> None:
    upstream = sse_upstream(
        [
            start(input_tokens=10, cache_creation_input_tokens=100, cache_read_input_tokens=1000),
            message_delta(None, {"output_tokens": 3}),
            message_delta("end_turn", {"input_tokens": 0, "output_tokens": 8}),
            STOP,
        ]
    )
    assert await run(upstream) == [
        ev.Finish(
            reason="stop",
            usage=ev.Usage(input_tokens=1110, output_tokens=8, cached_input_tokens=1000),
        )
    ]


async def test_no_usage_anywhere_means_no_usage() -> None:
    upstream = sse_upstream(
        [
            frame({"type": "message_start", "message": {"id": "m", "content": []}}),
            message_delta("end_turn"),
            STOP,
        ]
    )
    assert await run(upstream) == [ev.Finish(reason="stop")]


async def test_everything_after_message_stop_is_ignored() -> None:
    upstream = sse_upstream(
        [
            *text_message("a")[:-1],
            STOP + text(0, "AFTER-SAME-READ") + error_event("api_error", "never seen"),
            text(0, "AFTER"),
            message_delta("max_tokens"),
            STOP,
        ]
    )
    events = await run(upstream)
    assert events == [
        ev.Usage(input_tokens=5),
        ev.TextDelta(text="a"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=5, output_tokens=3)),
    ]
    assert sum(isinstance(e, ev.Finish) for e in events) == 1


async def test_input_json_delta_for_unknown_block_is_ignored() -> None:
    upstream = sse_upstream(
        [start(), delta(7, {"type": "input_json_delta", "partial_json": "{}"}), STOP]
    )
    assert [type(e) for e in await run(upstream)] == [ev.Finish]


# --- framing -------------------------------------------------------------------------------

MULTIBYTE = "héllo wörld 日本語 ✓ 🎉"


def framing_body() -> bytes:
    return b"".join(
        [
            b": a comment\n\n",
            start(input_tokens=2),
            PING,
            block_start(0, {"type": "thinking", "thinking": ""}),
            delta(0, {"type": "thinking_delta", "thinking": "pensée 🤔"}),
            delta(0, {"type": "signature_delta", "signature": "sig=="}),
            block_stop(0),
            block_start(1, {"type": "text", "text": ""}),
            text(1, MULTIBYTE),
            block_stop(1),
            block_start(2, {"type": "tool_use", "id": "toolu_1", "name": "t", "input": {}}),
            delta(2, {"type": "input_json_delta", "partial_json": '{"q": "日本'}),
            delta(2, {"type": "input_json_delta", "partial_json": '語"}'}),
            block_stop(2),
            message_delta("tool_use", {"output_tokens": 3}),
            STOP,
        ]
    )


FRAMING_EXPECTED: list[ev.Event] = [
    ev.Usage(input_tokens=2),
    ev.ReasoningDelta(text="pensée 🤔"),
    ev.ReasoningDelta(text="", signature="sig=="),
    ev.TextDelta(text=MULTIBYTE),
    ev.ToolCallDelta(index=0, id="toolu_1", name="t"),
    ev.ToolCallDelta(index=0, arguments='{"q": "日本'),
    ev.ToolCallDelta(index=0, arguments='語"}'),
    ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=2, output_tokens=3)),
]


def has_replacement_char(events: list[ev.Event]) -> bool:
    return any("\ufffd" in e.model_dump_json() for e in events)


async def test_events_split_across_reads_at_every_offset() -> None:
    body = framing_body()
    reads: list[bytes] = []
    upstream = Upstream(lambda _: httpx.Response(200, stream=ChunkStream(reads)))
    async with upstream.client() as client:
        provider = AnthropicProvider(client)
        for offset in range(1, len(body)):
            reads[:] = [body[:offset], body[offset:]]
            events = [e async for e in provider.stream(make_request(), make_entry())]
            assert events == FRAMING_EXPECTED, f"split at byte {offset}"
    assert len(upstream.requests) == len(body) - 1


async def test_events_one_byte_per_read() -> None:
    body = framing_body()
    events = await run(sse_upstream([body[i : i + 1] for i in range(len(body))]))
    assert events == FRAMING_EXPECTED
    assert not has_replacement_char(events)


async def test_multibyte_characters_split_across_reads() -> None:
    body = framing_body()
    for char in ("🎉", "日", "é", "🤔"):
        encoded = char.encode()
        at = body.index(encoded)
        for cut in range(at + 1, at + len(encoded)):
            events = await run(sse_upstream([body[:cut], body[cut:]]))
            assert events == FRAMING_EXPECTED, f"{char!r} cut at {cut}"
            assert not has_replacement_char(events)


async def test_crlf_line_ends() -> None:
    body = framing_body().replace(b"\n", b"\r\n")
    cut = body.index(b"\r\n\r\n") + 1  # CR in one read, its LF in the next
    assert await run(sse_upstream([body[:cut], body[cut:]])) == FRAMING_EXPECTED


async def test_malformed_events_are_skipped() -> None:
    upstream = sse_upstream(
        [
            start(),
            b"event: content_block_delta\ndata: {not json\n\n",
            b"event: content_block_delta\ndata: [1, 2]\n\n",
            frame(
                {"type": "content_block_start", "index": "x", "content_block": {"type": "tool_use"}}
            ),
            text(0, "after"),
            message_delta("end_turn"),
            STOP,
        ]
    )
    events = await run(upstream)
    assert events[:-1] == [ev.Usage(input_tokens=5), ev.TextDelta(text="after")]
    assert isinstance(events[-1], ev.Finish)


# --- errors --------------------------------------------------------------------------------


async def test_error_event_mid_stream_raises() -> None:
    upstream = sse_upstream(
        [
            start(),
            block_start(0, {"type": "text", "text": ""}),
            text(0, "partial"),
            b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n',
            text(0, "never"),
            STOP,
        ]
    )
    got, error = await run_until_error(upstream)
    assert got == [ev.Usage(input_tokens=5), ev.TextDelta(text="partial")]
    assert error.code == "upstream_error"
    assert error.retryable is True
    assert error.upstream_status == 529
    assert "Overloaded" in error.message
    assert "overloaded_error" in error.message


@pytest.mark.parametrize(
    ("kind", "retryable", "status"),
    [
        ("overloaded_error", True, 529),
        ("api_error", True, 500),
        ("rate_limit_error", True, 429),
        ("timeout_error", True, 504),
        ("invalid_request_error", False, 400),
        ("authentication_error", False, 401),
        ("brand_new_error", False, None),
    ],
)
async def test_error_event_retryability(kind: str, retryable: bool, status: int | None) -> None:
    _, error = await run_until_error(sse_upstream([start(), error_event(kind, "details here")]))
    assert error.retryable is retryable
    assert error.upstream_status == status
    assert error.code == "upstream_error"
    assert "details here" in error.message


async def test_error_event_with_odd_error_field() -> None:
    _, error = await run_until_error(
        sse_upstream([frame({"type": "error", "error": "plain string"})])
    )
    assert "plain string" in error.message
    assert error.retryable is False


def error_response(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def respond(_: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return httpx.Response(status, headers=headers or {}, content=content)

    return respond


async def test_http_529_overloaded() -> None:
    upstream = Upstream(error_response(529, mock.error_body("overloaded_error", "Overloaded")))
    got, error = await run_until_error(upstream)
    assert got == []
    assert error.upstream_status == 529
    assert error.retryable is True
    assert error.code == "upstream_error"
    assert "Overloaded" in error.message


async def test_http_429_with_retry_after() -> None:
    upstream = Upstream(
        error_response(
            429,
            mock.error_body("rate_limit_error", "Number of request tokens has exceeded your limit"),
            {"retry-after": "12"},
        )
    )
    _, error = await run_until_error(upstream)
    assert error.upstream_status == 429
    assert error.retry_after == 12.0
    assert error.retryable is True
    assert "exceeded your limit" in error.message


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413])
async def test_http_4xx_is_not_retryable(status: int) -> None:
    upstream = Upstream(
        error_response(
            status, mock.error_body("invalid_request_error", "max_tokens: Field required")
        )
    )
    _, error = await run_until_error(upstream)
    assert error.upstream_status == status
    assert error.retryable is False
    assert "max_tokens: Field required" in error.message


async def test_stream_cut_before_message_stop_is_incomplete() -> None:
    body = text_message("a", "b")[:-1]  # everything but message_stop
    got, error = await run_until_error(sse_upstream(body))
    assert got == [ev.Usage(input_tokens=5), ev.TextDelta(text="a"), ev.TextDelta(text="b")]
    assert error.code == "upstream_incomplete"
    assert error.retryable is True


async def test_stream_cut_mid_event_is_incomplete() -> None:
    body = b"".join(text_message("a"))
    _, error = await run_until_error(sse_upstream([body[:-1]]))  # message_stop lacks its blank line
    assert error.code == "upstream_incomplete"


async def test_empty_stream_is_incomplete() -> None:
    _, error = await run_until_error(sse_upstream([]))
    assert error.code == "upstream_incomplete"


async def test_timeout_is_retryable_upstream_error() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("too slow", request=request)

    _, error = await run_until_error(Upstream(respond))
    assert error.code == "upstream_timeout"
    assert error.retryable is True


async def test_closing_the_iteration_closes_the_upstream_response() -> None:
    stream = ChunkStream(text_message("a", "b", "c"))
    upstream = Upstream(lambda _: httpx.Response(200, stream=stream))
    async with upstream.client() as client:
        events = AnthropicProvider(client).stream(make_request(), make_entry())
        async with contextlib.aclosing(events):
            first = [await events.__anext__(), await events.__anext__()]
        assert first == [ev.Usage(input_tokens=5), ev.TextDelta(text="a")]
    assert stream.closed
    assert stream.consumed < len(stream.chunks)


# --- the upstream request ------------------------------------------------------------------


async def test_request_url_and_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-secret-123")
    upstream = sse_upstream(text_message("x"))
    await run(upstream, entry=make_entry(extra_headers={"anthropic-beta": "some-beta"}))
    assert len(upstream.requests) == 1
    sent = upstream.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == f"{BASE_URL}/messages"
    assert sent.headers["x-api-key"] == "sk-ant-secret-123"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.headers["anthropic-beta"] == "some-beta"
    assert "authorization" not in sent.headers
    body = orjson.loads(sent.content)
    assert body == {
        "model": "claude-upstream",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


async def test_no_key_header_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    upstream = sse_upstream(text_message("x"))
    await run(upstream)
    assert "x-api-key" not in upstream.requests[0].headers
    assert upstream.requests[0].headers["anthropic-version"] == "2023-06-01"


async def test_default_base_url_and_public_model_name() -> None:
    upstream = sse_upstream(text_message("x"))
    entry = ModelEntry.model_validate({"provider": "anthropic"})
    await run(upstream, entry=entry)
    sent = upstream.requests[0]
    assert str(sent.url) == "https://api.anthropic.com/v1/messages"
    assert orjson.loads(sent.content)["model"] == "public-name"


async def test_base_url_trailing_slash() -> None:
    upstream = sse_upstream(text_message("x"))
    await run(upstream, entry=make_entry(base_url=BASE_URL + "/"))
    assert str(upstream.requests[0].url) == f"{BASE_URL}/messages"


# --- build_body ----------------------------------------------------------------------------


def body_for(**kw: Any) -> dict[str, Any]:
    return build_body(make_request(**kw), "claude-x")


def test_body_minimal() -> None:
    assert body_for() == {
        "model": "claude-x",
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }


def test_body_sampling_and_stop() -> None:
    body = body_for(max_tokens=100, temperature=0.3, top_p=0.9, stop=["END", "\n\nHuman:"], seed=7)
    assert body["max_tokens"] == 100
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["stop_sequences"] == ["END", "\n\nHuman:"]
    assert "stop" not in body
    assert "seed" not in body  # Anthropic has no seed


def test_body_temperature_is_clamped_to_anthropic_range() -> None:
    assert body_for(temperature=1.7)["temperature"] == 1.0
    assert body_for(temperature=0)["temperature"] == 0


def test_body_user_becomes_metadata() -> None:
    assert body_for(user="user-42")["metadata"] == {"user_id": "user-42"}
    assert "metadata" not in body_for()


def test_body_system_messages_become_system() -> None:
    body = body_for(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Be kind."},
        ]
    )
    assert body["system"] == "Be brief.\n\nBe kind."
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert "system" not in body_for()


def test_body_consecutive_roles_are_merged() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    )
    assert body["messages"] == [
        {
            "role": "user",
            "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}],
        },
        {
            "role": "assistant",
            "content": [{"type": "text", "text": "three"}, {"type": "text", "text": "four"}],
        },
        {"role": "user", "content": "five"},
    ]


def test_body_empty_messages_are_dropped_and_neighbours_merged() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "b"},
        ]
    )
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


TOOL_CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You have tools."},
    {"role": "user", "content": "Weather in Paris and the time?"},
    {
        "role": "assistant",
        "content": "Let me look.",
        "tool_calls": [
            {"id": "toolu_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"id": "toolu_2", "name": "get_time", "arguments": "not json"},
            {"id": "toolu_3", "name": "noop", "arguments": "[1, 2]"},
            {"id": "toolu_4", "name": "empty", "arguments": ""},
        ],
    },
    {"role": "tool", "tool_call_id": "toolu_1", "name": "get_weather", "content": "18C"},
    {"role": "tool", "tool_call_id": "toolu_2", "name": "get_time", "content": "12:00"},
    {"role": "tool", "tool_call_id": "toolu_3", "content": ""},
    {"role": "tool", "tool_call_id": "toolu_4", "content": "ok"},
    {"role": "user", "content": "Thanks. Summarise."},
]


def test_body_tool_calls_and_results() -> None:
    body = body_for(messages=TOOL_CONVERSATION)
    assert body["system"] == "You have tools."
    assert body["messages"] == [
        {"role": "user", "content": "Weather in Paris and the time?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Let me look."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}},
                {"type": "tool_use", "id": "toolu_3", "name": "noop", "input": {}},
                {"type": "tool_use", "id": "toolu_4", "name": "empty", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "content": "12:00"},
                {"type": "tool_result", "tool_use_id": "toolu_3"},
                {"type": "tool_result", "tool_use_id": "toolu_4", "content": "ok"},
                {"type": "text", "text": "Thanks. Summarise."},
            ],
        },
    ]


def test_body_assistant_tool_call_without_text() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "toolu_9", "name": "f", "arguments": '{"a": [1, {"b": null}]}'}
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_9", "content": "done"},
        ]
    )
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "tool_use", "id": "toolu_9", "name": "f", "input": {"a": [1, {"b": None}]}}
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": "toolu_9", "content": "done"}],
    }


def test_body_tool_results_open_the_user_turn() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "t1", "name": "f", "arguments": "{}"}]},
            {"role": "user", "content": "note first"},
            {"role": "tool", "tool_call_id": "t1", "content": "r"},
        ]
    )
    assert [b["type"] for b in body["messages"][2]["content"]] == ["tool_result", "text"]


def test_body_tools() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = body_for(
        tools=[
            {"name": "get_weather", "description": "Weather for a city", "parameters": schema},
            {"name": "ping"},
        ]
    )
    assert body["tools"] == [
        {"name": "get_weather", "description": "Weather for a city", "input_schema": schema},
        {"name": "ping", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert "tool_choice" not in body


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", {"type": "auto"}),
        ("required", {"type": "any"}),
        ("none", {"type": "none"}),
        ("get_weather", {"type": "tool", "name": "get_weather"}),
    ],
)
def test_body_tool_choice(choice: str, expected: dict[str, Any]) -> None:
    body = body_for(tools=[{"name": "get_weather"}], tool_choice=choice)
    assert body["tool_choice"] == expected


def test_body_tool_choice_without_tools_is_not_sent() -> None:
    assert "tool_choice" not in body_for(tool_choice="auto")


def test_body_thinking_default_budget() -> None:
    body = body_for(reasoning=True)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 4096
    assert "thinking" not in body_for()


def test_body_thinking_budget_raises_max_tokens() -> None:
    body = body_for(reasoning=True, reasoning_budget=8000, max_tokens=500)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8000}
    assert body["max_tokens"] == 8500
    assert body["max_tokens"] > body["thinking"]["budget_tokens"]


def test_body_thinking_budget_below_minimum_is_raised() -> None:
    body = body_for(reasoning=True, reasoning_budget=10, max_tokens=2000)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["max_tokens"] == 2000


def test_body_thinking_budget_equal_to_max_tokens() -> None:
    body = body_for(reasoning=True, reasoning_budget=2048, max_tokens=2048)
    assert body["max_tokens"] > 2048


def test_body_is_json_serialisable() -> None:
    body = body_for(messages=TOOL_CONVERSATION, tools=[{"name": "get_weather"}], reasoning=True)
    assert orjson.loads(orjson.dumps(body)) == body


# --- the mock Anthropic upstream, through httpx.ASGITransport ------------------------------


def mock_app(upstream: MockUpstream) -> Starlette:
    async def messages(request: Request) -> Response:
        return await mock.handle_messages(upstream, request)

    return Starlette(routes=[Route("/v1/messages", messages, methods=["POST"])])


class WritesASGITransport(httpx.AsyncBaseTransport):
    """Like httpx.ASGITransport, which joins the whole response body into one read, but
    hands the body over in the app's own writes, so the mock's 1-3 byte writes stay split."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": request.method,
            "headers": [(k.lower(), v) for k, v in request.headers.raw],
            "scheme": request.url.scheme,
            "path": request.url.path,
            "raw_path": request.url.raw_path.split(b"?")[0],
            "query_string": request.url.query,
            "server": (request.url.host, request.url.port or 80),
            "client": ("127.0.0.1", 1234),
            "root_path": "",
        }
        sent_body = False
        finished = asyncio.Event()
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        writes: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent_body
            if not sent_body:
                sent_body = True
                return {"type": "http.request", "body": content, "more_body": False}
            await finished.wait()
            return {"type": "http.disconnect"}

        async def send(message: MutableMapping[str, Any]) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status, headers = message["status"], list(message.get("headers", []))
            elif message["type"] == "http.response.body" and message.get("body"):
                writes.append(message["body"])

        await self.app(scope, receive, send)
        finished.set()
        return httpx.Response(status, headers=headers, stream=ChunkStream(writes))


TRANSPORTS: dict[str, Callable[[Starlette], httpx.AsyncBaseTransport]] = {
    "asgi": lambda app: httpx.ASGITransport(app=app),
    "writes": WritesASGITransport,
}


def mock_client(upstream: MockUpstream, transport: str = "asgi") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=TRANSPORTS[transport](mock_app(upstream)))


def mock_entry(model: str) -> ModelEntry:
    return make_entry(base_url="http://mock.test/v1", model=model)


async def via_mock(
    model: str, request: GenerationRequest | None = None, transport: str = "asgi"
) -> list[ev.Event]:
    async with mock_client(MockUpstream(), transport) as client:
        provider = AnthropicProvider(client)
        return [e async for e in provider.stream(request or make_request(), mock_entry(model))]


async def error_via_mock(model: str) -> tuple[list[ev.Event], UpstreamError]:
    got: list[ev.Event] = []
    async with mock_client(MockUpstream()) as client:
        provider = AnthropicProvider(client)
        with pytest.raises(UpstreamError) as info:
            async for e in provider.stream(make_request(), mock_entry(model)):
                got.append(e)
    return got, info.value


MOCK_TEXT_EXPECTED: list[ev.Event] = [
    ev.Usage(input_tokens=mock.INPUT_TOKENS),
    *(ev.TextDelta(text=p) for p in mock.TEXT_PIECES),
    ev.Finish(
        reason="stop",
        usage=ev.Usage(input_tokens=mock.INPUT_TOKENS, output_tokens=mock.OUTPUT_TOKENS),
    ),
]


@pytest.mark.parametrize("transport", sorted(TRANSPORTS))
@pytest.mark.parametrize("model", ["claude-text", "claude-split"])
async def test_mock_text(model: str, transport: str) -> None:
    events = await via_mock(model, transport=transport)
    assert events == MOCK_TEXT_EXPECTED
    assert "".join(e.text for e in events if isinstance(e, ev.TextDelta)) == "héllo wörld 日本語 ✓"
    assert not has_replacement_char(events)


async def test_mock_split_really_writes_a_few_bytes_at_a_time() -> None:
    async with mock_client(MockUpstream(), "writes") as client:
        body = {
            "model": "claude-split",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
        }
        async with client.stream("POST", "http://mock.test/v1/messages", json=body) as response:
            reads = [raw async for raw in response.aiter_raw()]
    assert max(len(r) for r in reads) <= 3
    whole = b"".join(reads)
    assert whole.startswith(b"event: message_start\ndata: {")
    assert whole.endswith(b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    # Some read boundary falls inside a multi-byte character.
    with pytest.raises(UnicodeDecodeError):
        for r in reads:
            r.decode("utf-8")


async def test_mock_tools() -> None:
    events = await via_mock("claude-tools")
    assert events == [
        ev.Usage(input_tokens=11),
        ev.TextDelta(text="Let me"),
        ev.TextDelta(text=" look."),
        ev.ToolCallDelta(index=0, id=mock.TOOL_ID, name=mock.TOOL_NAME, arguments=""),
        ev.ToolCallDelta(index=0, arguments='{"city": '),
        ev.ToolCallDelta(index=0, arguments='"Paris", "unit": "c'),
        ev.ToolCallDelta(index=0, arguments='elsius"}'),
        ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=11, output_tokens=7)),
    ]
    arguments = "".join(e.arguments for e in events if isinstance(e, ev.ToolCallDelta))
    assert orjson.loads(arguments) == {"city": "Paris", "unit": "celsius"}


async def test_mock_thinking() -> None:
    events = await via_mock("claude-thinking", make_request(reasoning=True))
    assert events == [
        ev.Usage(input_tokens=11),
        *(ev.ReasoningDelta(text=p) for p in mock.THINKING_PIECES),
        ev.ReasoningDelta(text="", signature=mock.SIGNATURE),
        ev.TextDelta(text=mock.THINKING_ANSWER),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=11, output_tokens=7)),
    ]


async def test_mock_max_tokens() -> None:
    events = await via_mock("claude-max-tokens", make_request(max_tokens=5))
    assert events[-1] == ev.Finish(
        reason="length", usage=ev.Usage(input_tokens=11, output_tokens=5)
    )
    assert [e.text for e in events if isinstance(e, ev.TextDelta)] == [
        "This answer is cut",
        " short",
    ]


async def test_mock_overloaded_event() -> None:
    got, error = await error_via_mock("claude-overloaded")
    assert got == [ev.Usage(input_tokens=mock.INPUT_TOKENS), ev.TextDelta(text="partial")]
    assert error.retryable is True
    assert error.upstream_status == 529
    assert "Overloaded" in error.message


async def test_mock_http_529() -> None:
    got, error = await error_via_mock("claude-529")
    assert got == []
    assert error.upstream_status == 529
    assert error.retryable is True
    assert "Overloaded" in error.message


async def test_mock_unknown_model_is_404() -> None:
    _, error = await error_via_mock("claude-nope")
    assert error.upstream_status == 404
    assert error.retryable is False
    assert "claude-nope" in error.message


async def test_mock_records_what_it_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-ant-mock")
    upstream = MockUpstream()
    request = make_request(
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}],
        max_tokens=50,
    )
    async with mock_client(upstream) as client:
        provider = AnthropicProvider(client)
        _ = [e async for e in provider.stream(request, mock_entry("claude-text"))]
    assert len(upstream.seen) == 1
    seen = upstream.seen[0]
    assert seen.model == "claude-text"
    assert seen.prompt == "hello"
    assert seen.headers["x-api-key"] == "sk-ant-mock"
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert seen.body["system"] == "sys"
    assert seen.body["max_tokens"] == 50
    assert seen.body["stream"] is True


async def test_mock_non_streaming_message() -> None:
    async with mock_client(MockUpstream()) as client:
        body = {
            "model": "claude-text",
            "max_tokens": 10,
            "messages": [{"role": "user", "content": "hi"}],
        }
        response = await client.post("http://mock.test/v1/messages", json=body)
    assert response.status_code == 200
    message = response.json()
    assert message["type"] == "message"
    assert message["role"] == "assistant"
    assert message["content"] == [{"type": "text", "text": "héllo wörld 日本語 ✓"}]
    assert message["stop_reason"] == "end_turn"
    assert message["usage"] == {"input_tokens": 11, "output_tokens": 7}


async def test_mock_rejects_a_body_without_max_tokens() -> None:
    async with mock_client(MockUpstream()) as client:
        body = {"model": "claude-text", "messages": [{"role": "user", "content": "hi"}]}
        response = await client.post("http://mock.test/v1/messages", json=body)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"


# --- the mock against the official SDK's types ---------------------------------------


def sdk_client(anthropic: Any, upstream: MockUpstream) -> Any:
    """The official SDK's client, talking to the mock in-process. Recent SDKs are built on
    httpx2 and refuse httpx objects; older ones on httpx."""
    base = importlib.import_module("anthropic._base_client")
    http = getattr(base, "httpx2", None) or base.httpx
    transport = http.ASGITransport(app=mock_app(upstream))
    return anthropic.AsyncAnthropic(
        api_key="sk-ant-sdk",
        base_url="http://mock.test",
        http_client=http.AsyncClient(transport=transport),
        max_retries=0,
    )


@pytest.mark.parametrize("model", sorted(mock.SCRIPTS))
def test_mock_stream_events_match_sdk_types(model: str) -> None:
    from pydantic import TypeAdapter

    stream_event: TypeAdapter[Any] = TypeAdapter(anthropic.types.RawMessageStreamEvent)
    for name, data in mock.SCRIPTS[model](model):
        if name in ("ping", "error"):
            assert data["type"] == name
            continue
        parsed = stream_event.validate_python(data)
        assert parsed.type == name


@pytest.mark.parametrize("model", ["claude-text", "claude-tools", "claude-thinking"])
async def test_sdk_reads_the_mock(model: str) -> None:
    upstream = MockUpstream()
    async with sdk_client(anthropic, upstream) as client:
        async with client.messages.stream(
            model=model, max_tokens=2048, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            streamed = await stream.get_final_message()
        created = await client.messages.create(
            model=model, max_tokens=2048, messages=[{"role": "user", "content": "hi"}]
        )
    assert streamed.model_dump() == created.model_dump()
    assert [seen.body.get("stream") for seen in upstream.seen] == [True, None]
    assert streamed.usage.input_tokens == mock.INPUT_TOKENS
    if model == "claude-tools":
        tool = streamed.content[-1]
        assert tool.type == "tool_use"
        assert tool.input == {"city": "Paris", "unit": "celsius"}
    if model == "claude-thinking":
        assert streamed.content[0].type == "thinking"
        assert streamed.content[0].signature == mock.SIGNATURE


async def test_sdk_sees_the_mock_529() -> None:
    async with sdk_client(anthropic, MockUpstream()) as client:
        with pytest.raises(anthropic.APIStatusError) as info:
            await client.messages.create(
                model="claude-529", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.status_code == 529
