"""Unit tests for worker/providers/gemini.py against an in-process httpx.MockTransport, and
against tests/mock_gemini.py through httpx.ASGITransport."""

from __future__ import annotations

import functools
from typing import Any

import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.routing import Route

from shared import events as ev
from shared.errors import UpstreamError
from shared.model_table import ModelEntry
from shared.request import GenerationRequest
from tests import mock_gemini
from tests.mock_gemini import handle_generate
from tests.mock_upstream import MockUpstream
from tests.unit.upstream_fakes import (
    ChunkStream,
    Upstream,
    make_request,
    run_provider,
    run_provider_until_error,
    sse_upstream,
)
from worker.providers.gemini import DEFAULT_BASE_URL, GeminiProvider, build_body

KEY_ENV = "SPOOL_UNIT_TEST_GEMINI_KEY"
BASE_URL = "http://upstream.test/v1beta"
STREAM_URL = f"{BASE_URL}/models/gemini-upstream:streamGenerateContent"


def data(obj: Any) -> bytes:
    """One event framed as Gemini frames it: CRLF line ends."""
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


def resp(
    *parts: dict[str, Any],
    finish: str | None = None,
    usage: dict[str, int] | None = None,
    index: int = 0,
    **extra: Any,
) -> bytes:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": list(parts)}, "index": index}
    if finish is not None:
        candidate["finishReason"] = finish
    body: dict[str, Any] = {
        "candidates": [candidate],
        "modelVersion": "gemini-upstream-001",
        "responseId": "resp-1",
        **extra,
    }
    if usage is not None:
        body["usageMetadata"] = usage
    return data(body)


def text(value: str) -> dict[str, Any]:
    return {"text": value}


def thought(value: str) -> dict[str, Any]:
    return {"text": value, "thought": True}


def call(name: str, args: Any = None, id: str | None = None) -> dict[str, Any]:
    function: dict[str, Any] = {"name": name}
    if args is not None:
        function["args"] = args
    if id is not None:
        function["id"] = id
    return {"functionCall": function}


def usage(prompt: int, candidates: int, thoughts: int | None = None) -> dict[str, int]:
    out = {"promptTokenCount": prompt, "candidatesTokenCount": candidates}
    if thoughts is not None:
        out["thoughtsTokenCount"] = thoughts
    out["totalTokenCount"] = prompt + candidates + (thoughts or 0)
    return out


def make_entry(**kw: Any) -> ModelEntry:
    return ModelEntry.model_validate(
        {
            "provider": "gemini",
            "base_url": BASE_URL,
            "model": "gemini-upstream",
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
        GeminiProvider, upstream, request or make_request(), entry or make_entry()
    )


async def run_until_error(upstream: Upstream) -> tuple[list[ev.Event], UpstreamError]:
    return await run_provider_until_error(GeminiProvider, upstream, make_request(), make_entry())


# --- content mapping -----------------------------------------------------------------------


async def test_text_parts_in_order_with_usage() -> None:
    upstream = sse_upstream(
        [
            resp(text("Hel"), usage={"promptTokenCount": 3, "totalTokenCount": 3}),
            resp(text("lo, "), text("world")),
            resp(text("!"), finish="STOP", usage=usage(3, 4)),
        ]
    )
    assert await run(upstream) == [
        ev.TextDelta(text="Hel"),
        ev.TextDelta(text="lo, "),
        ev.TextDelta(text="world"),
        ev.TextDelta(text="!"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=3, output_tokens=4)),
    ]


async def test_no_start_event_and_exactly_one_finish() -> None:
    events = await run(sse_upstream([resp(text("a")), resp(text("b"), finish="STOP")]))
    assert not any(isinstance(e, ev.Start) for e in events)
    assert sum(isinstance(e, ev.Finish) for e in events) == 1
    assert isinstance(events[-1], ev.Finish)


