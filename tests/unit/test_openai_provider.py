"""Unit tests for worker/providers/openai.py against an in-process httpx.MockTransport."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from shared import events as ev
from shared.errors import UpstreamError
from shared.model_table import ModelEntry
from shared.request import GenerationRequest
from tests.unit.upstream_fakes import (
    ChunkStream,
    Upstream,
    make_request,
    run_provider,
    run_provider_until_error,
    sse_upstream,
)
from worker.providers.http import parse_retry_after
from worker.providers.openai import OpenAIProvider, _ChunkMapper, build_body

KEY_ENV = "SPOOL_UNIT_TEST_OPENAI_KEY"
BASE_URL = "http://upstream.test/v1"


def data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def chunk(
    delta: dict[str, Any] | None = None,
    finish_reason: str | None = None,
    *,
    index: int = 0,
) -> bytes:
    return data(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-upstream",
            "choices": [{"index": index, "delta": delta or {}, "finish_reason": finish_reason}],
        }
    )


def usage_chunk(prompt: int, completion: int) -> bytes:
    return data(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-upstream",
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
    )


DONE = b"data: [DONE]\n\n"


def make_entry(**kw: Any) -> ModelEntry:
    return ModelEntry.model_validate(
        {
            "provider": "openai",
            "base_url": BASE_URL,
            "model": "gpt-upstream",
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
        OpenAIProvider, upstream, request or make_request(), entry or make_entry()
    )


async def run_until_error(upstream: Upstream) -> tuple[list[ev.Event], UpstreamError]:
    return await run_provider_until_error(OpenAIProvider, upstream, make_request(), make_entry())


# --- content mapping -----------------------------------------------------------------------


async def test_content_deltas_in_order() -> None:
    upstream = sse_upstream(
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": "Hel"}),
            chunk({"content": "lo, "}),
            chunk({"content": "world"}),
            chunk({}, "stop"),
            usage_chunk(3, 4),
            DONE,
        ]
    )
    events = await run(upstream)
    assert events == [
        ev.TextDelta(text="Hel"),
        ev.TextDelta(text="lo, "),
        ev.TextDelta(text="world"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=3, output_tokens=4)),
    ]


async def test_null_and_empty_content_yield_nothing() -> None:
    upstream = sse_upstream(
        [
            chunk({"role": "assistant", "content": None}),
            chunk({"content": ""}),
            chunk({"content": "x"}),
            chunk(None, "stop"),
            DONE,
        ]
    )
    assert await run(upstream) == [ev.TextDelta(text="x"), ev.Finish(reason="stop")]


async def test_reasoning_fields_map_to_reasoning_delta() -> None:
    upstream = sse_upstream(
        [
            chunk({"reasoning_content": "Let me "}),
            chunk({"reasoning": "think."}),
            chunk({"reasoning_content": None, "content": "Answer"}),
            chunk({}, "stop"),
            DONE,
        ]
    )
    assert await run(upstream) == [
        ev.ReasoningDelta(text="Let me "),
        ev.ReasoningDelta(text="think."),
        ev.TextDelta(text="Answer"),
        ev.Finish(reason="stop"),
    ]


async def test_tool_call_deltas() -> None:
    upstream = sse_upstream(
        [
            chunk({"role": "assistant", "content": None}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": "{}"},
                        }
                    ]
                }
            ),
            chunk({}, "tool_calls"),
            usage_chunk(10, 20),
            DONE,
        ]
    )
    assert await run(upstream) == [
        ev.ToolCallDelta(index=0, id="call_a", name="get_weather", arguments=""),
        ev.ToolCallDelta(index=0, arguments='{"city": '),
        ev.ToolCallDelta(index=0, arguments='"Paris"}'),
        ev.ToolCallDelta(index=1, id="call_b", name="get_time", arguments="{}"),
        ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=10, output_tokens=20)),
    ]


async def test_choices_other_than_index_zero_are_ignored() -> None:
    upstream = sse_upstream(
        [
            chunk({"content": "mine"}),
            chunk({"content": "other"}, index=1),
            chunk({}, "length", index=1),
            chunk({}, "stop"),
            DONE,
        ]
    )
    assert await run(upstream) == [ev.TextDelta(text="mine"), ev.Finish(reason="stop")]


@pytest.mark.parametrize(
    ("upstream_reason", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("tool_calls", "tool_calls"),
        ("function_call", "tool_calls"),
        ("content_filter", "content_filter"),
        ("something_new", "stop"),
    ],
)
async def test_finish_reason_mapping(upstream_reason: str, expected: str) -> None:
    upstream = sse_upstream([chunk({"content": "x"}), chunk({}, upstream_reason), DONE])
    events = await run(upstream)
    assert events[-1] == ev.Finish.model_validate({"reason": expected})


async def test_finish_reason_in_same_chunk_as_content() -> None:
    upstream = sse_upstream([chunk({"content": "all at once"}, "stop"), DONE])
    assert await run(upstream) == [ev.TextDelta(text="all at once"), ev.Finish(reason="stop")]


async def test_usage_from_final_chunk_lands_in_finish() -> None:
    upstream = sse_upstream(
        [chunk({"content": "a"}), chunk({}, "length"), usage_chunk(11, 1), DONE]
    )
    events = await run(upstream)
    last = events[-1]
    assert isinstance(last, ev.Finish)
    assert last.reason == "length"
    assert last.usage == ev.Usage(input_tokens=11, output_tokens=1)
    assert sum(isinstance(e, ev.Finish) for e in events) == 1


async def test_no_usage_chunk_means_no_usage() -> None:
    upstream = sse_upstream([chunk({"content": "a"}), chunk({}, "stop"), DONE])
    last = (await run(upstream))[-1]
    assert isinstance(last, ev.Finish)
    assert last.usage is None


async def test_stream_without_done_but_with_finish_reason_completes() -> None:
    upstream = sse_upstream([chunk({"content": "a"}), chunk({}, "stop")])
    assert await run(upstream) == [ev.TextDelta(text="a"), ev.Finish(reason="stop")]


# --- framing -------------------------------------------------------------------------------

MULTIBYTE = "héllo 日本語 ✓ 🎉"


def framing_body() -> bytes:
    return b"".join(
        [
            b": keep-alive comment\n\n",
            chunk({"role": "assistant", "content": ""}),
            chunk({"content": MULTIBYTE}),
            chunk({"content": " and more 🎉"}),
            chunk({}, "stop"),
            usage_chunk(2, 3),
            DONE,
        ]
    )


FRAMING_EXPECTED: list[ev.Event] = [
    ev.TextDelta(text=MULTIBYTE),
    ev.TextDelta(text=" and more 🎉"),
    ev.Finish(reason="stop", usage=ev.Usage(input_tokens=2, output_tokens=3)),
]


async def test_events_split_across_reads_at_every_offset() -> None:
    body = framing_body()
    reads: list[bytes] = []
    upstream = Upstream(lambda _: httpx.Response(200, stream=ChunkStream(reads)))
    async with upstream.client() as client:
        provider = OpenAIProvider(client)
        for offset in range(1, len(body)):
            reads[:] = [body[:offset], body[offset:]]
            events = [e async for e in provider.stream(make_request(), make_entry())]
            assert events == FRAMING_EXPECTED, f"split at byte {offset}"
    assert len(upstream.requests) == len(body) - 1


async def test_events_one_byte_per_read() -> None:
    body = framing_body()
    events = await run(sse_upstream([body[i : i + 1] for i in range(len(body))]))
    assert events == FRAMING_EXPECTED


async def test_multibyte_character_split_across_reads() -> None:
    body = framing_body()
    emoji = "🎉".encode()
    at = body.index(emoji)
    for cut in range(at + 1, at + len(emoji)):
        events = await run(sse_upstream([body[:cut], body[cut:]]))
        assert events == FRAMING_EXPECTED
        assert all("\ufffd" not in e.text for e in events if isinstance(e, ev.TextDelta))


async def test_crlf_line_ends_from_upstream() -> None:
    body = framing_body().replace(b"\n", b"\r\n")
    cut = body.index(b"\r\n\r\n") + 1  # CR in one read, its LF in the next
    assert await run(sse_upstream([body[:cut], body[cut:]])) == FRAMING_EXPECTED


async def test_non_json_data_event_is_skipped() -> None:
    upstream = sse_upstream(
        [
            chunk({"content": "before"}),
            b"data: this is not json\n\n",
            b"data: [1, 2, 3]\n\n",
            b'data: "a string"\n\n',
            chunk({"content": "after"}),
            chunk({}, "stop"),
            DONE,
        ]
    )
    assert await run(upstream) == [
        ev.TextDelta(text="before"),
        ev.TextDelta(text="after"),
        ev.Finish(reason="stop"),
    ]


async def test_odd_sse_fields_from_upstream_do_not_break_the_stream() -> None:
    # "retry: \u00b2" (superscript two) is not an ASCII-digit retry value: it must be
    # ignored like any other malformed field, not raise out of the provider.
    upstream = sse_upstream(
        [
            b"retry: \xc2\xb2\nevent: x\nid: 1\nfoo: bar\n\n",
            chunk({"content": "ok"}),
            chunk({}, "stop"),
            DONE,
        ]
    )
    assert await run(upstream) == [ev.TextDelta(text="ok"), ev.Finish(reason="stop")]


async def test_everything_after_done_is_ignored() -> None:
    upstream = sse_upstream(
        [
            chunk({"content": "a"}),
            chunk({}, "stop") + DONE + chunk({"content": "AFTER-SAME-READ"}),
            chunk({"content": "AFTER"}),
            data({"error": {"message": "must not be seen"}}),
            chunk({}, "length"),
        ]
    )
    assert await run(upstream) == [ev.TextDelta(text="a"), ev.Finish(reason="stop")]


async def test_done_in_same_read_as_everything() -> None:
    body = chunk({"content": "a"}) + chunk({}, "stop") + DONE + chunk({"content": "late"}, "length")
    assert await run(sse_upstream([body])) == [ev.TextDelta(text="a"), ev.Finish(reason="stop")]


async def test_done_before_finish_reason_is_an_error() -> None:
    upstream = sse_upstream([chunk({"content": "a"}), DONE, chunk({}, "stop")])
    got, error = await run_until_error(upstream)
    assert got == [ev.TextDelta(text="a")]
    assert error.retryable


# --- errors --------------------------------------------------------------------------------


async def test_mid_stream_error_raises() -> None:
    upstream = sse_upstream(
        [
            chunk({"content": "partial"}),
            data({"error": {"message": "The server had an error", "type": "server_error"}}),
            chunk({}, "stop"),
            DONE,
        ]
    )
    got, error = await run_until_error(upstream)
    assert got == [ev.TextDelta(text="partial")]
    assert "The server had an error" in error.message


async def test_mid_stream_error_as_string() -> None:
    upstream = sse_upstream([data({"error": "overloaded"}), chunk({}, "stop")])
    got, error = await run_until_error(upstream)
    assert got == []
    assert "overloaded" in error.message


def error_response(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> Callable[[httpx.Request], httpx.Response]:
    def respond(_: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return httpx.Response(status, headers=headers or {}, content=content)

    return respond


async def test_http_429_with_retry_after() -> None:
    upstream = Upstream(
        error_response(
            429,
            {
                "error": {
                    "message": "Rate limit reached for gpt-upstream",
                    "type": "requests",
                    "code": "rate_limit_exceeded",
                }
            },
            {"Retry-After": "7", "content-type": "application/json"},
        )
    )
    got, error = await run_until_error(upstream)
    assert got == []
    assert error.upstream_status == 429
    assert error.retry_after == 7.0
    assert error.retryable is True
    assert "Rate limit reached for gpt-upstream" in error.message
    assert "429" in error.message


async def test_http_400_is_not_retryable() -> None:
    upstream = Upstream(
        error_response(400, {"error": {"message": "Invalid 'messages'", "type": "invalid"}})
    )
    _, error = await run_until_error(upstream)
    assert error.upstream_status == 400
    assert error.retryable is False
    assert error.retry_after is None
    assert "Invalid 'messages'" in error.message


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
async def test_http_5xx_is_retryable(status: int) -> None:
    upstream = Upstream(error_response(status, b"<html>Bad gateway</html>"))
    _, error = await run_until_error(upstream)
    assert error.upstream_status == status
    assert error.retryable is True
    assert "Bad gateway" in error.message


@pytest.mark.parametrize("status", [401, 403, 404, 422])
async def test_http_4xx_is_not_retryable(status: int) -> None:
    upstream = Upstream(error_response(status, {"error": "nope"}))
    _, error = await run_until_error(upstream)
    assert error.upstream_status == status
    assert error.retryable is False
    assert "nope" in error.message


async def test_an_error_quoting_a_models_header_does_not_repeat_it() -> None:
    """Upstreams sometimes quote what they were sent: a key the model sends in its extra
    headers (a gateway's `x-api-key`, say) is kept out of the error as the provider's own."""
    secret = "gw-secret-4242"
    upstream = Upstream(error_response(401, {"error": {"message": f"bad key {secret}"}}))
    entry = make_entry(extra_headers={"X-Api-Key": secret})
    _, error = await run_provider_until_error(OpenAIProvider, upstream, make_request(), entry)
    assert error.upstream_status == 401
    assert secret not in error.message


async def test_stream_ending_without_finish_reason_raises() -> None:
    upstream = sse_upstream([chunk({"content": "a"}), chunk({"content": "b"})])
    got, error = await run_until_error(upstream)
    assert got == [ev.TextDelta(text="a"), ev.TextDelta(text="b")]
    assert error.retryable is True


async def test_truncated_final_event_is_not_used() -> None:
    # The finish chunk lacks its blank line: it is not a complete event, so no finish.
    body = chunk({"content": "a"}) + chunk({}, "stop")[:-1]
    _, error = await run_until_error(sse_upstream([body]))
    assert "finish" in error.message


async def test_connection_error_is_retryable_upstream_error() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    _, error = await run_until_error(Upstream(respond))
    assert error.retryable is True
    assert "ConnectError" in error.message


async def test_timeout_is_retryable_upstream_error() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("too slow", request=request)

    _, error = await run_until_error(Upstream(respond))
    assert error.retryable is True
    assert error.code == "upstream_timeout"
    assert "silent" in error.message


# --- the upstream request ------------------------------------------------------------------


async def test_request_sent_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-secret-123")
    upstream = sse_upstream([chunk({}, "stop"), DONE])
    await run(
        upstream,
        make_request(max_tokens=5, temperature=0.5, stop=["\n\n"], seed=7),
        make_entry(extra_headers={"X-Org": "spool"}),
    )
    assert len(upstream.requests) == 1
    sent = upstream.requests[0]
    assert sent.method == "POST"
    assert str(sent.url) == f"{BASE_URL}/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-secret-123"
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.headers["x-org"] == "spool"
    body = orjson.loads(sent.content)
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["model"] == "gpt-upstream"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 5
    assert body["temperature"] == 0.5
    assert body["stop"] == ["\n\n"]
    assert body["seed"] == 7
    assert "top_p" not in body
    assert "user" not in body


async def test_request_headers_merge_as_the_client_merges_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client's own headers go too; a later header of the same name in any case wins,
    and is sent once: the model's extra headers over the provider's, over the client's."""
    monkeypatch.setenv(KEY_ENV, "sk-secret-123")
    upstream = sse_upstream([chunk({}, "stop"), DONE])
    await run(
        upstream,
        entry=make_entry(extra_headers={"ACCEPT": "text/event-stream; v=2", "User-Agent": "me"}),
    )
    sent = upstream.requests[0]
    assert sent.headers.get_list("accept") == ["text/event-stream; v=2"]
    assert sent.headers.get_list("user-agent") == ["me"]
    assert sent.headers["accept-encoding"] == httpx.AsyncClient().headers["accept-encoding"]
    assert sent.headers["authorization"] == "Bearer sk-secret-123"
    assert sent.headers["host"] == httpx.URL(BASE_URL).netloc.decode()
    assert int(sent.headers["content-length"]) == len(sent.content)
    assert sent.extensions["timeout"]["read"] == make_entry().idle_timeout_s


async def test_request_goes_through_the_clients_proxy_mount() -> None:
    """A client with a transport mounted for the upstream's URL (a proxy) sends there."""
    upstream = sse_upstream([chunk({}, "stop"), DONE])
    unused = sse_upstream([])
    mounted = httpx.AsyncClient(
        transport=httpx.MockTransport(unused.handler),
        mounts={BASE_URL.split("://")[0] + "://": httpx.MockTransport(upstream.handler)},
    )
    async with mounted:
        events = [e async for e in OpenAIProvider(mounted).stream(make_request(), make_entry())]
    assert len(upstream.requests) == 1 and not unused.requests
    assert isinstance(events[-1], ev.Finish)


async def test_no_authorization_without_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    upstream = sse_upstream([chunk({}, "stop"), DONE])
    await run(upstream)
    assert "authorization" not in upstream.requests[0].headers


async def test_upstream_model_defaults_to_request_model_and_base_url(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    upstream = sse_upstream([chunk({}, "stop"), DONE])
    entry = ModelEntry(provider="openai", base_url="http://other.test/v1/")
    await run(upstream, make_request(), entry)
    sent = upstream.requests[0]
    assert str(sent.url) == "http://other.test/v1/chat/completions"
    assert orjson.loads(sent.content)["model"] == "public-name"


def test_build_body_minimal() -> None:
    assert build_body(make_request(), "up") == {
        "model": "up",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [("7", 7.0), ("0.5", 0.5), ("-3", 0.0), (None, None), ("", None), ("soon", None)],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


TEXT = {"index": 0, "delta": {"content": " tok"}, "finish_reason": None}


@pytest.mark.parametrize(
    "chunk",
    [
        {"choices": [TEXT]},
        {"id": "c", "object": "chat.completion.chunk", "choices": [TEXT], "usage": None},
        {"choices": [TEXT], "error": None},
        {"choices": [{"delta": {"content": " tok"}}]},  # no index, no finish_reason
        {"choices": [{**TEXT, "delta": {"content": ""}}]},
        {"choices": [{**TEXT, "delta": {"content": None}}]},
        {"choices": [{**TEXT, "delta": {"role": "assistant", "content": ""}}]},
        {"choices": [{**TEXT, "delta": {"role": "assistant", "content": "hi"}}]},
        {"choices": [{**TEXT, "delta": {"reasoning_content": "think"}}]},
        {"choices": [{**TEXT, "delta": {"content": 7}}]},
        {"choices": [{**TEXT, "finish_reason": "stop"}]},
        {"choices": [{**TEXT, "finish_reason": "length", "delta": {}}]},
        {"choices": [{**TEXT, "index": 1}]},
        {"choices": [{**TEXT, "logprobs": {"content": [{"token": " tok", "logprob": -0.1}]}}]},
        {"choices": [TEXT], "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
        {"choices": [TEXT, {**TEXT, "index": 1}]},
        {"choices": ["not a choice"]},
        {"choices": [{**TEXT, "delta": "not a delta"}]},
        {"choices": []},
        {"choices": None},
    ],
)
def test_a_text_chunk_maps_the_same_by_the_short_way(chunk: dict[str, Any]) -> None:
    """`_ChunkMapper.map` takes a short way for plain text chunks: whatever the chunk, it
    gives what the general mapping gives, and leaves the mapper as that leaves it."""
    short, general = _ChunkMapper(), _ChunkMapper()
    try:
        expected: Any = general._map(chunk)
    except (TypeError, AttributeError, ValueError) as exc:
        with pytest.raises(type(exc)):
            short.map(chunk)
        return
    assert short.map(chunk) == expected
    assert (short.finish_reason, short.usage) == (general.finish_reason, general.usage)


def test_a_plain_text_chunk_takes_the_short_way() -> None:
    mapper = _ChunkMapper()

    def general(chunk: dict[str, Any]) -> list[ev.Event]:
        raise AssertionError("the general mapping was used")

    mapper._map = general  # type: ignore[method-assign]
    chunk = {"id": "c", "choices": [TEXT], "usage": None}
    assert mapper.map(chunk) == [ev.TextDelta(text=" tok")]
