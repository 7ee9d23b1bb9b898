"""Unit tests for worker/providers/responses.py: the exact Responses API body built from a
canonical request, and the canonical events made of a Responses stream (against an
in-process httpx.MockTransport)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from shared import events as ev
from shared.errors import UpstreamError
from shared.model_table import ModelEntry
from shared.request import (
    ContentPart,
    GenerationRequest,
    Message,
    ResponseFormat,
    Thinking,
    Tool,
    ToolCall,
)
from tests.unit.upstream_fakes import (
    ChunkStream,
    Upstream,
    make_request,
    run_provider,
    run_provider_until_error,
    sse_upstream,
)
from worker.providers.responses import ResponsesProvider, build_body

KEY_ENV = "SPOOL_UNIT_TEST_RESPONSES_KEY"
BASE_URL = "http://upstream.test/v1"
PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
PDF_B64 = base64.b64encode(b"%PDF-1.4 fake").decode()
PNG_URL = f"data:image/png;base64,{PNG_B64}"
PDF_URL = f"data:application/pdf;base64,{PDF_B64}"
NOTE = "Spool keeps every chunk.\n"
IMAGE = ContentPart(type="image", media_type="image/png", data=PNG_B64)
PDF = ContentPart(type="document", media_type="application/pdf", data=PDF_B64, name="a.pdf")


def make_entry(**kw: Any) -> ModelEntry:
    return ModelEntry.model_validate(
        {
            "provider": "responses",
            "base_url": BASE_URL,
            "model": "gpt-responses",
            "api_key_env": KEY_ENV,
            **kw,
        }
    )


def body_of(**fields: Any) -> dict[str, Any]:
    return build_body(make_request(**fields), "gpt-responses")


def user(text: str = "hi") -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


# --- the request body ----------------------------------------------------------------------


def test_minimal_body() -> None:
    assert body_of() == {
        "model": "gpt-responses",
        "input": [user()],
        "stream": True,
        "store": False,
    }


def test_system_messages_are_the_instructions() -> None:
    body = body_of(
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hi"},
            {"role": "system", "content": "Answer in French."},
        ]
    )
    assert body["instructions"] == "Be brief.\n\nAnswer in French."
    assert body["input"] == [user()]


def test_user_parts_in_responses_form() -> None:
    parts = [
        ContentPart(type="text", text="look at these"),
        ContentPart(type="image", url="https://media.test/a.png", detail="high"),
        IMAGE,
        PDF,
        ContentPart(type="document", media_type="application/pdf", data=PDF_B64),
        ContentPart(
            type="document", media_type="text/plain", data=base64.b64encode(NOTE.encode()).decode()
        ),
    ]
    body = body_of(messages=[Message(role="user", content="look at these", parts=parts)])
    assert body["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": "look at these"},
                {"type": "input_image", "image_url": "https://media.test/a.png", "detail": "high"},
                {"type": "input_image", "image_url": PNG_URL, "detail": "auto"},
                {"type": "input_file", "filename": "a.pdf", "file_data": PDF_URL},
                {"type": "input_file", "filename": "document.pdf", "file_data": PDF_URL},
                {"type": "input_text", "text": NOTE},
            ],
        }
    ]


def test_audio_is_refused_rather_than_lost() -> None:
    audio = ContentPart(type="audio", media_type="audio/wav", data=PNG_B64)
    with pytest.raises(UpstreamError) as info:
        body_of(messages=[Message(role="user", content="", parts=[audio])])
    assert "audio" in info.value.message


def test_a_conversation_with_calls_and_results() -> None:
    calls = [
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}', signature="g"),
        ToolCall(id="call_2", name="get_time", arguments="{}"),
    ]
    body = body_of(
        messages=[
            Message(role="user", content="weather and time?"),
            Message(
                role="assistant",
                content="Let me check.",
                tool_calls=calls,
                thinking=[Thinking(text="hmm", signature="another provider's")],
            ),
            Message(role="tool", content="21C, sunny", tool_call_id="call_1"),
            Message(role="tool", content="no clock", tool_call_id="call_2", is_error=True),
            Message(role="assistant", content="", tool_calls=[calls[1]]),
            Message(role="assistant", content="It is 21C."),
        ]
    )
    assert body["input"] == [
        user("weather and time?"),
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Let me check."}],
        },
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Paris"}',
        },
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "21C, sunny"},
        {"type": "function_call_output", "call_id": "call_2", "output": "Error: no clock"},
        {"type": "function_call", "call_id": "call_2", "name": "get_time", "arguments": "{}"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "It is 21C."}],
        },
    ]


def test_tool_results_with_media_are_a_list_of_parts() -> None:
    parts = [ContentPart(type="text", text="the radar map"), IMAGE, PDF]
    failed = [IMAGE, ContentPart(type="text", text="too dark")]
    body = body_of(
        messages=[
            Message(role="user", content="hi"),
            Message(role="tool", content="the radar map", parts=parts, tool_call_id="c1"),
            Message(
                role="tool", content="too dark", parts=failed, tool_call_id="c2", is_error=True
            ),
            Message(role="tool", content="", parts=[IMAGE], tool_call_id="c3", is_error=True),
        ]
    )
    image = {"type": "input_image", "image_url": PNG_URL, "detail": "auto"}
    assert body["input"][1:] == [
        {
            "type": "function_call_output",
            "call_id": "c1",
            "output": [
                {"type": "input_text", "text": "the radar map"},
                image,
                {"type": "input_file", "filename": "a.pdf", "file_data": PDF_URL},
            ],
        },
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [image, {"type": "input_text", "text": "Error: too dark"}],
        },
        {
            "type": "function_call_output",
            "call_id": "c3",
            "output": [{"type": "input_text", "text": "Error"}, image],
        },
    ]


def test_parameters_in_responses_form() -> None:
    body = body_of(
        max_tokens=64,
        temperature=0.3,
        top_p=0.9,
        metadata={"team": "spool"},
        user="u-1",
        service_tier="flex",
        logprobs=True,
        top_logprobs=3,
    )
    assert body == {
        "model": "gpt-responses",
        "input": [user()],
        "stream": True,
        "store": False,
        "max_output_tokens": 64,
        "temperature": 0.3,
        "top_p": 0.9,
        "metadata": {"team": "spool"},
        "user": "u-1",
        "service_tier": "flex",
        "include": ["message.output_text.logprobs"],
        "top_logprobs": 3,
    }


def test_logprobs_false_asks_for_nothing() -> None:
    assert "include" not in body_of(logprobs=False)


@pytest.mark.parametrize(
    ("fields", "reasoning"),
    [
        ({"reasoning_effort": "minimal"}, {"effort": "minimal"}),
        ({"reasoning": True}, {"summary": "auto"}),
        ({"reasoning": True, "reasoning_effort": "high"}, {"effort": "high", "summary": "auto"}),
        ({"reasoning": True, "reasoning_budget": 2048}, {"summary": "auto"}),
    ],
)
def test_reasoning(fields: dict[str, Any], reasoning: dict[str, Any]) -> None:
    assert body_of(**fields)["reasoning"] == reasoning


def test_no_reasoning_asked_none_sent() -> None:
    assert "reasoning" not in body_of()


def test_tools_are_flat_and_not_strict() -> None:
    tools = [
        Tool(name="get_weather", description="Weather now", parameters={"type": "object"}),
        Tool(name="get_time"),
    ]
    body = body_of(tools=tools, tool_choice="required", parallel_tool_calls=False)
    assert body["tools"] == [
        {
            "type": "function",
            "name": "get_weather",
            "description": "Weather now",
            "parameters": {"type": "object"},
            "strict": False,
        },
        {
            "type": "function",
            "name": "get_time",
            "parameters": {"type": "object", "properties": {}},
            "strict": False,
        },
    ]
    assert body["tool_choice"] == "required"
    assert body["parallel_tool_calls"] is False


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("get_time", {"type": "function", "name": "get_time"}),
    ],
)
def test_tool_choice(choice: str, expected: Any) -> None:
    assert body_of(tools=[Tool(name="get_time")], tool_choice=choice)["tool_choice"] == expected


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [
        (ResponseFormat(type="text"), {"type": "text"}),
        (ResponseFormat(type="json_object"), {"type": "json_object"}),
        (
            ResponseFormat(type="json_schema", json_schema={"type": "object"}),
            {"type": "json_schema", "name": "response", "schema": {"type": "object"}},
        ),
        (
            ResponseFormat(
                type="json_schema",
                name="weather",
                description="The weather",
                json_schema={"type": "object"},
                strict=True,
            ),
            {
                "type": "json_schema",
                "name": "weather",
                "description": "The weather",
                "schema": {"type": "object"},
                "strict": True,
            },
        ),
    ],
)
def test_response_format_is_the_text_format(fmt: ResponseFormat, expected: Any) -> None:
    assert body_of(response_format=fmt)["text"] == {"format": expected}


def test_extra_fields_go_only_to_requests_that_spoke_responses() -> None:
    extra = {"truncation": "auto", "prompt_cache_key": "k", "model": "not-this", "stream": False}
    mine = body_of(protocol="responses", extra=extra)
    assert mine["truncation"] == "auto" and mine["prompt_cache_key"] == "k"
    assert mine["model"] == "gpt-responses" and mine["stream"] is True
    for protocol in ("openai", "anthropic", "gemini", None):
        other = body_of(protocol=protocol, extra=extra)
        assert "truncation" not in other and "prompt_cache_key" not in other


# --- the stream ------------------------------------------------------------------------------


def event(kind: str, **fields: Any) -> bytes:
    payload = orjson.dumps({"type": kind, **fields, "sequence_number": 0})
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


def text(delta: str, **fields: Any) -> bytes:
    return event(
        "response.output_text.delta",
        item_id="msg_1",
        output_index=0,
        content_index=0,
        delta=delta,
        **fields,
    )


def usage(**details: Any) -> dict[str, Any]:
    return {
        "input_tokens": 11,
        "output_tokens": 7,
        "total_tokens": 18,
        "input_tokens_details": {"cached_tokens": details.get("cached", 0)},
        "output_tokens_details": {"reasoning_tokens": details.get("reasoning", 0)},
    }


def completed(**details: Any) -> bytes:
    response = {"id": "resp_1", "status": "completed", "output": [], "usage": usage(**details)}
    return event("response.completed", response=response)


def function_call(
    kind: str, output_index: int, call_id: str, name: str, arguments: str = ""
) -> bytes:
    item = {
        "type": "function_call",
        "id": f"fc_{output_index}",
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
    }
    return event(kind, output_index=output_index, item=item)


def arguments(output_index: int, delta: str) -> bytes:
    return event(
        "response.function_call_arguments.delta",
        item_id=f"fc_{output_index}",
        output_index=output_index,
        delta=delta,
    )


CREATED = event("response.created", response={"id": "resp_1", "status": "in_progress"})
USAGE = ev.Usage(input_tokens=11, output_tokens=7, cached_input_tokens=0, reasoning_tokens=0)


async def run(
    upstream: Upstream, request: GenerationRequest | None = None, entry: ModelEntry | None = None
) -> list[ev.Event]:
    return await run_provider(
        ResponsesProvider, upstream, request or make_request(), entry or make_entry()
    )


async def run_until_error(upstream: Upstream) -> tuple[list[ev.Event], UpstreamError]:
    return await run_provider_until_error(ResponsesProvider, upstream, make_request(), make_entry())


async def test_text_deltas_then_finish_with_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-secret-123")
    upstream = sse_upstream([CREATED, text("Hel"), text("lo"), completed(cached=4, reasoning=2)])
    events = await run(upstream, make_request(max_tokens=9), make_entry(extra_headers={"X": "y"}))
    assert events == [
        ev.TextDelta(text="Hel"),
        ev.TextDelta(text="lo"),
        ev.Finish(
            reason="stop",
            usage=ev.Usage(
                input_tokens=11, output_tokens=7, cached_input_tokens=4, reasoning_tokens=2
            ),
        ),
    ]
    sent = upstream.requests[0]
    assert (sent.method, str(sent.url)) == ("POST", f"{BASE_URL}/responses")
    assert sent.headers["authorization"] == "Bearer sk-secret-123"
    assert sent.headers["accept"] == "text/event-stream"
    assert sent.headers["x"] == "y"
    assert orjson.loads(sent.content) == {
        "model": "gpt-responses",
        "input": [user()],
        "stream": True,
        "store": False,
        "max_output_tokens": 9,
    }


async def test_default_base_url_and_model(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    upstream = sse_upstream([completed()])
    await run(upstream, entry=ModelEntry(provider="responses"))
    sent = upstream.requests[0]
    assert str(sent.url) == "https://api.openai.com/v1/responses"
    assert "authorization" not in sent.headers
    assert orjson.loads(sent.content)["model"] == "public-name"


async def test_logprobs_in_chat_form() -> None:
    logprobs = [
        {"token": "Hé", "logprob": -0.5, "top_logprobs": [{"token": "Hé", "logprob": -0.5}]},
        {"token": "y", "logprob": -1, "bytes": [121], "top_logprobs": []},
    ]
    upstream = sse_upstream([text("Héy", logprobs=logprobs), text("!", logprobs=[]), completed()])
    events = await run(upstream)
    assert events[:2] == [
        ev.TextDelta(
            text="Héy",
            logprobs=[
                {
                    "token": "Hé",
                    "logprob": -0.5,
                    "bytes": [72, 195, 169],
                    "top_logprobs": [{"token": "Hé", "logprob": -0.5, "bytes": [72, 195, 169]}],
                },
                {"token": "y", "logprob": -1.0, "bytes": [121], "top_logprobs": []},
            ],
        ),
        ev.TextDelta(text="!"),
    ]


async def test_logprobs_not_in_the_expected_form_are_left_out() -> None:
    upstream = sse_upstream([text("a", logprobs=[{"logprob": -1}]), completed()])
    assert (await run(upstream))[0] == ev.TextDelta(text="a")


async def test_events_split_across_reads() -> None:
    whole = b"".join([b": keep-alive\n\n", CREATED, text("héllo "), text("wörld ✓"), completed()])
    upstream = sse_upstream([whole[i : i + 1] for i in range(len(whole))])
    assert await run(upstream) == [
        ev.TextDelta(text="héllo "),
        ev.TextDelta(text="wörld ✓"),
        ev.Finish(reason="stop", usage=USAGE),
    ]


async def test_unknown_and_ignored_events_yield_nothing() -> None:
    upstream = sse_upstream(
        [
            CREATED,
            event("response.in_progress", response={}),
            event("response.output_item.added", output_index=0, item={"type": "message"}),
            event("response.content_part.added", item_id="msg_1", part={}),
            text("a"),
            event("response.output_text.annotation.added", annotation={"type": "url_citation"}),
            event("response.web_search_call.searching", item_id="ws_1"),
            event("response.some_future_event", anything=[1, 2]),
            event("response.output_text.done", text="a"),
            event("response.output_item.done", output_index=0, item={"type": "message"}),
            text(""),
            completed(),
        ]
    )
    assert await run(upstream) == [ev.TextDelta(text="a"), ev.Finish(reason="stop", usage=USAGE)]


async def test_a_refusal_is_passed_on_as_text() -> None:
    refusal = event("response.refusal.delta", item_id="msg_1", delta="I can't help with that.")
    upstream = sse_upstream([refusal, completed()])
    assert (await run(upstream))[0] == ev.TextDelta(text="I can't help with that.")


async def test_reasoning_summary_and_text_deltas() -> None:
    def summary(index: int, delta: str) -> bytes:
        kind = "response.reasoning_summary_text.delta"
        return event(kind, item_id="rs_0", output_index=0, summary_index=index, delta=delta)

    upstream = sse_upstream(
        [
            summary(0, "Weighing"),
            summary(0, " it."),
            summary(1, "Settled."),
            event("response.reasoning_text.delta", item_id="rs_1", content_index=0, delta="raw"),
            text("42"),
            completed(reasoning=5),
        ]
    )
    assert await run(upstream) == [
        ev.ReasoningDelta(text="Weighing"),
        ev.ReasoningDelta(text=" it."),
        ev.ReasoningDelta(text="\n\nSettled."),
        ev.ReasoningDelta(text="\n\nraw"),
        ev.TextDelta(text="42"),
        ev.Finish(
            reason="stop",
            usage=ev.Usage(
                input_tokens=11, output_tokens=7, cached_input_tokens=0, reasoning_tokens=5
            ),
        ),
    ]


async def test_function_calls_streamed_and_whole() -> None:
    upstream = sse_upstream(
        [
            text("Checking."),
            function_call("response.output_item.added", 1, "call_a", "get_weather"),
            arguments(1, '{"city": '),
            arguments(1, '"Paris"}'),
            event(
                "response.function_call_arguments.done",
                item_id="fc_1",
                output_index=1,
                arguments='{"city": "Paris"}',
            ),
            function_call("response.output_item.done", 1, "call_a", "get_weather", '{"city": "P'),
            function_call("response.output_item.added", 2, "call_b", "get_time"),
            function_call("response.output_item.done", 2, "call_b", "get_time", '{"zone": "CET"}'),
            function_call("response.output_item.done", 3, "call_c", "get_date", "{}"),
            completed(),
        ]
    )
    assert await run(upstream) == [
        ev.TextDelta(text="Checking."),
        ev.ToolCallDelta(index=0, id="call_a", name="get_weather"),
        ev.ToolCallDelta(index=0, arguments='{"city": '),
        ev.ToolCallDelta(index=0, arguments='"Paris"}'),
        ev.ToolCallDelta(index=1, id="call_b", name="get_time"),
        ev.ToolCallDelta(index=1, arguments='{"zone": "CET"}'),
        ev.ToolCallDelta(index=2, id="call_c", name="get_date", arguments="{}"),
        ev.Finish(reason="tool_calls", usage=USAGE),
    ]


async def test_arguments_done_passes_on_arguments_never_streamed() -> None:
    upstream = sse_upstream(
        [
            function_call("response.output_item.added", 0, "call_a", "get_time"),
            event(
                "response.function_call_arguments.done",
                item_id="fc_0",
                output_index=0,
                arguments="{}",
            ),
            function_call("response.output_item.done", 0, "call_a", "get_time", "{}"),
            completed(),
        ]
    )
    assert await run(upstream) == [
        ev.ToolCallDelta(index=0, id="call_a", name="get_time"),
        ev.ToolCallDelta(index=0, arguments="{}"),
        ev.Finish(reason="tool_calls", usage=USAGE),
    ]


async def test_arguments_of_an_unannounced_call_are_skipped() -> None:
    upstream = sse_upstream([arguments(5, '{"x": 1}'), text("ok"), completed()])
    assert await run(upstream) == [ev.TextDelta(text="ok"), ev.Finish(reason="stop", usage=USAGE)]


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("max_output_tokens", "length"),
        ("content_filter", "content_filter"),
        ("something_new", "length"),
        (None, "length"),
    ],
)
async def test_incomplete(reason: str | None, finish: ev.FinishReason) -> None:
    response = {"status": "incomplete", "incomplete_details": {"reason": reason}, "usage": usage()}
    upstream = sse_upstream([text("cut"), event("response.incomplete", response=response)])
    assert await run(upstream) == [
        ev.TextDelta(text="cut"),
        ev.Finish(reason=finish, usage=USAGE),
    ]


async def test_nothing_after_the_terminal_event_is_used() -> None:
    upstream = sse_upstream([text("a"), completed(), text("late"), completed()])
    assert await run(upstream) == [ev.TextDelta(text="a"), ev.Finish(reason="stop", usage=USAGE)]


async def test_a_failed_response_raises_with_its_message() -> None:
    error = {"code": "server_error", "message": "The model is overloaded."}
    failed = event("response.failed", response={"status": "failed", "error": error})
    got, raised = await run_until_error(sse_upstream([text("partial"), failed]))
    assert got == [ev.TextDelta(text="partial")]
    assert raised.code == "upstream_error"
    assert raised.message == "upstream error mid-stream: server_error: The model is overloaded."
    assert raised.retryable


async def test_a_failed_response_without_an_error() -> None:
    failed = event("response.failed", response={"status": "failed", "error": None})
    _, raised = await run_until_error(sse_upstream([failed]))
    assert raised.code == "upstream_error"
    assert raised.message == "upstream error mid-stream: upstream returned an error"
    assert not raised.retryable


@pytest.mark.parametrize(
    "error",
    [
        event("error", code="invalid_prompt", message="Your prompt was flagged.", param=None),
        event("error", error={"code": "invalid_prompt", "message": "Your prompt was flagged."}),
    ],
)
async def test_an_error_event_raises_with_its_message(error: bytes) -> None:
    got, raised = await run_until_error(sse_upstream([text("partial"), error, completed()]))
    assert got == [ev.TextDelta(text="partial")]
    assert raised.code == "upstream_error"
    assert raised.message == "upstream error mid-stream: invalid_prompt: Your prompt was flagged."
    assert not raised.retryable


async def test_the_key_is_never_in_an_error_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "sk-secret-echoed-123")
    error = event("error", message="bad key sk-secret-echoed-123")
    _, raised = await run_until_error(sse_upstream([error]))
    assert "sk-secret-echoed-123" not in raised.message and "[redacted]" in raised.message


async def test_a_stream_without_a_terminal_event_is_incomplete() -> None:
    got, raised = await run_until_error(sse_upstream([CREATED, text("cut")]))
    assert got == [ev.TextDelta(text="cut")]
    assert raised.code == "upstream_incomplete"
    assert raised.retryable


async def test_a_truncated_terminal_event_is_not_used() -> None:
    got, raised = await run_until_error(sse_upstream([text("a"), completed()[:-20]]))
    assert got == [ev.TextDelta(text="a")]
    assert raised.code == "upstream_incomplete"


async def test_an_error_status_is_an_upstream_error() -> None:
    upstream = Upstream(
        lambda _: httpx.Response(
            429, headers={"retry-after": "3"}, json={"error": {"message": "slow down"}}
        )
    )
    _, raised = await run_until_error(upstream)
    assert (raised.code, raised.upstream_status, raised.retry_after) == ("upstream_error", 429, 3)
    assert "slow down" in raised.message and raised.retryable


async def test_documents_by_url_are_fetched_and_images_keep_their_url() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            if str(request.url) != "https://media.test/a.pdf":
                return httpx.Response(404)
            return httpx.Response(
                200, headers={"content-type": "application/pdf"}, content=b"%PDF-1.4 fake"
            )
        stream = ChunkStream([text("ok"), completed()])
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, stream=stream)

    parts = [
        ContentPart(type="image", url="https://media.test/a.png"),
        ContentPart(type="document", url="https://media.test/a.pdf", name="a.pdf"),
    ]
    upstream = Upstream(respond)
    request = make_request(messages=[Message(role="user", content="", parts=parts)])
    assert await run(upstream, request) == [
        ev.TextDelta(text="ok"),
        ev.Finish(reason="stop", usage=USAGE),
    ]
    assert [(r.method, str(r.url)) for r in upstream.requests] == [
        ("GET", "https://media.test/a.pdf"),
        ("POST", f"{BASE_URL}/responses"),
    ]
    assert orjson.loads(upstream.requests[1].content)["input"][0]["content"] == [
        {"type": "input_image", "image_url": "https://media.test/a.png", "detail": "auto"},
        {"type": "input_file", "filename": "a.pdf", "file_data": PDF_URL},
    ]