async def test_empty_and_partless_responses_yield_nothing() -> None:
    upstream = sse_upstream(
        [
            resp(text("")),
            resp(),
            data({"candidates": [{"index": 0}]}),
            data({"usageMetadata": {"promptTokenCount": 1}}),
            resp(text("x")),
            resp(finish="STOP"),
        ]
    )
    assert await run(upstream) == [
        ev.TextDelta(text="x"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=1)),
    ]


async def test_thought_parts_map_to_reasoning_delta() -> None:
    upstream = sse_upstream(
        [
            resp(thought("Let me "), usage={"promptTokenCount": 5}),
            resp(thought("think."), text("Ans")),
            resp(text("wer"), finish="STOP", usage=usage(5, 2, thoughts=11)),
        ]
    )
    assert await run(upstream) == [
        ev.ReasoningDelta(text="Let me "),
        ev.ReasoningDelta(text="think."),
        ev.TextDelta(text="Ans"),
        ev.TextDelta(text="wer"),
        ev.Finish(
            reason="stop", usage=ev.Usage(input_tokens=5, output_tokens=13, reasoning_tokens=11)
        ),
    ]


async def test_thought_false_is_plain_text() -> None:
    upstream = sse_upstream([resp({"text": "plain", "thought": False}, finish="STOP")])
    assert await run(upstream) == [ev.TextDelta(text="plain"), ev.Finish(reason="stop")]


async def test_function_calls_are_whole_tool_call_deltas() -> None:
    upstream = sse_upstream(
        [
            resp(text("Checking.")),
            resp(call("get_weather", {"city": "Paris", "days": [1, 2]}), call("get_time", {})),
            resp(call("lookup", {"q": "日本語"}, id="abc-123")),
            resp(finish="STOP", usage=usage(10, 20)),
        ]
    )
    events = await run(upstream)
    assert events == [
        ev.TextDelta(text="Checking."),
        ev.ToolCallDelta(
            index=0,
            id="call_0",
            name="get_weather",
            arguments=orjson.dumps({"city": "Paris", "days": [1, 2]}).decode(),
        ),
        ev.ToolCallDelta(index=1, id="call_1", name="get_time", arguments="{}"),
        ev.ToolCallDelta(
            index=2, id="abc-123", name="lookup", arguments=orjson.dumps({"q": "日本語"}).decode()
        ),
        ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=10, output_tokens=20)),
    ]
    for event in events:
        if isinstance(event, ev.ToolCallDelta):
            assert isinstance(orjson.loads(event.arguments), dict)


async def test_function_call_without_args_has_empty_object_arguments() -> None:
    upstream = sse_upstream(
        [resp(call("ping"), call("odd", ["not", "an", "object"]), finish="STOP")]
    )
    assert await run(upstream) == [
        ev.ToolCallDelta(index=0, id="call_0", name="ping", arguments="{}"),
        ev.ToolCallDelta(index=1, id="call_1", name="odd", arguments="{}"),
        ev.Finish(reason="tool_calls"),
    ]


async def test_function_call_in_the_finishing_response() -> None:
    upstream = sse_upstream([resp(call("f", {"a": 1}), finish="STOP")])
    assert await run(upstream) == [
        ev.ToolCallDelta(index=0, id="call_0", name="f", arguments='{"a":1}'),
        ev.Finish(reason="tool_calls"),
    ]


async def test_candidates_other_than_index_zero_are_ignored() -> None:
    upstream = sse_upstream(
        [
            resp(text("mine")),
            resp(text("other"), index=1),
            resp(call("other_call"), finish="MAX_TOKENS", index=1),
            resp(finish="STOP"),
        ]
    )
    assert await run(upstream) == [ev.TextDelta(text="mine"), ev.Finish(reason="stop")]


