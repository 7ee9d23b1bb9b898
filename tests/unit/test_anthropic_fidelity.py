"""Request fidelity on the Anthropic side: the Messages surface's blocks and parameters to
the canonical request (api/routes/anthropic.py), the canonical request to Anthropic's body
and its stream's usage back (worker/providers/anthropic.py), and the events to Anthropic's
wire format (api/formats/anthropic.py)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from api.formats.anthropic import AnthropicFormat, tool_use_id
from api.routes.anthropic import MessagesBody, MessagesRequest, to_canonical
from api.routes.count_tokens import _upstream_body
from shared import events as ev
from shared.errors import InvalidRequest, UpstreamError
from shared.media import check_media
from shared.request import ContentPart, GenerationRequest, Message, Thinking
from shared.store import JobRecord
from shared.transcript import Transcript
from tests.media import PDF_B64, PNG_B64
from tests.unit.records import completed_record
from tests.unit.test_anthropic_provider import (
    STOP,
    block_start,
    make_entry,
    message_delta,
    start,
    text,
    text_message,
)
from tests.unit.upstream_fakes import ChunkStream, Upstream, make_request, sse_upstream
from worker.providers.anthropic import AnthropicProvider, build_body

PNG_SOURCE = {"type": "base64", "media_type": "image/png", "data": PNG_B64}
PDF_SOURCE = {"type": "base64", "media_type": "application/pdf", "data": PDF_B64}
EPHEMERAL = {"type": "ephemeral"}
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}


def canonical(content: Any = "hi", **fields: Any) -> GenerationRequest:
    body = {
        "model": "claude",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": content}],
        **fields,
    }
    return to_canonical(MessagesRequest.model_validate(body))


def parts_of(content: list[dict[str, Any]]) -> list[ContentPart]:
    parts = canonical(content).messages[-1].parts
    assert parts is not None
    return parts


def refused(content: Any = "hi", **fields: Any) -> str:
    with pytest.raises(InvalidRequest) as info:
        canonical(content, **fields)
    return info.value.message


def b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


# --- the surface: content blocks ---------------------------------------------------------


def test_plain_text_stays_plain() -> None:
    message = canonical([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]).messages[0]
    assert (message.content, message.parts) == ("ab", None)


def test_text_block_keeps_its_cache_control() -> None:
    parts = parts_of([{"type": "text", "text": "long", "cache_control": EPHEMERAL}])
    assert parts == [ContentPart(type="text", text="long", cache_control=EPHEMERAL)]


def test_image_blocks_base64_and_url() -> None:
    parts = parts_of(
        [
            {"type": "text", "text": "what is this?"},
            {"type": "image", "source": PNG_SOURCE, "cache_control": EPHEMERAL},
            {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        ]
    )
    assert parts == [
        ContentPart(type="text", text="what is this?"),
        ContentPart(type="image", media_type="image/png", data=PNG_B64, cache_control=EPHEMERAL),
        ContentPart(type="image", url="https://example.com/a.png"),
    ]


def test_document_blocks_pdf_by_base64_and_url_with_title() -> None:
    parts = parts_of(
        [
            {"type": "document", "source": PDF_SOURCE, "title": "report.pdf"},
            {"type": "document", "source": {"type": "url", "url": "https://example.com/d.pdf"}},
        ]
    )
    assert parts == [
        ContentPart(type="document", media_type="application/pdf", data=PDF_B64, name="report.pdf"),
        ContentPart(type="document", media_type="application/pdf", url="https://example.com/d.pdf"),
    ]


def test_text_document_becomes_base64_of_its_utf8_text() -> None:
    source = {"type": "text", "media_type": "text/plain", "data": "héllo 日本"}
    (part,) = parts_of([{"type": "document", "source": source, "title": "notes"}])
    assert part == ContentPart(
        type="document", media_type="text/plain", data=b64("héllo 日本"), name="notes"
    )
    check_media(canonical([{"type": "document", "source": source}]), 1000)  # valid as carried


@pytest.mark.parametrize(
    ("block", "says"),
    [
        (
            {"type": "document", "source": {"type": "content", "content": "x"}},
            "document sources of type 'content' are not supported",
        ),
        (
            {"type": "document", "source": {"type": "file", "file_id": "file_1"}},
            "document sources of type 'file' are not supported",
        ),
        (
            {"type": "image", "source": {"type": "file", "file_id": "file_1"}},
            "image sources of type 'file' are not supported",
        ),
        ({"type": "image", "source": {"type": "text", "data": "x"}}, "type 'text'"),
        ({"type": "image"}, "needs a source"),
        ({"type": "image", "source": {"type": "base64", "media_type": "image/png"}}, "base64"),
        ({"type": "image", "source": {"type": "url", "url": "ftp://x/y.png"}}, "http(s) URL"),
        ({"type": "document", "source": {"type": "text", "media_type": "text/plain"}}, "data"),
        ({"type": "search_result", "source": "x", "title": "t"}, "'search_result'"),
        ({"type": "thinking", "thinking": "x", "signature": "s"}, "in user turns"),
    ],
)
def test_blocks_spool_cannot_carry_are_a_400_naming_them(block: dict[str, Any], says: str) -> None:
    message = refused([{"type": "text", "text": "first"}, block])
    assert says in message
    assert "messages[0].content[1]" in message


def test_tool_result_with_text_image_and_document() -> None:
    request = canonical(
        [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": [
                    {"type": "text", "text": "the map"},
                    {"type": "image", "source": PNG_SOURCE},
                    {"type": "document", "source": PDF_SOURCE},
                ],
                "cache_control": EPHEMERAL,
            },
            {"type": "text", "text": "and now?"},
        ]
    )
    tool, user = request.messages
    assert (tool.role, tool.tool_call_id, tool.content, tool.is_error) == (
        "tool",
        "toolu_1",
        "the map",
        None,
    )
    assert tool.parts == [
        ContentPart(type="text", text="the map"),
        ContentPart(type="image", media_type="image/png", data=PNG_B64),
        # The result's cache breakpoint ends its content.
        ContentPart(
            type="document", media_type="application/pdf", data=PDF_B64, cache_control=EPHEMERAL
        ),
    ]
    assert (user.role, user.content, user.parts) == ("user", "and now?", None)


def test_tool_result_error_is_flagged_not_prefixed() -> None:
    block = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "boom", "is_error": True}
    (tool,) = canonical([block]).messages
    assert (tool.content, tool.parts, tool.is_error) == ("boom", None, True)


def test_tool_result_with_an_unsupported_block_is_a_400() -> None:
    block = {
        "type": "tool_result",
        "tool_use_id": "toolu_1",
        "content": [{"type": "search_result", "source": "s", "title": "t", "content": []}],
    }
    assert "messages[0].content[0].content[0] (search_result)" in refused([block])


def test_thinking_and_redacted_thinking_are_kept_on_the_assistant_turn() -> None:
    body = {
        "model": "claude",
        "max_tokens": 64,
        "messages": [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "thinking", "thinking": "I should call it.", "signature": "sig-1"},
                    {"type": "redacted_thinking", "data": "opaque=="},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
                ],
            },
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1"}]},
        ],
    }
    assistant = to_canonical(MessagesRequest.model_validate(body)).messages[1]
    assert assistant.thinking == [
        Thinking(text="I should call it.", signature="sig-1"),
        Thinking(redacted="opaque=="),
    ]
    assert [c.id for c in assistant.tool_calls or []] == ["toolu_1"]


def test_system_string_and_blocks() -> None:
    assert canonical(system="Be brief.").messages[0] == Message(role="system", content="Be brief.")
    blocks = [
        {"type": "text", "text": "Rules. ", "cache_control": EPHEMERAL},
        {"type": "text", "text": "More."},
    ]
    system = canonical(system=blocks).messages[0]
    assert system.role == "system" and system.content == "Rules. More."
    assert system.parts == [
        ContentPart(type="text", text="Rules. ", cache_control=EPHEMERAL),
        ContentPart(type="text", text="More."),
    ]
    plain = canonical(system=[{"type": "text", "text": "x"}]).messages[0]
    assert plain == Message(role="system", content="x")
    assert "system[0] (image)" in refused(system=[{"type": "image", "source": PNG_SOURCE}])


# --- the surface: parameters ------------------------------------------------------------


def test_tools_keep_cache_control_and_server_tools_are_refused() -> None:
    tools = [{"name": "f", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}]
    assert canonical(tools=tools).tools[0].cache_control == EPHEMERAL
    server = [{"type": "web_search_20250305", "name": "web_search"}]
    assert "'web_search_20250305'" in refused(tools=server)


@pytest.mark.parametrize(
    "fields",
    [
        {"output_format": {"type": "json_schema", "schema": SCHEMA}},
        {"output_config": {"format": {"type": "json_schema", "schema": SCHEMA}}},
    ],
    ids=["beta-output_format", "output_config"],
)
def test_structured_output_forms(fields: dict[str, Any]) -> None:
    fmt = canonical(**fields).response_format
    assert fmt is not None
    assert (fmt.type, fmt.name, fmt.json_schema) == ("json_schema", "output", SCHEMA)


def test_output_config_effort() -> None:
    request = canonical(output_config={"effort": "medium"})
    assert (request.reasoning_effort, request.response_format) == ("medium", None)
    assert "output_config.effort 'max'" in refused(output_config={"effort": "max"})


def test_sampling_metadata_service_tier_and_stops() -> None:
    request = canonical(
        top_k=40,
        metadata={"user_id": "u-7"},
        service_tier="standard_only",
        stop_sequences=["END"],
        temperature=0.5,
        top_p=0.9,
    )
    assert (request.top_k, request.user, request.service_tier, request.stop) == (
        40,
        "u-7",
        "standard_only",
        ["END"],
    )
    assert (request.temperature, request.top_p) == (0.5, 0.9)
    assert "metadata.team" in refused(metadata={"user_id": "u", "team": "x"})


@pytest.mark.parametrize(
    ("choice", "expected", "parallel"),
    [
        ({"type": "auto"}, "auto", None),
        ({"type": "any", "disable_parallel_tool_use": True}, "required", False),
        ({"type": "tool", "name": "f", "disable_parallel_tool_use": False}, "f", None),
        ({"type": "none"}, "none", None),
    ],
)
def test_tool_choice_forms(choice: dict[str, Any], expected: str, parallel: bool | None) -> None:
    request = canonical(tools=[{"name": "f"}], tool_choice=choice)
    assert (request.tool_choice, request.parallel_tool_calls) == (expected, parallel)


def test_unknown_fields_go_to_extra_and_drop_params_is_popped() -> None:
    request = canonical(container="c-1", context_management={"edits": []}, drop_params=True)
    assert request.protocol == "anthropic"
    assert request.extra == {"container": "c-1", "context_management": {"edits": []}}
    assert request.drop_params is True
    assert canonical().extra == {} and canonical().drop_params is False
    assert "drop_params" in refused(drop_params="yes")


def test_a_token_count_body_needs_no_max_tokens() -> None:
    body = MessagesBody.model_validate(
        {"model": "claude", "messages": [{"role": "user", "content": "hi"}], "system": "s"}
    )
    request = to_canonical(body)
    assert request.max_tokens is None
    assert [m.role for m in request.messages] == ["system", "user"]


# --- the provider: the body -------------------------------------------------------------


def body_of(request: GenerationRequest) -> dict[str, Any]:
    return build_body(request, "claude-x")


def part(**fields: Any) -> ContentPart:
    return ContentPart.model_validate(fields)


def test_body_parts_as_blocks() -> None:
    request = make_request(
        messages=[
            {
                "role": "user",
                "content": "see",
                "parts": [
                    {"type": "text", "text": "see", "cache_control": EPHEMERAL},
                    {"type": "text", "text": ""},
                    {"type": "image", "media_type": "image/png", "data": PNG_B64},
                    {"type": "image", "url": "https://example.com/a.png"},
                    {"type": "document", "media_type": "application/pdf", "data": PDF_B64},
                    {
                        "type": "document",
                        "media_type": "application/pdf",
                        "url": "https://example.com/d.pdf",
                        "name": "d.pdf",
                    },
                    {"type": "document", "media_type": "text/csv", "data": b64("a,b\n1,2\n")},
                ],
            }
        ]
    )
    assert body_of(request)["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "see", "cache_control": EPHEMERAL},
                {"type": "image", "source": PNG_SOURCE},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
                {"type": "document", "source": PDF_SOURCE},
                {
                    "type": "document",
                    "source": {"type": "url", "url": "https://example.com/d.pdf"},
                    "title": "d.pdf",
                },
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "a,b\n1,2\n"},
                },
            ],
        }
    ]


def test_body_audio_never_goes_silently() -> None:
    request = make_request(
        messages=[
            {
                "role": "user",
                "parts": [{"type": "audio", "media_type": "audio/wav", "data": "AAAA"}],
            }
        ]
    )
    with pytest.raises(UpstreamError, match="audio input is not supported"):
        body_of(request)


def test_body_tool_result_with_parts_and_error() -> None:
    request = make_request(
        messages=[
            {"role": "user", "content": "go"},
            {"role": "assistant", "tool_calls": [{"id": "toolu_1", "name": "f"}]},
            {
                "role": "tool",
                "tool_call_id": "toolu_1",
                "content": "radar",
                "is_error": True,
                "parts": [
                    {"type": "text", "text": "radar"},
                    {"type": "image", "media_type": "image/png", "data": PNG_B64},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_2", "content": "plain"},
        ]
    )
    assert body_of(request)["messages"][2] == {
        "role": "user",
        "content": [
            {
                "type": "tool_result",
                "tool_use_id": "toolu_1",
                "content": [
                    {"type": "text", "text": "radar"},
                    {"type": "image", "source": PNG_SOURCE},
                ],
                "is_error": True,
            },
            {"type": "tool_result", "tool_use_id": "toolu_2", "content": "plain"},
        ],
    }


def test_body_thinking_leads_the_assistant_turn() -> None:
    request = make_request(
        messages=[
            {"role": "user", "content": "go"},
            {
                "role": "assistant",
                "content": "Calling.",
                "thinking": [
                    {"text": "plan", "signature": "sig-1"},
                    {"redacted": "opaque=="},
                    {"text": "unsigned, from elsewhere"},
                ],
                "tool_calls": [{"id": "toolu_1", "name": "f", "arguments": '{"a": 1}'}],
            },
        ]
    )
    assert body_of(request)["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "thinking", "thinking": "plan", "signature": "sig-1"},
            {"type": "redacted_thinking", "data": "opaque=="},
            {"type": "text", "text": "Calling."},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
    }


def test_body_system_with_cache_control_is_blocks() -> None:
    request = make_request(
        messages=[
            {
                "role": "system",
                "content": "Rules.",
                "parts": [{"type": "text", "text": "Rules.", "cache_control": EPHEMERAL}],
            },
            {"role": "system", "content": "More."},
            {"role": "user", "content": "hi"},
        ]
    )
    assert body_of(request)["system"] == [
        {"type": "text", "text": "Rules.", "cache_control": EPHEMERAL},
        {"type": "text", "text": "More."},
    ]
    plain = make_request(
        messages=[{"role": "system", "content": "A"}, {"role": "user", "content": "b"}]
    )
    assert body_of(plain)["system"] == "A"


def test_body_a_lone_cached_text_is_not_collapsed_to_a_string() -> None:
    request = make_request(
        messages=[
            {
                "role": "user",
                "content": "hi",
                "parts": [{"type": "text", "text": "hi", "cache_control": EPHEMERAL}],
            }
        ]
    )
    assert body_of(request)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": EPHEMERAL}]}
    ]


def test_body_tools_keep_cache_control() -> None:
    request = make_request(tools=[{"name": "f", "cache_control": EPHEMERAL}, {"name": "g"}])
    assert body_of(request)["tools"] == [
        {
            "name": "f",
            "input_schema": {"type": "object", "properties": {}},
            "cache_control": EPHEMERAL,
        },
        {"name": "g", "input_schema": {"type": "object", "properties": {}}},
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (
            {"response_format": {"type": "json_schema", "name": "w", "schema": SCHEMA}},
            {"format": {"type": "json_schema", "schema": SCHEMA}},
        ),
        (
            {"response_format": {"type": "json_object"}},
            {"format": {"type": "json_schema", "schema": {"type": "object"}}},
        ),
        ({"reasoning_effort": "minimal"}, {"effort": "low"}),
        (
            {
                "response_format": {"type": "json_schema", "schema": SCHEMA},
                "reasoning_effort": "high",
            },
            {"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "high"},
        ),
    ],
)
def test_body_output_config(fields: dict[str, Any], expected: dict[str, Any]) -> None:
    assert body_of(make_request(**fields))["output_config"] == expected


def test_body_no_output_config_for_text() -> None:
    assert "output_config" not in body_of(make_request(response_format={"type": "text"}))


def test_body_top_k_and_service_tier() -> None:
    body = body_of(make_request(top_k=5, service_tier="auto"))
    assert (body["top_k"], body["service_tier"]) == (5, "auto")
    assert "top_k" not in body_of(make_request()) and "service_tier" not in body_of(make_request())


@pytest.mark.parametrize(
    ("choice", "expected"),
    [
        (None, {"type": "auto", "disable_parallel_tool_use": True}),
        ("required", {"type": "any", "disable_parallel_tool_use": True}),
        ("f", {"type": "tool", "name": "f", "disable_parallel_tool_use": True}),
        ("none", {"type": "none"}),
    ],
)
def test_body_parallel_tool_calls_off(choice: str | None, expected: dict[str, Any]) -> None:
    request = make_request(tools=[{"name": "f"}], tool_choice=choice, parallel_tool_calls=False)
    assert body_of(request)["tool_choice"] == expected


def test_body_parallel_tool_calls_on_or_without_tools_adds_nothing() -> None:
    assert "tool_choice" not in body_of(
        make_request(tools=[{"name": "f"}], parallel_tool_calls=True)
    )
    assert "tool_choice" not in body_of(make_request(parallel_tool_calls=False))


def test_body_extra_merges_only_from_the_anthropic_surface() -> None:
    extra = {"container": "c-1", "model": "not-this", "stream": False, "mcp_servers": []}
    body = body_of(make_request(protocol="anthropic", extra=extra))
    assert (body["container"], body["mcp_servers"]) == ("c-1", [])
    assert (body["model"], body["stream"]) == ("claude-x", True)  # Spool's own keys stay
    other = body_of(make_request(protocol="openai", extra={"container": "c-1"}))
    assert "container" not in other


def test_surface_to_body_round_trip_keeps_every_block() -> None:
    """What an Anthropic client sends is what an Anthropic upstream gets."""
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:", "cache_control": EPHEMERAL},
                {"type": "image", "source": PNG_SOURCE},
                {"type": "document", "source": PDF_SOURCE, "title": "r.pdf"},
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "notes ✓"},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"q": [1, None]}},
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": [
                        {"type": "text", "text": "map"},
                        {"type": "image", "source": {"type": "url", "url": "https://e.x/m.png"}},
                    ],
                    "is_error": True,
                },
                {"type": "text", "text": "Well?"},
            ],
        },
    ]
    system = [{"type": "text", "text": "Be exact.", "cache_control": EPHEMERAL}]
    tools = [{"name": "f", "input_schema": {"type": "object"}, "cache_control": EPHEMERAL}]
    full = to_canonical(
        MessagesRequest.model_validate(
            {
                "model": "claude",
                "max_tokens": 64,
                "messages": messages,
                "system": system,
                "tools": tools,
                "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
                "output_config": {
                    "format": {"type": "json_schema", "schema": SCHEMA},
                    "effort": "low",
                },
                "top_k": 3,
                "metadata": {"user_id": "u"},
                "service_tier": "auto",
                "container": "c-1",
            }
        )
    )
    assert build_body(full, "claude-x") == {
        "model": "claude-x",
        "max_tokens": 64,
        "messages": messages,
        "stream": True,
        "system": system,
        "tools": tools,
        "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "low"},
        "top_k": 3,
        "metadata": {"user_id": "u"},
        "service_tier": "auto",
        "container": "c-1",
    }


# --- the provider: fetching what Anthropic cannot take by URL -----------------------------


async def test_text_documents_by_url_are_fetched_images_and_pdfs_are_not() -> None:
    served = {"/notes.txt": (b"plain notes \xe2\x9c\x93", "text/plain; charset=utf-8")}
    fetched: list[str] = []

    def respond(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            fetched.append(request.url.path)
            content, media_type = served[request.url.path]
            return httpx.Response(200, content=content, headers={"content-type": media_type})
        return httpx.Response(200, stream=ChunkStream(text_message("ok")))

    upstream = Upstream(respond)
    request = make_request(
        messages=[
            {
                "role": "user",
                "parts": [
                    {"type": "document", "url": "https://files.test/notes.txt"},
                    {"type": "image", "url": "https://files.test/a.png"},
                    {
                        "type": "document",
                        "media_type": "application/pdf",
                        "url": "https://files.test/d.pdf",
                    },
                ],
            }
        ]
    )
    async with upstream.client() as client:
        events = [e async for e in AnthropicProvider(client).stream(request, make_entry())]
    assert isinstance(events[-1], ev.Finish)
    assert fetched == ["/notes.txt"]
    (posted,) = [r for r in upstream.requests if r.method == "POST"]
    assert orjson.loads(posted.content)["messages"][0]["content"] == [
        {
            "type": "document",
            "source": {"type": "text", "media_type": "text/plain", "data": "plain notes ✓"},
        },
        {"type": "image", "source": {"type": "url", "url": "https://files.test/a.png"}},
        {"type": "document", "source": {"type": "url", "url": "https://files.test/d.pdf"}},
    ]


# --- the provider: the stream's usage ---------------------------------------------------


async def run(chunks: list[bytes]) -> list[ev.Event]:
    async with sse_upstream(chunks).client() as client:
        return [e async for e in AnthropicProvider(client).stream(make_request(), make_entry())]


async def test_input_count_leads_the_first_content_with_cache_counts() -> None:
    events = await run(
        [
            start(input_tokens=10, cache_creation_input_tokens=100, cache_read_input_tokens=1000),
            block_start(0, {"type": "text", "text": ""}),
            text(0, "hi"),
            message_delta("end_turn", {"output_tokens": 4}),
            STOP,
        ]
    )
    assert events == [
        ev.Usage(input_tokens=1110, cached_input_tokens=1000),
        ev.TextDelta(text="hi"),
        ev.Finish(
            reason="stop",
            usage=ev.Usage(input_tokens=1110, output_tokens=4, cached_input_tokens=1000),
        ),
    ]


async def test_no_early_usage_without_a_count_or_without_content() -> None:
    bare_start = b'event: message_start\ndata: {"type": "message_start", "message": {}}\n\n'
    events = await run(
        [bare_start, block_start(0, {"type": "text", "text": ""}), text(0, "a"), STOP]
    )
    assert events == [ev.TextDelta(text="a"), ev.Finish(reason="stop")]
    events = await run([start(input_tokens=3), message_delta("end_turn"), STOP])
    assert events == [ev.Finish(reason="stop", usage=ev.Usage(input_tokens=3, output_tokens=1))]


async def test_an_error_before_any_content_yields_nothing_so_it_can_be_retried() -> None:
    error = b'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}\n\n'
    got: list[ev.Event] = []
    async with sse_upstream([start(input_tokens=7), error]).client() as client:
        with pytest.raises(UpstreamError) as info:
            async for event in AnthropicProvider(client).stream(make_request(), make_entry()):
                got.append(event)
    assert got == [] and info.value.retryable


# --- the wire format ----------------------------------------------------------------------

RENDER = {"id": "msg_s1", "model": "claude"}


def render(events: list[ev.Event]) -> list[dict[str, Any]]:
    renderer = AnthropicFormat().renderer(RENDER)
    frames = [f for e in events for f in renderer.frames("1-0", e)]
    return [orjson.loads(f.data) for f in frames]


def test_plain_text_frames_are_unchanged() -> None:
    renderer = AnthropicFormat().renderer(RENDER)
    events: list[ev.Event] = [
        ev.Start(model="claude", provider="anthropic"),
        ev.TextDelta(text="hé"),
        ev.Finish(reason="stop", usage=ev.Usage(input_tokens=3, output_tokens=1)),
    ]
    raw = [(f.event, f.data) for e in events for f in renderer.frames("1-0", e)]
    assert raw == [
        (
            "message_start",
            b'{"type":"message_start","message":{"id":"msg_s1","type":"message",'
            b'"role":"assistant","model":"claude","content":[],"stop_reason":null,'
            b'"stop_sequence":null,"usage":{"input_tokens":0,"output_tokens":0}}}',
        ),
        ("ping", b'{"type":"ping"}'),
        (
            "content_block_start",
            b'{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}',
        ),
        (
            "content_block_delta",
            b'{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"h\xc3\xa9"}}',
        ),
        ("content_block_stop", b'{"type":"content_block_stop","index":0}'),
        (
            "message_delta",
            b'{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},'
            b'"usage":{"input_tokens":3,"output_tokens":1}}',
        ),
        ("message_stop", b'{"type":"message_stop"}'),
    ]


def test_message_start_reports_the_input_tokens_start_carries() -> None:
    frames = render(
        [
            ev.Start(model="claude", provider="anthropic", input_tokens=1234),
            ev.Usage(input_tokens=1234),
        ]
    )
    assert frames[0]["message"]["usage"] == {"input_tokens": 1234, "output_tokens": 0}
    assert [f["type"] for f in frames] == ["message_start", "ping"]  # the Usage renders nothing


def test_cached_input_is_reported_apart() -> None:
    usage = ev.Usage(input_tokens=1110, output_tokens=4, cached_input_tokens=1000)
    frames = render(
        [ev.Start(model="c", provider="anthropic"), ev.Finish(reason="stop", usage=usage)]
    )
    assert frames[-2]["usage"] == {
        "input_tokens": 110,
        "output_tokens": 4,
        "cache_read_input_tokens": 1000,
    }


@pytest.mark.parametrize(
    ("call_id", "index", "expected"),
    [
        ("toolu_01AbC", 0, "toolu_01AbC"),
        ("call_abc123", 0, "toolu_call_abc123"),
        ("functions.get weather:0", 1, "toolu_functions_get_weather_0"),
        (None, 2, "toolu_2"),
        ("", 3, "toolu_3"),
    ],
)
def test_tool_use_ids_look_like_anthropics(call_id: str | None, index: int, expected: str) -> None:
    assert tool_use_id(call_id, index) == expected


def record() -> JobRecord:
    return completed_record("anthropic.messages", RENDER)


def test_streamed_and_assembled_tool_ids_agree() -> None:
    events: list[ev.Event] = [
        ev.Start(model="claude", provider="openai"),
        ev.ToolCallDelta(index=0, id="call_a.1", name="f"),
        ev.ToolCallDelta(index=0, arguments="{}"),
        ev.ToolCallDelta(index=1, name="g", arguments="{}"),
        ev.Finish(
            reason="tool_calls",
            usage=ev.Usage(input_tokens=50, output_tokens=5, cached_input_tokens=20),
        ),
    ]
    streamed = [
        f["content_block"]["id"] for f in render(events) if f["type"] == "content_block_start"
    ]
    transcript = Transcript()
    for event in events:
        transcript.apply(event)
    response = AnthropicFormat().response(record(), transcript)
    assembled = [block["id"] for block in response["content"]]
    assert streamed == assembled == ["toolu_call_a_1", "toolu_1"]
    assert response["usage"] == {
        "input_tokens": 30,
        "output_tokens": 5,
        "cache_read_input_tokens": 20,
    }


# --- token counting: the body forwarded upstream -------------------------------------------


def test_count_tokens_forwards_the_clients_body_under_the_upstream_name() -> None:
    raw = orjson.dumps(
        {
            "model": "public",
            "messages": [{"role": "user", "content": "hi"}],
            "output_format": {"type": "json_schema", "schema": SCHEMA},
            "output_config": {"effort": "low"},
            "drop_params": True,
            "context_management": {"edits": []},
        }
    )
    assert _upstream_body(raw, "claude-up") == {
        "model": "claude-up",
        "messages": [{"role": "user", "content": "hi"}],
        "output_config": {"format": {"type": "json_schema", "schema": SCHEMA}, "effort": "low"},
        "context_management": {"edits": []},
    }
