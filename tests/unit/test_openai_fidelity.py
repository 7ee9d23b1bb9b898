"""Request fidelity on the OpenAI side: what the Chat Completions and Completions surfaces
make of content parts and parameters, the exact body the OpenAI provider sends, the usage
details, logprobs and signatures it reads from the stream, and how the OpenAI formats
render them back."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest
from pydantic import ValidationError

from api.formats.openai_chat import OpenAIChatFormat
from api.formats.openai_completions import OpenAICompletionsFormat
from api.routes import openai_chat as chat_route
from api.routes import openai_completions as completions_route
from shared import events as ev
from shared.errors import InvalidRequest, UpstreamError
from shared.request import (
    ContentPart,
    GenerationRequest,
    Message,
    ResponseFormat,
    Thinking,
    ToolCall,
)
from shared.store import JobRecord
from shared.transcript import Transcript
from tests.unit.records import completed_record
from tests.unit.test_openai_provider import (
    DONE,
    chunk,
    data,
    make_entry,
    run,
    run_until_error,
)
from tests.unit.upstream_fakes import ChunkStream, Upstream, make_request, sse_upstream
from worker.providers.openai import OpenAIProvider, build_body

PNG_B64 = base64.b64encode(b"\x89PNG\r\n\x1a\nfake").decode()
PDF_B64 = base64.b64encode(b"%PDF-1.4 fake").decode()
WAV_B64 = base64.b64encode(b"RIFF fake WAVE").decode()
NOTE = "Spool keeps every chunk.\n"
NOTE_B64 = base64.b64encode(NOTE.encode()).decode()


# --- the Chat Completions surface ------------------------------------------------------


def chat(messages: list[dict[str, Any]], **fields: Any) -> GenerationRequest:
    body = chat_route.ChatCompletionRequest.model_validate(
        {"model": "m", "messages": messages, **fields}
    )
    return chat_route.to_canonical(body)


def user_parts(*parts: dict[str, Any]) -> list[ContentPart]:
    request = chat([{"role": "user", "content": list(parts)}])
    assert request.messages[0].parts is not None
    return request.messages[0].parts


def refused(messages: list[dict[str, Any]], **fields: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        chat(messages, **fields)
    return info.value.message


def refused_part(part: dict[str, Any]) -> str:
    return refused([{"role": "user", "content": [{"type": "text", "text": "hi"}, part]}])


def test_text_parts_stay_plain_text() -> None:
    request = chat(
        [
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert request.messages == [Message(role="user", content="ab")]
    assert request.protocol == "openai"
    assert request.extra == {}


def test_image_url_parts() -> None:
    parts = user_parts(
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "https://x.test/cat.png", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
        {"type": "image_url", "image_url": "https://x.test/dog.jpg"},
    )
    assert parts == [
        ContentPart(type="text", text="look"),
        ContentPart(type="image", url="https://x.test/cat.png", detail="low"),
        ContentPart(type="image", media_type="image/png", data=PNG_B64),
        ContentPart(type="image", url="https://x.test/dog.jpg"),
    ]


@pytest.mark.parametrize(("fmt", "media_type"), [("wav", "audio/wav"), ("mp3", "audio/mpeg")])
def test_input_audio_parts(fmt: str, media_type: str) -> None:
    part = {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": fmt}}
    assert user_parts(part) == [ContentPart(type="audio", media_type=media_type, data=WAV_B64)]


def test_file_parts_become_documents_named_by_their_file_name() -> None:
    pdf = {"file_data": f"data:application/pdf;base64,{PDF_B64}", "filename": "a.pdf"}
    note = {"file_data": f"data:text/plain;base64,{NOTE_B64}"}
    parts = user_parts({"type": "file", "file": pdf}, {"type": "file", "file": note})
    assert parts == [
        ContentPart(type="document", media_type="application/pdf", data=PDF_B64, name="a.pdf"),
        ContentPart(type="document", media_type="text/plain", data=NOTE_B64),
    ]


@pytest.mark.parametrize(
    ("part", "says"),
    [
        (
            {"type": "file", "file": {"file_id": "file-abc"}},
            "file ids are not supported: send file_data",
        ),
        (
            {"type": "file", "file": {"file_data": PDF_B64, "filename": "a.pdf"}},
            "not a valid data URL",
        ),
        ({"type": "file", "file": {"filename": "a.pdf"}}, "file_data"),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64"}},
            "not a valid data URL",
        ),
        ({"type": "image_url", "image_url": {"url": "ftp://x.test/a.png"}}, "http(s) URL"),
        ({"type": "image_url"}, "image_url"),
        (
            {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "flac"}},
            "format 'flac'",
        ),
        ({"type": "video_url", "video_url": {"url": "https://x.test/v.mp4"}}, "'video_url'"),
        ({"type": "text"}, "needs its text"),
    ],
)
def test_bad_parts_are_refused_by_name(part: dict[str, Any], says: str) -> None:
    message = refused_part(part)
    assert says in message
    assert "messages[0].content[1]" in message


def test_media_only_where_openai_takes_them() -> None:
    image = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    assert "system messages cannot carry 'image_url'" in refused(
        [{"role": "system", "content": [image]}, {"role": "user", "content": "hi"}]
    )
    assert "assistant messages cannot carry 'image_url'" in refused(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [image]}]
    )


def test_assistant_refusal_parts_are_its_text() -> None:
    request = chat(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't."}]},
        ]
    )
    assert request.messages[1] == Message(role="assistant", content="I can't.")


def test_tool_results_carry_text_images_and_files() -> None:
    request = chat(
        [
            {"role": "user", "content": "radar?"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "radar"}},
                ],
            },
            {
                "role": "tool",
                "tool_call_id": "call_1",
                "content": [
                    {"type": "text", "text": "the map"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                    {
                        "type": "file",
                        "file": {"file_data": f"data:application/pdf;base64,{PDF_B64}"},
                    },
                ],
            },
        ]
    )
    assert request.messages[2] == Message(
        role="tool",
        content="the map",
        tool_call_id="call_1",
        parts=[
            ContentPart(type="text", text="the map"),
            ContentPart(type="image", media_type="image/png", data=PNG_B64),
            ContentPart(type="document", media_type="application/pdf", data=PDF_B64),
        ],
    )
    audio = {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "wav"}}
    assert "tool messages cannot carry 'input_audio'" in refused(
        [{"role": "tool", "tool_call_id": "c", "content": [audio]}]
    )


def test_signatures_and_thinking_blocks_come_back_in() -> None:
    request = chat(
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": None,
                "thinking_blocks": [
                    {"type": "thinking", "thinking": "Paris, then.", "signature": "sig-a"},
                    {"type": "redacted_thinking", "data": "opaque"},
                ],
                "tool_calls": [
                    {
                        "id": "call_1",
                        "type": "function",
                        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        "extra_content": {"google": {"thought_signature": "sig-g"}},
                    },
                    {
                        "id": "call_2",
                        "type": "function",
                        "function": {"name": "get_time", "arguments": "{}"},
                        "extra_content": {"other": {"x": 1}},
                    },
                ],
            },
        ]
    )
    assistant = request.messages[1]
    assert assistant.thinking == [
        Thinking(text="Paris, then.", signature="sig-a"),
        Thinking(redacted="opaque"),
    ]
    assert assistant.tool_calls == [
        ToolCall(id="call_1", name="get_weather", arguments='{"city": "Paris"}', signature="sig-g"),
        ToolCall(id="call_2", name="get_time", arguments="{}"),
    ]


def test_bad_thinking_blocks_are_refused() -> None:
    redacted = {"type": "redacted_thinking"}
    assert "thinking_blocks[0] needs its data" in refused(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "x", "thinking_blocks": [redacted]},
        ]
    )
    block = {"type": "thinking", "thinking": "t", "signature": "s"}
    assert "only assistant messages carry thinking_blocks" in refused(
        [{"role": "user", "content": "hi", "thinking_blocks": [block]}]
    )


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"type": "text"}, ResponseFormat(type="text")),
        ({"type": "json_object"}, ResponseFormat(type="json_object")),
        (
            {
                "type": "json_schema",
                "json_schema": {
                    "name": "Weather",
                    "description": "today's",
                    "schema": {"type": "object", "properties": {"city": {"type": "string"}}},
                    "strict": True,
                },
            },
            ResponseFormat(
                type="json_schema",
                name="Weather",
                description="today's",
                json_schema={"type": "object", "properties": {"city": {"type": "string"}}},
                strict=True,
            ),
        ),
    ],
)
def test_response_format(given: dict[str, Any], expected: ResponseFormat) -> None:
    request = chat([{"role": "user", "content": "hi"}], response_format=given)
    assert request.response_format == expected


def test_json_schema_response_format_needs_its_object() -> None:
    says = refused([{"role": "user", "content": "hi"}], response_format={"type": "json_schema"})
    assert "json_schema" in says


def test_every_parameter_is_carried() -> None:
    request = chat(
        [{"role": "user", "content": "hi"}],
        presence_penalty=0.5,
        frequency_penalty=-1.5,
        logit_bias={"50256": -100, "42": 2.5},
        logprobs=True,
        top_logprobs=3,
        parallel_tool_calls=False,
        seed=7,
        stop="END",
        metadata={"team": "search"},
        user="u-1",
        service_tier="flex",
        reasoning_effort="low",
        top_k=40,
        max_completion_tokens=99,
        max_tokens=5,
        n=1,
    )
    assert request.presence_penalty == 0.5
    assert request.frequency_penalty == -1.5
    assert request.logit_bias == {"50256": -100, "42": 2.5}
    assert (request.logprobs, request.top_logprobs) == (True, 3)
    assert request.parallel_tool_calls is False
    assert request.seed == 7
    assert request.stop == ["END"]
    assert request.metadata == {"team": "search"}
    assert request.user == "u-1"
    assert request.service_tier == "flex"
    assert (request.reasoning_effort, request.reasoning) == ("low", True)
    assert request.top_k == 40
    assert request.max_tokens == 99
    assert request.extra == {}


def test_minimal_reasoning_effort_asks_no_reasoning() -> None:
    request = chat([{"role": "user", "content": "hi"}], reasoning_effort="minimal")
    assert (request.reasoning_effort, request.reasoning) == ("minimal", False)


@pytest.mark.parametrize("logprobs", [None, False])
def test_top_logprobs_needs_logprobs(logprobs: bool | None) -> None:
    fields: dict[str, Any] = {"top_logprobs": 2}
    if logprobs is not None:
        fields["logprobs"] = logprobs
    assert "top_logprobs needs logprobs" in refused([{"role": "user", "content": "hi"}], **fields)


@pytest.mark.parametrize(
    "fields",
    [
        {"presence_penalty": 2.5},
        {"frequency_penalty": -3},
        {"logit_bias": {"1": 101}},
        {"logit_bias": {"1": "high"}},
        {"top_logprobs": 21, "logprobs": True},
        {"metadata": {"k": 1}},
        {"response_format": {"type": "xml"}},
    ],
)
def test_out_of_range_parameters_fail_validation(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        chat_route.ChatCompletionRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}
        )


def test_n_other_than_one_is_refused() -> None:
    assert "only n=1" in refused([{"role": "user", "content": "hi"}], n=2)
    assert chat([{"role": "user", "content": "hi"}], n=None).messages


def test_unknown_fields_are_kept_verbatim_and_drop_params_is_canonical() -> None:
    extra = {
        "store": True,
        "prediction": {"type": "content", "content": "x"},
        "modalities": ["text"],
        "verbosity": "low",
        "web_search_options": {},
    }
    request = chat([{"role": "user", "content": "hi"}], drop_params=True, **extra)
    assert request.extra == extra
    assert request.protocol == "openai"
    assert request.drop_params is True


# --- the Completions surface -----------------------------------------------------------


def completion(**fields: Any) -> GenerationRequest:
    body = completions_route.CompletionRequest.model_validate(
        {"model": "m", "prompt": "once", **fields}
    )
    return completions_route.to_canonical(body)


def test_completions_parameters_and_extra() -> None:
    request = completion(
        presence_penalty=1,
        frequency_penalty=0.5,
        logit_bias={"7": 3},
        seed=1,
        user="u",
        stop=["\n"],
        logprobs=2,
        top_k=5,
        drop_params=True,
    )
    assert request.messages == [Message(role="user", content="once")]
    assert (request.presence_penalty, request.frequency_penalty) == (1, 0.5)
    assert request.logit_bias == {"7": 3}
    assert (request.seed, request.user, request.stop) == (1, "u", ["\n"])
    assert (request.logprobs, request.top_logprobs) == (True, 2)
    assert request.protocol == "openai"
    assert request.extra == {"top_k": 5}
    assert request.drop_params is True


def test_completions_logprobs_zero_still_asks_for_logprobs() -> None:
    request = completion(logprobs=0)
    assert (request.logprobs, request.top_logprobs) == (True, 0)
    assert (completion().logprobs, completion().top_logprobs) == (None, None)


@pytest.mark.parametrize(
    ("fields", "says"),
    [({"echo": True}, "echo"), ({"suffix": "x"}, "suffix"), ({"best_of": 2}, "best_of")],
)
def test_completions_refusals(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        completion(**fields)
    assert says in info.value.message


# --- the body the provider sends -------------------------------------------------------


def request_of(messages: list[Message], **fields: Any) -> GenerationRequest:
    return GenerationRequest(model="public", messages=messages, **fields)


def test_parts_in_openai_form() -> None:
    parts = [
        ContentPart(type="text", text="compare"),
        ContentPart(type="image", url="https://x.test/a.png", detail="high"),
        ContentPart(type="image", media_type="image/png", data=PNG_B64),
        ContentPart(type="audio", media_type="audio/wav", data=WAV_B64),
        ContentPart(type="audio", media_type="audio/mpeg", data=WAV_B64),
        ContentPart(type="document", media_type="application/pdf", data=PDF_B64, name="a.pdf"),
        ContentPart(type="document", media_type="application/pdf", data=PDF_B64),
        ContentPart(type="document", media_type="text/plain", data=NOTE_B64, name="n.txt"),
    ]
    body = build_body(request_of([Message(role="user", content="compare", parts=parts)]), "up")
    assert body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "compare"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://x.test/a.png", "detail": "high"},
                },
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}},
                {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "wav"}},
                {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "mp3"}},
                {
                    "type": "file",
                    "file": {
                        "filename": "a.pdf",
                        "file_data": f"data:application/pdf;base64,{PDF_B64}",
                    },
                },
                {
                    "type": "file",
                    "file": {
                        "filename": "document.pdf",
                        "file_data": f"data:application/pdf;base64,{PDF_B64}",
                    },
                },
                {"type": "text", "text": NOTE},
            ],
        }
    ]


def test_text_only_parts_go_as_a_string() -> None:
    parts = [ContentPart(type="text", text="a"), ContentPart(type="text", text="b")]
    body = build_body(request_of([Message(role="system", content="ab", parts=parts)]), "up")
    assert body["messages"] == [{"role": "system", "content": "ab"}]


def tool_turns(*results: Message) -> list[Message]:
    calls = [ToolCall(id=r.tool_call_id or "", name="radar", signature="sig-1") for r in results]
    return [
        Message(role="user", content="radar?"),
        Message(
            role="assistant",
            content="",
            tool_calls=calls,
            thinking=[Thinking(text="thought", signature="sig-t")],
        ),
        *results,
    ]


IMAGE = ContentPart(type="image", media_type="image/png", data=PNG_B64)
IMAGE_FORM = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG_B64}"}}


def test_tool_result_media_follow_as_a_user_turn_and_signatures_go_back() -> None:
    first = Message(
        role="tool",
        content="the map",
        tool_call_id="call_1",
        parts=[ContentPart(type="text", text="the map"), IMAGE],
    )
    second = Message(role="tool", content="no map", tool_call_id="call_2")
    messages = [*tool_turns(first, second), Message(role="user", content="and?")]
    body = build_body(request_of(messages), "up")
    assert body["messages"] == [
        {"role": "user", "content": "radar?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": "radar", "arguments": "{}"},
                    "extra_content": {"google": {"thought_signature": "sig-1"}},
                }
                for call_id in ("call_1", "call_2")
            ],
        },
        {"role": "tool", "content": "the map", "tool_call_id": "call_1"},
        {"role": "tool", "content": "no map", "tool_call_id": "call_2"},
        {"role": "user", "content": [IMAGE_FORM]},
        {"role": "user", "content": "and?"},
    ]


def test_tool_result_media_at_the_end_of_the_conversation() -> None:
    result = Message(role="tool", content="", tool_call_id="call_1", parts=[IMAGE])
    body = build_body(request_of(tool_turns(result)), "up")
    assert body["messages"][-2:] == [
        {"role": "tool", "content": "", "tool_call_id": "call_1"},
        {"role": "user", "content": [IMAGE_FORM]},
    ]


def test_parameters_in_openai_form() -> None:
    request = request_of(
        [Message(role="user", content="hi")],
        max_tokens=10,
        temperature=0.2,
        top_p=0.9,
        presence_penalty=0.5,
        frequency_penalty=0.25,
        logit_bias={"50256": -100},
        logprobs=True,
        top_logprobs=2,
        seed=7,
        user="u-1",
        metadata={"team": "search"},
        service_tier="flex",
        reasoning_effort="high",
        stop=["END"],
        response_format=ResponseFormat(type="json_object"),
    )
    assert build_body(request, "up") == {
        "model": "up",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": 10,
        "temperature": 0.2,
        "top_p": 0.9,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.25,
        "logit_bias": {"50256": -100},
        "logprobs": True,
        "top_logprobs": 2,
        "seed": 7,
        "user": "u-1",
        "metadata": {"team": "search"},
        "service_tier": "flex",
        "reasoning_effort": "high",
        "stop": ["END"],
        "response_format": {"type": "json_object"},
    }


def test_parallel_tool_calls_go_with_tools() -> None:
    tools = [{"name": "f", "parameters": {"type": "object"}}]
    with_tools = build_body(make_request(tools=tools, parallel_tool_calls=False), "up")
    assert with_tools["parallel_tool_calls"] is False
    assert "parallel_tool_calls" not in build_body(make_request(parallel_tool_calls=False), "up")


def test_json_schema_response_format() -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    named = ResponseFormat(
        type="json_schema", name="W", description="d", json_schema=schema, strict=True
    )
    assert build_body(make_request(response_format=named), "up")["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "W", "description": "d", "schema": schema, "strict": True},
    }
    # Other surfaces name no schema; OpenAI needs a name.
    unnamed = ResponseFormat(type="json_schema", json_schema=schema)
    assert build_body(make_request(response_format=unnamed), "up")["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": schema},
    }


def test_extra_fields_merge_for_openai_requests_only() -> None:
    extra = {"store": True, "verbosity": "low", "stream": False, "model": "other", "messages": []}
    merged = build_body(make_request(protocol="openai", extra=extra, seed=3), "up")
    assert merged["store"] is True and merged["verbosity"] == "low"
    assert merged["stream"] is True and merged["model"] == "up"
    assert merged["messages"] == [{"role": "user", "content": "hi"}]
    assert merged["seed"] == 3
    for protocol in ("anthropic", "gemini", None):
        body = build_body(make_request(protocol=protocol, extra=extra), "up")
        assert "store" not in body and "verbosity" not in body


# --- the provider: media fetched, stream read ------------------------------------------


def media_and_chat(media: dict[str, tuple[str, bytes]], sse: list[bytes]) -> Upstream:
    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            found = media.get(str(request.url))
            if found is None:
                return httpx.Response(404)
            return httpx.Response(200, headers={"content-type": found[0]}, content=found[1])
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=ChunkStream(list(sse))
        )

    return Upstream(respond)


async def test_audio_and_documents_by_url_are_fetched_and_images_keep_their_url() -> None:
    parts = [
        ContentPart(type="image", url="https://media.test/a.png"),
        ContentPart(type="audio", url="https://media.test/a.wav"),
        ContentPart(type="document", url="https://media.test/a.pdf", name="a.pdf"),
    ]
    request = make_request(messages=[Message(role="user", content="", parts=parts)])
    upstream = media_and_chat(
        {
            "https://media.test/a.wav": ("audio/wav", b"RIFF fake WAVE"),
            "https://media.test/a.pdf": ("application/pdf", b"%PDF-1.4 fake"),
        },
        [chunk({"content": "ok"}, "stop"), DONE],
    )
    assert await run(upstream, request) == [ev.TextDelta(text="ok"), ev.Finish(reason="stop")]
    fetched = [str(r.url) for r in upstream.requests if r.method == "GET"]
    assert fetched == ["https://media.test/a.wav", "https://media.test/a.pdf"]
    body = orjson.loads(upstream.requests[-1].content)
    assert body["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://media.test/a.png"}},
        {"type": "input_audio", "input_audio": {"data": WAV_B64, "format": "wav"}},
        {
            "type": "file",
            "file": {"filename": "a.pdf", "file_data": f"data:application/pdf;base64,{PDF_B64}"},
        },
    ]


async def test_a_media_url_that_fails_ends_the_stream_before_the_upstream_call() -> None:
    parts = [ContentPart(type="audio", url="https://media.test/gone.wav")]
    request = make_request(messages=[Message(role="user", content="", parts=parts)])
    upstream = media_and_chat({}, [chunk({}, "stop"), DONE])
    async with upstream.client() as client:
        events = OpenAIProvider(client).stream(request, make_entry())
        with pytest.raises(UpstreamError) as info:
            async for _ in events:
                pass
    assert info.value.code == "media_fetch_failed"
    assert "answered 404" in info.value.message
    assert [r.method for r in upstream.requests] == ["GET"]


def usage_with_details(cached: Any, reasoning: Any) -> bytes:
    return data(
        {
            "choices": [],
            "usage": {
                "prompt_tokens": 100,
                "completion_tokens": 40,
                "total_tokens": 140,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            },
        }
    )


async def test_usage_details_are_read() -> None:
    upstream = sse_upstream([chunk({"content": "a"}, "stop"), usage_with_details(64, 30), DONE])
    assert (await run(upstream))[-1] == ev.Finish(
        reason="stop",
        usage=ev.Usage(
            input_tokens=100, output_tokens=40, cached_input_tokens=64, reasoning_tokens=30
        ),
    )


async def test_usage_details_that_are_not_counts_are_left_out() -> None:
    upstream = sse_upstream([chunk({}, "stop"), usage_with_details(None, "many"), DONE])
    assert (await run(upstream))[-1] == ev.Finish(
        reason="stop", usage=ev.Usage(input_tokens=100, output_tokens=40)
    )


LOGPROBS = [
    {
        "token": "Hi",
        "logprob": -0.01,
        "bytes": [72, 105],
        "top_logprobs": [{"token": "Hi", "logprob": -0.01, "bytes": [72, 105]}],
    }
]


def logprob_chunk(content: str, logprobs: Any) -> bytes:
    return data({"choices": [{"index": 0, "delta": {"content": content}, "logprobs": logprobs}]})


async def test_logprobs_ride_on_their_text_delta() -> None:
    upstream = sse_upstream(
        [
            logprob_chunk("Hi", {"content": LOGPROBS, "refusal": None}),
            logprob_chunk("!", None),
            logprob_chunk("?", {"content": ["not an entry"]}),
            chunk({}, "stop"),
            DONE,
        ]
    )
    assert await run(upstream) == [
        ev.TextDelta(text="Hi", logprobs=LOGPROBS),
        ev.TextDelta(text="!"),
        ev.TextDelta(text="?"),
        ev.Finish(reason="stop"),
    ]


async def test_tool_call_thought_signatures_are_read() -> None:
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
        "extra_content": {"google": {"thought_signature": "sig-g"}},
    }
    upstream = sse_upstream([chunk({"tool_calls": [call]}), chunk({}, "tool_calls"), DONE])
    assert (await run(upstream))[0] == ev.ToolCallDelta(
        index=0, id="call_1", name="f", arguments="{}", signature="sig-g"
    )


async def test_an_upstream_error_mid_stream_still_raises() -> None:
    _, error = await run_until_error(sse_upstream([data({"error": {"message": "boom"}})]))
    assert "boom" in error.message


# --- the formats -----------------------------------------------------------------------

RENDER: dict[str, Any] = {"id": "chatcmpl-x", "created": 1, "model": "m", "include_usage": True}
CHAT = OpenAIChatFormat()
COMPLETIONS = OpenAICompletionsFormat()


def chunks(event: ev.Event, render: dict[str, Any] = RENDER) -> list[Any]:
    return [
        f.data.decode() if f.data == b"[DONE]" else orjson.loads(f.data)
        for f in CHAT.frames(event, render)
    ]


def choice(event: ev.Event) -> dict[str, Any]:
    (only,) = chunks(event)
    return dict(only["choices"][0])


DETAILED = ev.Usage(input_tokens=100, output_tokens=40, cached_input_tokens=64, reasoning_tokens=30)
DETAILED_OBJECT = {
    "prompt_tokens": 100,
    "completion_tokens": 40,
    "total_tokens": 140,
    "prompt_tokens_details": {"cached_tokens": 64},
    "completion_tokens_details": {"reasoning_tokens": 30},
}


def test_usage_chunk_carries_details_when_known() -> None:
    _, usage, _ = chunks(ev.Finish(reason="stop", usage=DETAILED))
    assert usage["usage"] == DETAILED_OBJECT
    _, plain, _ = chunks(ev.Finish(reason="stop", usage=ev.Usage(input_tokens=1)))
    assert plain["usage"] == {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1}
    only_cached = ev.Usage(input_tokens=5, cached_input_tokens=0)
    _, cached, _ = chunks(ev.Finish(reason="stop", usage=only_cached))
    assert cached["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    assert "completion_tokens_details" not in cached["usage"]


def test_text_with_logprobs() -> None:
    assert choice(ev.TextDelta(text="Hi", logprobs=LOGPROBS)) == {
        "index": 0,
        "delta": {"content": "Hi"},
        "logprobs": {"content": LOGPROBS, "refusal": None},
        "finish_reason": None,
    }


def test_plain_text_chunks_are_unchanged() -> None:
    (frame,) = CHAT.frames(ev.TextDelta(text="Hi"), RENDER)
    assert frame.data == (
        b'{"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m",'
        b'"system_fingerprint":null,"choices":[{"index":0,"delta":{"content":"Hi"},'
        b'"logprobs":null,"finish_reason":null}],"usage":null}'
    )


def test_signed_reasoning_renders_thinking_blocks() -> None:
    assert choice(ev.ReasoningDelta(text="", signature="sig-a"))["delta"] == {
        "thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig-a"}]
    }
    assert choice(ev.ReasoningDelta(text="so", signature="sig-b"))["delta"] == {
        "reasoning_content": "so",
        "thinking_blocks": [{"type": "thinking", "thinking": "so", "signature": "sig-b"}],
    }
    assert choice(ev.ReasoningDelta(text="so"))["delta"] == {"reasoning_content": "so"}


def test_signed_tool_call_renders_extra_content() -> None:
    event = ev.ToolCallDelta(index=0, id="call_1", name="f", arguments="{}", signature="sig-g")
    assert choice(event)["delta"] == {
        "tool_calls": [
            {
                "index": 0,
                "id": "call_1",
                "type": "function",
                "function": {"arguments": "{}", "name": "f"},
                "extra_content": {"google": {"thought_signature": "sig-g"}},
            }
        ]
    }


def record(surface: str = "openai.chat") -> JobRecord:
    return completed_record(surface, RENDER)


def transcript(*events: ev.Event) -> Transcript:
    t = Transcript()
    for event in events:
        t.apply(event)
    return Transcript.from_json(orjson.loads(orjson.dumps(t.to_json())))  # as stored


def test_non_streaming_answer_carries_signatures_logprobs_and_usage_details() -> None:
    t = transcript(
        ev.ReasoningDelta(text="Paris, "),
        ev.ReasoningDelta(text="then."),
        ev.ReasoningDelta(text="", signature="sig-a"),
        ev.TextDelta(text="Hi", logprobs=LOGPROBS),
        ev.ToolCallDelta(index=0, id="call_1", name="f", arguments="{}", signature="sig-g"),
        ev.Finish(reason="tool_calls", usage=DETAILED),
    )
    body = CHAT.response(record(), t)
    (only,) = body["choices"]
    assert only["logprobs"] == {"content": LOGPROBS, "refusal": None}
    assert only["message"] == {
        "role": "assistant",
        "content": "Hi",
        "reasoning_content": "Paris, then.",
        "thinking_blocks": [{"type": "thinking", "thinking": "Paris, then.", "signature": "sig-a"}],
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "f", "arguments": "{}"},
                "extra_content": {"google": {"thought_signature": "sig-g"}},
            }
        ],
    }
    assert body["usage"] == DETAILED_OBJECT


def test_what_a_client_got_comes_back_with_its_signatures() -> None:
    t = transcript(
        ev.ReasoningDelta(text="hmm", signature="sig-a"),
        ev.ToolCallDelta(index=0, id="call_1", name="f", arguments="{}", signature="sig-g"),
        ev.Finish(reason="tool_calls"),
    )
    answered = CHAT.response(record(), t)["choices"][0]["message"]
    request = chat([{"role": "user", "content": "go"}, answered])
    assistant = request.messages[1]
    assert assistant.thinking == [Thinking(text="hmm", signature="sig-a")]
    assert assistant.tool_calls == [
        ToolCall(id="call_1", name="f", arguments="{}", signature="sig-g")
    ]


def test_completions_render_logprobs_and_usage_details() -> None:
    renderer = COMPLETIONS.renderer(RENDER)
    (frame,) = renderer.frames("1-0", ev.TextDelta(text="Hi", logprobs=LOGPROBS))
    legacy = {"tokens": ["Hi"], "token_logprobs": [-0.01], "top_logprobs": [{"Hi": -0.01}]}
    assert orjson.loads(frame.data)["choices"][0]["logprobs"] == legacy
    (plain,) = renderer.frames("1-1", ev.TextDelta(text="!"))
    assert orjson.loads(plain.data)["choices"][0]["logprobs"] is None
    _, usage, _ = renderer.frames("1-2", ev.Finish(reason="stop", usage=DETAILED))
    assert orjson.loads(usage.data)["usage"] == DETAILED_OBJECT
    t = transcript(ev.TextDelta(text="Hi", logprobs=LOGPROBS), ev.Finish(reason="stop"))
    assert COMPLETIONS.response(record("openai.completions"), t)["choices"][0]["logprobs"] == legacy


def test_a_streamed_signature_takes_the_streamed_reasoning_as_its_text() -> None:
    """A stream sends the reasoning as reasoning_content deltas and the signature in a
    thinking block of its own; sent back together, they make one signed block."""
    from api.routes.openai_chat import ChatCompletionRequest, to_canonical

    body = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "content": "Hello",
                    "reasoning_content": "The user greets me.",
                    "thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig"}],
                },
                {"role": "user", "content": "again"},
            ],
        }
    )
    thinking = to_canonical(body).messages[1].thinking
    assert thinking is not None
    assert [(t.text, t.signature) for t in thinking] == [("The user greets me.", "sig")]