@pytest.mark.parametrize(
    ("upstream_reason", "expected"),
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("IMAGE_SAFETY", "content_filter"),
        ("LANGUAGE", "stop"),
        ("OTHER", "stop"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("FINISH_REASON_UNSPECIFIED", "stop"),
        ("SOMETHING_NEW", "stop"),
    ],
)
async def test_finish_reason_mapping(upstream_reason: str, expected: str) -> None:
    upstream = sse_upstream([resp(text("x")), resp(finish=upstream_reason)])
    events = await run(upstream)
    assert events[-1] == ev.Finish.model_validate({"reason": expected})


@pytest.mark.parametrize(
    ("upstream_reason", "expected"),
    [("STOP", "tool_calls"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter")],
)
async def test_finish_reason_after_function_call(upstream_reason: str, expected: str) -> None:
    upstream = sse_upstream([resp(call("f", {})), resp(finish=upstream_reason)])
    last = (await run(upstream))[-1]
    assert last == ev.Finish.model_validate({"reason": expected})


async def test_latest_usage_metadata_wins() -> None:
    upstream = sse_upstream(
        [
            resp(text("a"), usage={"promptTokenCount": 7, "totalTokenCount": 7}),
            resp(text("b"), usage=usage(7, 1)),
            resp(text("c"), finish="STOP", usage=usage(7, 3, thoughts=4)),
        ]
    )
    last = (await run(upstream))[-1]
    assert last == ev.Finish(
        reason="stop", usage=ev.Usage(input_tokens=7, output_tokens=7, reasoning_tokens=4)
    )


async def test_no_usage_metadata_means_no_usage() -> None:
    last = (await run(sse_upstream([resp(text("a"), finish="STOP")])))[-1]
    assert isinstance(last, ev.Finish)
    assert last.usage is None


async def test_blocked_prompt_finishes_with_content_filter() -> None:
    upstream = sse_upstream(
        [
            data(
                {
                    "promptFeedback": {"blockReason": "SAFETY"},
                    "usageMetadata": {"promptTokenCount": 4, "totalTokenCount": 4},
                }
            )
        ]
    )
    assert await run(upstream) == [
        ev.Finish(reason="content_filter", usage=ev.Usage(input_tokens=4))
    ]


# --- framing -------------------------------------------------------------------------------

MULTIBYTE = "héllo wörld 日本語 ✓ 🎉"


def framing_body() -> bytes:
    return b"".join(
        [
            resp(thought("hmm… ✓"), usage={"promptTokenCount": 2}),
            resp(text(MULTIBYTE)),
            resp(call("get_weather", {"city": "Zürich"})),
            resp(text(" and more 🎉"), finish="STOP", usage=usage(2, 3, thoughts=1)),
        ]
    )


FRAMING_EXPECTED: list[ev.Event] = [
    ev.ReasoningDelta(text="hmm… ✓"),
    ev.TextDelta(text=MULTIBYTE),
    ev.ToolCallDelta(
        index=0,
        id="call_0",
        name="get_weather",
        arguments=orjson.dumps({"city": "Zürich"}).decode(),
    ),
    ev.TextDelta(text=" and more 🎉"),
    ev.Finish(
        reason="tool_calls", usage=ev.Usage(input_tokens=2, output_tokens=4, reasoning_tokens=1)
    ),
]


async def test_unsplit_body() -> None:
    assert await run(sse_upstream([framing_body()])) == FRAMING_EXPECTED


async def test_events_split_across_reads_at_every_offset() -> None:
    body = framing_body()
    reads: list[bytes] = []
    upstream = Upstream(lambda _: httpx.Response(200, stream=ChunkStream(reads)))
    async with upstream.client() as client:
        provider = GeminiProvider(client)
        for offset in range(1, len(body)):
            reads[:] = [body[:offset], body[offset:]]
            events = [e async for e in provider.stream(make_request(), make_entry())]
            assert events == FRAMING_EXPECTED, f"split at byte {offset}"
    assert len(upstream.requests) == len(body) - 1


async def test_events_one_byte_per_read() -> None:
    body = framing_body()
    events = await run(sse_upstream([body[i : i + 1] for i in range(len(body))]))
    assert events == FRAMING_EXPECTED


async def test_multibyte_characters_split_across_reads() -> None:
    body = framing_body()
    for char in ("é", "日", "✓", "🎉"):
        encoded = char.encode()
        at = body.index(encoded)
        for cut in range(at + 1, at + len(encoded)):
            events = await run(sse_upstream([body[:cut], body[cut:]]))
            assert events == FRAMING_EXPECTED
            for event in events:
                if isinstance(event, ev.TextDelta | ev.ReasoningDelta | ev.ToolCallDelta):
                    value = event.arguments if isinstance(event, ev.ToolCallDelta) else event.text
                    assert "\ufffd" not in value


async def test_lf_line_ends_work_too() -> None:
    body = framing_body().replace(b"\r\n", b"\n")
    assert await run(sse_upstream([body])) == FRAMING_EXPECTED


async def test_non_json_data_event_is_skipped() -> None:
    upstream = sse_upstream(
        [
            resp(text("before")),
            b"data: this is not json\r\n\r\n",
            b"data: [1, 2, 3]\r\n\r\n",
            b": a comment\r\n\r\n",
            resp(text("after"), finish="STOP"),
        ]
    )
    assert await run(upstream) == [
        ev.TextDelta(text="before"),
        ev.TextDelta(text="after"),
        ev.Finish(reason="stop"),
    ]


async def test_truncated_final_event_is_not_used() -> None:
    body = resp(text("a")) + resp(finish="STOP")[:-2]
    _, error = await run_until_error(sse_upstream([body]))
    assert error.code == "upstream_incomplete"


# --- errors --------------------------------------------------------------------------------


async def test_mid_stream_error_raises() -> None:
    upstream = sse_upstream(
        [
            resp(text("partial")),
            data(
                {
                    "error": {
                        "code": 503,
                        "message": "The model is overloaded.",
                        "status": "UNAVAILABLE",
                    }
                }
            ),
            resp(text("never"), finish="STOP"),
        ]
    )
    got, error = await run_until_error(upstream)
    assert got == [ev.TextDelta(text="partial")]
    assert error.code == "upstream_error"
    assert error.upstream_status == 503
    assert error.retryable is True
    assert "The model is overloaded." in error.message


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(429, True), (500, True), (503, True), (504, True), (400, False), (403, False)],
)
async def test_mid_stream_error_retryability(status: int, retryable: bool) -> None:
    upstream = sse_upstream([data({"error": {"code": status, "message": "boom", "status": "X"}})])
    got, error = await run_until_error(upstream)
    assert got == []
    assert error.upstream_status == status
    assert error.retryable is retryable
    assert error.code == "upstream_error"


async def test_mid_stream_error_odd_shapes() -> None:
    _, error = await run_until_error(sse_upstream([data({"error": "overloaded"})]))
    assert "overloaded" in error.message
    assert error.upstream_status is None
    assert error.retryable is False
    _, error = await run_until_error(
        sse_upstream([data({"error": {"code": "nope", "status": "INTERNAL"}})])
    )
    assert "INTERNAL" in error.message
    assert error.upstream_status is None


def error_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Upstream:
    def respond(_: httpx.Request) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return httpx.Response(
            status, headers={"content-type": "application/json", **(headers or {})}, content=content
        )

    return Upstream(respond)


async def test_http_429() -> None:
    upstream = error_response(
        429,
        {
            "error": {
                "code": 429,
                "message": "Resource has been exhausted (e.g. check quota).",
                "status": "RESOURCE_EXHAUSTED",
            }
        },
        {"Retry-After": "3"},
    )
    got, error = await run_until_error(upstream)
    assert got == []
    assert error.upstream_status == 429
    assert error.retryable is True
    assert error.retry_after == 3.0
    assert error.code == "upstream_error"
    assert "Resource has been exhausted" in error.message


@pytest.mark.parametrize(("status", "retryable"), [(400, False), (404, False), (500, True)])
async def test_http_error_statuses(status: int, retryable: bool) -> None:
    upstream = error_response(
        status, {"error": {"code": status, "message": "API key not valid", "status": "X"}}
    )
    _, error = await run_until_error(upstream)
    assert error.upstream_status == status
    assert error.retryable is retryable
    assert "API key not valid" in error.message


async def test_stream_without_finish_reason_is_incomplete() -> None:
    upstream = sse_upstream([resp(text("a")), resp(text("b"), usage=usage(1, 2))])
    got, error = await run_until_error(upstream)
    assert got == [ev.TextDelta(text="a"), ev.TextDelta(text="b")]
    assert error.code == "upstream_incomplete"
    assert error.retryable is True


async def test_empty_stream_is_incomplete() -> None:
    _, error = await run_until_error(sse_upstream([]))
    assert error.code == "upstream_incomplete"


# --- the upstream request ------------------------------------------------------------------


async def test_request_sent_upstream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "AIza-secret-123")
    upstream = sse_upstream([resp(finish="STOP")])
    request = make_request(max_tokens=5, temperature=0.5)
    await run(upstream, request, make_entry(extra_headers={"X-Org": "spool"}))
    assert len(upstream.requests) == 1
    sent = upstream.requests[0]
    assert sent.method == "POST"
    assert sent.url.copy_with(query=None) == httpx.URL(STREAM_URL)
    assert sent.url.params["alt"] == "sse"
    assert dict(sent.url.params) == {"alt": "sse"}  # the key is not in the URL
    assert sent.headers["x-goog-api-key"] == "AIza-secret-123"
    assert "authorization" not in sent.headers
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.headers["x-org"] == "spool"
    assert orjson.loads(sent.content) == build_body(request)


async def test_no_key_header_without_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    upstream = sse_upstream([resp(finish="STOP")])
    await run(upstream)
    assert "x-goog-api-key" not in upstream.requests[0].headers


async def test_default_base_url_and_model_fallback() -> None:
    upstream = sse_upstream([resp(finish="STOP")])
    entry = ModelEntry.model_validate({"provider": "gemini"})
    await run(upstream, make_request(model="gemini-2.5-flash"), entry)
    url = upstream.requests[0].url
    assert DEFAULT_BASE_URL == "https://generativelanguage.googleapis.com/v1beta"
    assert str(url) == f"{DEFAULT_BASE_URL}/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


async def test_models_prefix_and_trailing_slash_are_tolerated() -> None:
    upstream = sse_upstream([resp(finish="STOP")])
    await run(upstream, entry=make_entry(base_url=BASE_URL + "/", model="models/gemini-upstream"))
    assert upstream.requests[0].url.copy_with(query=None) == httpx.URL(STREAM_URL)


# --- build_body ----------------------------------------------------------------------------


def body_for(**kw: Any) -> dict[str, Any]:
    return build_body(GenerationRequest.model_validate({"model": "m", **kw}))


def test_minimal_body() -> None:
    assert body_for(messages=[{"role": "user", "content": "hi"}]) == {
        "contents": [{"role": "user", "parts": [{"text": "hi"}]}]
    }


def test_system_messages_become_system_instruction() -> None:
    body = body_for(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Answer in French."},
        ]
    )
    assert body["systemInstruction"] == {"parts": [{"text": "Be brief.\n\nAnswer in French."}]}
    assert body["contents"] == [{"role": "user", "parts": [{"text": "hi"}]}]


def test_roles_and_merging_of_consecutive_turns() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "one"},
            {"role": "user", "content": "two"},
            {"role": "assistant", "content": "three"},
            {"role": "assistant", "content": "four"},
            {"role": "user", "content": "five"},
        ]
    )
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "one"}, {"text": "two"}]},
        {"role": "model", "parts": [{"text": "three"}, {"text": "four"}]},
        {"role": "user", "parts": [{"text": "five"}]},
    ]


def test_tool_calls_and_results() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "Weather and time in Paris?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "tool_calls": [
                    {"id": "call_a", "name": "get_weather", "arguments": '{"city": "Paris"}'},
                    {"id": "call_b", "name": "get_time", "arguments": "not json"},
                    {"id": "call_c", "name": "get_list", "arguments": "[1, 2]"},
                ],
            },
            # Name from the message itself, then looked up by tool_call_id.
            {
                "role": "tool",
                "tool_call_id": "call_a",
                "name": "get_weather",
                "content": '{"temp": 21}',
            },
            {"role": "tool", "tool_call_id": "call_b", "content": "12:00"},
            {"role": "tool", "tool_call_id": "call_c", "content": "[1, 2]"},
            {"role": "user", "content": "Thanks"},
        ]
    )
    assert body["contents"] == [
        {"role": "user", "parts": [{"text": "Weather and time in Paris?"}]},
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}},
                {"functionCall": {"name": "get_time", "args": {}}},
                {"functionCall": {"name": "get_list", "args": {}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
                {"functionResponse": {"name": "get_time", "response": {"result": "12:00"}}},
                {"functionResponse": {"name": "get_list", "response": {"result": "[1, 2]"}}},
                {"text": "Thanks"},
            ],
        },
    ]


def test_assistant_with_only_tool_calls_has_no_text_part() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": "",
                "tool_calls": [{"id": "x", "name": "f", "arguments": "{}"}],
            },
            {"role": "tool", "tool_call_id": "x", "content": ""},
        ]
    )
    assert body["contents"][1] == {
        "role": "model",
        "parts": [{"functionCall": {"name": "f", "args": {}}}],
    }
    assert body["contents"][2] == {
        "role": "user",
        "parts": [{"functionResponse": {"name": "f", "response": {"result": ""}}}],
    }


def test_tool_name_lookup_uses_the_matching_call() -> None:
    body = body_for(
        messages=[
            {"role": "user", "content": "q"},
            {"role": "assistant", "tool_calls": [{"id": "1", "name": "first"}]},
            {"role": "tool", "tool_call_id": "1", "content": "{}"},
            {"role": "assistant", "tool_calls": [{"id": "2", "name": "second"}]},
            {"role": "tool", "tool_call_id": "2", "content": "{}"},
        ]
    )
    names = [
        part["functionResponse"]["name"]
        for content in body["contents"]
        for part in content["parts"]
        if "functionResponse" in part
    ]
    assert names == ["first", "second"]


def test_tools_become_function_declarations() -> None:
    params = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    body = body_for(
        messages=[{"role": "user", "content": "hi"}],
        tools=[
            {"name": "get_weather", "description": "Weather for a city", "parameters": params},
            {"name": "get_time"},
        ],
    )
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather for a city",
                    "parametersJsonSchema": params,
                },
                {"name": "get_time", "parametersJsonSchema": {"type": "object", "properties": {}}},
            ]
        }
    ]
    assert "toolConfig" not in body


@pytest.mark.parametrize(
    ("choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("required", {"mode": "ANY"}),
        ("none", {"mode": "NONE"}),
        ("get_weather", {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}),
    ],
)
def test_tool_choice_becomes_tool_config(choice: str, config: dict[str, Any]) -> None:
    body = body_for(
        messages=[{"role": "user", "content": "hi"}],
        tools=[{"name": "get_weather"}],
        tool_choice=choice,
    )
    assert body["toolConfig"] == {"functionCallingConfig": config}


def test_tool_choice_without_tools_is_not_sent() -> None:
    body = body_for(messages=[{"role": "user", "content": "hi"}], tool_choice="required")
    assert "toolConfig" not in body
    assert "tools" not in body


def test_generation_config() -> None:
    body = body_for(
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=100,
        temperature=0.7,
        top_p=0.9,
        stop=["END", "\n\n"],
        seed=42,
    )
    assert body["generationConfig"] == {
        "maxOutputTokens": 100,
        "temperature": 0.7,
        "topP": 0.9,
        "stopSequences": ["END", "\n\n"],
        "seed": 42,
    }


def test_zero_temperature_is_sent() -> None:
    body = body_for(messages=[{"role": "user", "content": "hi"}], temperature=0)
    assert body["generationConfig"] == {"temperature": 0}


def test_no_generation_config_when_nothing_is_set() -> None:
    assert "generationConfig" not in body_for(messages=[{"role": "user", "content": "hi"}])


def test_reasoning_becomes_thinking_config() -> None:
    body = body_for(messages=[{"role": "user", "content": "hi"}], reasoning=True)
    assert body["generationConfig"] == {"thinkingConfig": {"includeThoughts": True}}
    body = body_for(
        messages=[{"role": "user", "content": "hi"}],
        reasoning=True,
        reasoning_budget=2048,
        max_tokens=4096,
    )
    assert body["generationConfig"] == {
        "maxOutputTokens": 4096,
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 2048},
    }


def test_no_thinking_config_without_reasoning() -> None:
    body = body_for(messages=[{"role": "user", "content": "hi"}], reasoning_budget=2048)
    assert "generationConfig" not in body


# --- the mock Gemini upstream agrees with the adapter ---------------------------------------

MOCK_BASE = "http://mock-gemini.test/v1beta"


def mock_client(upstream: MockUpstream) -> httpx.AsyncClient:
    # A partial of the async handler, so Starlette awaits it (a lambda would be run in a
    # thread pool and hand back an un-awaited coroutine).
    app = Starlette(
        routes=[
            Route(
                "/v1beta/models/{target}",
                functools.partial(handle_generate, upstream),
                methods=["POST"],
            )
        ]
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app))


def mock_entry(model: str) -> ModelEntry:
    return ModelEntry.model_validate(
        {"provider": "gemini", "base_url": MOCK_BASE, "model": model, "api_key_env": KEY_ENV}
    )


async def run_mock(model: str, request: GenerationRequest | None = None) -> list[ev.Event]:
    async with mock_client(MockUpstream()) as client:
        provider = GeminiProvider(client)
        return [e async for e in provider.stream(request or make_request(), mock_entry(model))]


async def mock_error(model: str) -> tuple[list[ev.Event], UpstreamError]:
    got: list[ev.Event] = []
    async with mock_client(MockUpstream()) as client:
        provider = GeminiProvider(client)
        with pytest.raises(UpstreamError) as info:
            async for e in provider.stream(make_request(), mock_entry(model)):
                got.append(e)
    return got, info.value


TEXT_EVENTS: list[ev.Event] = [
    *(ev.TextDelta(text=p) for p in mock_gemini.TEXT_PIECES),
    ev.Finish(reason="stop", usage=ev.Usage(input_tokens=9, output_tokens=6)),
]


async def test_mock_text() -> None:
    events = await run_mock("gemini-text")
    assert events == TEXT_EVENTS
    assert "".join(e.text for e in events if isinstance(e, ev.TextDelta)) == "héllo wörld 日本語 ✓"


async def test_mock_split_gives_the_same_events() -> None:
    events = await run_mock("gemini-split")
    assert events == TEXT_EVENTS
    assert all("\ufffd" not in e.text for e in events if isinstance(e, ev.TextDelta))


async def test_mock_split_framing() -> None:
    upstream = MockUpstream()
    async with (
        mock_client(upstream) as client,
        client.stream(
            "POST",
            f"{MOCK_BASE}/models/gemini-split:streamGenerateContent",
            params={"alt": "sse"},
            json={"contents": []},
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = await response.aread()
    assert raw.startswith(b"data: {")
    assert raw.endswith(b"\r\n\r\n")
    assert raw.count(b"\r\n\r\n") == len(mock_gemini.TEXT_PIECES)
    assert b"[DONE]" not in raw
    # The script itself writes 1-3 bytes at a time (ASGITransport joins them up again).
    frames = [mock_gemini.sse({"n": "日本語 ✓"}), mock_gemini.sse({"n": 2})]
    writes = [w async for w in mock_gemini._split(frames)]
    assert b"".join(writes) == b"".join(frames)
    assert {len(w) for w in writes} == {1, 2, 3}


async def test_mock_tools() -> None:
    assert await run_mock("gemini-tools") == [
        ev.TextDelta(text="Let me check."),
        ev.ToolCallDelta(index=0, id="call_0", name="get_weather", arguments='{"city":"Paris"}'),
        ev.ToolCallDelta(index=1, id="call_1", name="get_time", arguments='{"tz":"CET"}'),
        ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=20, output_tokens=12)),
    ]


async def test_mock_thinking() -> None:
    assert await run_mock("gemini-thinking", make_request(reasoning=True)) == [
        ev.ReasoningDelta(text=mock_gemini.THOUGHT),
        ev.TextDelta(text=mock_gemini.THINKING_ANSWER),
        ev.Finish(
            reason="stop", usage=ev.Usage(input_tokens=5, output_tokens=13, reasoning_tokens=11)
        ),
    ]


async def test_mock_max_tokens() -> None:
    events = await run_mock("gemini-max-tokens")
    assert events[:-1] == [ev.TextDelta(text="cut "), ev.TextDelta(text="short")]
    last = events[-1]
    assert isinstance(last, ev.Finish)
    assert last.reason == "length"


async def test_mock_error_midstream() -> None:
    got, error = await mock_error("gemini-error-midstream")
    assert got == [ev.TextDelta(text="partial")]
    assert error.upstream_status == 503
    assert error.retryable is True
    assert "The model is overloaded." in error.message


async def test_mock_429() -> None:
    got, error = await mock_error("gemini-429")
    assert got == []
    assert error.upstream_status == 429
    assert error.retryable is True
    assert "Resource has been exhausted" in error.message


async def test_mock_unknown_model_is_404() -> None:
    _, error = await mock_error("gemini-nonexistent")
    assert error.upstream_status == 404
    assert error.retryable is False
    assert "not found" in error.message


async def test_mock_records_what_it_saw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "AIza-mock-key")
    upstream = MockUpstream()
    request = make_request(
        messages=[{"role": "system", "content": "sys"}, {"role": "user", "content": "hello"}],
        max_tokens=8,
    )
    async with mock_client(upstream) as client:
        events = [
            e async for e in GeminiProvider(client).stream(request, mock_entry("gemini-text"))
        ]
    assert events == TEXT_EVENTS
    assert len(upstream.seen) == 1
    seen = upstream.seen[0]
    assert seen.model == "gemini-text"
    assert seen.body == build_body(request)
    assert seen.headers["x-goog-api-key"] == "AIza-mock-key"


async def test_mock_generate_content_returns_one_combined_response() -> None:
    upstream = MockUpstream()
    async with mock_client(upstream) as client:
        response = await client.post(
            f"{MOCK_BASE}/models/gemini-text:generateContent", json={"contents": []}
        )
    assert response.status_code == 200
    body = response.json()
    candidate = body["candidates"][0]
    assert candidate["content"] == {"role": "model", "parts": [{"text": "héllo wörld 日本語 ✓"}]}
    assert candidate["finishReason"] == "STOP"
    assert body["usageMetadata"] == mock_gemini.TEXT_USAGE
    assert upstream.seen[0].model == "gemini-text"


async def test_mock_stream_without_alt_sse_is_a_json_array() -> None:
    async with mock_client(MockUpstream()) as client:
        response = await client.post(
            f"{MOCK_BASE}/models/gemini-text:streamGenerateContent", json={"contents": []}
        )
    items = response.json()
    assert isinstance(items, list)
    assert items[-1]["candidates"][0]["finishReason"] == "STOP"
