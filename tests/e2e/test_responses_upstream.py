"""Models served by OpenAI's Responses API, asked through Spool's Chat Completions surface
with the official `openai` SDK (streaming and not): the client gets the text, tool calls,
reasoning, usage and errors the upstream sent, and the mock upstream received exactly the
Responses request the chat request stands for."""

from __future__ import annotations

import json
import uuid
from typing import Any

import openai
import orjson
import pytest

from tests import mock_upstream as mock
from tests.conftest import UPSTREAM_KEY, Cluster
from tests.e2e.surfaces import WEATHER_SCHEMA
from tests.media import PDF_B64, PNG_B64, Weather

pytestmark = pytest.mark.e2e

TEXT = "".join(mock.RESPONSES_TEXT)
CALLS = [(call_id, name, json.loads("".join(p))) for call_id, name, p in mock.RESPONSES_CALLS]
SUMMARY = "\n\n".join("".join(part) for part in mock.RESPONSES_SUMMARY)
ANSWER = "".join(mock.RESPONSES_ANSWER)
USAGE = mock.RESPONSES_USAGE
PNG_URL = f"data:image/png;base64,{PNG_B64}"
PDF_URL = f"data:application/pdf;base64,{PDF_B64}"
TIME_TOOL = {
    "type": "object",
    "properties": {"zone": {"type": "string"}},
    "required": ["zone"],
}


def client(cluster: Cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="spool", max_retries=0)


def marker(what: str) -> str:
    return f"{what} {uuid.uuid4().hex}"


def received(cluster: Cluster, mark: str) -> mock.Seen:
    """The one request the mock received whose body carries `mark`."""
    seen = [s for s in cluster.upstream.seen if mark in orjson.dumps(s.body).decode()]
    assert len(seen) == 1, f"{len(seen)} upstream requests carry {mark}"
    return seen[0]


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def reasoning_of(extra: dict[str, Any] | None) -> str:
    return str((extra or {}).get("reasoning_content") or "")


# --- text ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_text_and_the_exact_request(cluster: Cluster, stream: bool) -> None:
    mark = marker("text")
    asked: dict[str, Any] = {
        "model": "up-responses-text",
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": mark},
        ],
        "max_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.5,
        "metadata": {"team": "spool"},
        "user": "u-1",
        "service_tier": "auto",
    }
    if stream:
        chunks = list(
            client(cluster).chat.completions.create(
                **asked, stream=True, stream_options={"include_usage": True}
            )
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [
            c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
        ]
        usage = chunks[-1].usage
    else:
        completion = client(cluster).chat.completions.create(**asked)
        text = completion.choices[0].message.content or ""
        finish = [completion.choices[0].finish_reason]
        usage = completion.usage
    assert text == TEXT
    assert finish == ["stop"]
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        USAGE["input_tokens"],
        USAGE["output_tokens"],
    )
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == USAGE["cached"]
    seen = received(cluster, mark)
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert seen.body == {
        "model": "responses-text",
        "input": [user(mark)],
        "instructions": "Answer briefly.",
        "stream": True,
        "store": False,
        "max_output_tokens": 50,
        "temperature": 0.2,
        "top_p": 0.5,
        "metadata": {"team": "spool"},
        "user": "u-1",
        "service_tier": "auto",
    }


def test_a_stream_split_into_single_bytes(cluster: Cluster) -> None:
    stream = client(cluster).chat.completions.create(
        model="up-responses-split",
        messages=[{"role": "user", "content": marker("split")}],
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == TEXT
    assert "\ufffd" not in text


def test_media_reach_the_upstream_in_responses_form(cluster: Cluster) -> None:
    mark = marker("media")
    content: list[Any] = [
        {"type": "text", "text": mark},
        {"type": "image_url", "image_url": {"url": PNG_URL, "detail": "low"}},
        {"type": "file", "file": {"file_data": PDF_URL, "filename": "doc.pdf"}},
    ]
    completion = client(cluster).chat.completions.create(
        model="up-responses-text", messages=[{"role": "user", "content": content}]
    )
    assert completion.choices[0].message.content == TEXT
    assert received(cluster, mark).body["input"] == [
        {
            "type": "message",
            "role": "user",
            "content": [
                {"type": "input_text", "text": mark},
                {"type": "input_image", "image_url": PNG_URL, "detail": "low"},
                {"type": "input_file", "filename": "doc.pdf", "file_data": PDF_URL},
            ],
        }
    ]


def test_structured_output_is_the_text_format_and_the_sdk_parses_it(cluster: Cluster) -> None:
    mark = marker("weather")
    completion = client(cluster).chat.completions.parse(
        model="up-responses-json",
        messages=[{"role": "user", "content": mark}],
        response_format=Weather,
    )
    assert completion.choices[0].message.parsed == Weather(
        city="Paris", temperature=21.5, conditions="sunny"
    )
    fmt = received(cluster, mark).body["text"]["format"]
    assert (fmt["type"], fmt["name"], fmt["strict"]) == ("json_schema", "Weather", True)
    assert set(fmt["schema"]["properties"]) == {"city", "temperature", "conditions"}


# --- tool calls ------------------------------------------------------------------------------


def ask_with_tools(cluster: Cluster, mark: str, stream: bool) -> tuple[str, list[Any], str]:
    """A second round of tool use; the answer's text, (id, name, arguments) calls, finish."""
    earlier = {
        "id": "call_0",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    asked: dict[str, Any] = {
        "model": "up-responses-tools",
        "messages": [
            {"role": "user", "content": mark},
            {"role": "assistant", "content": "Looking.", "tool_calls": [earlier]},
            {"role": "tool", "tool_call_id": "call_0", "content": "3C, snow"},
            {"role": "user", "content": "And Paris, and the time?"},
        ],
        "tools": [
            {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
            {
                "type": "function",
                "function": {
                    "name": "get_time",
                    "description": "The time now",
                    "parameters": TIME_TOOL,
                },
            },
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
    }
    if stream:
        with client(cluster).chat.completions.stream(**asked) as events:
            for _ in events:
                pass
            completion = events.get_final_completion()
    else:
        completion = client(cluster).chat.completions.create(**asked)
    choice = completion.choices[0]
    calls = [
        (c.id, c.function.name, json.loads(c.function.arguments))
        for c in choice.message.tool_calls or []
        if c.type == "function"
    ]
    return choice.message.content or "", calls, choice.finish_reason


@pytest.mark.parametrize("stream", [True, False])
def test_tool_calls_and_the_conversation_sent(cluster: Cluster, stream: bool) -> None:
    mark = marker("tools")
    text, calls, finish = ask_with_tools(cluster, mark, stream)
    assert (text, calls, finish) == (mock.RESPONSES_TOOLS_TEXT, CALLS, "tool_calls")
    assert received(cluster, mark).body == {
        "model": "responses-tools",
        "input": [
            user(mark),
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Looking."}],
            },
            {
                "type": "function_call",
                "call_id": "call_0",
                "name": "get_weather",
                "arguments": '{"city": "Oslo"}',
            },
            {"type": "function_call_output", "call_id": "call_0", "output": "3C, snow"},
            user("And Paris, and the time?"),
        ],
        "stream": True,
        "store": False,
        "tools": [
            {
                "type": "function",
                "name": "get_weather",
                "parameters": WEATHER_SCHEMA,
                "strict": False,
            },
            {
                "type": "function",
                "name": "get_time",
                "description": "The time now",
                "parameters": TIME_TOOL,
                "strict": False,
            },
        ],
        "tool_choice": "auto",
        "parallel_tool_calls": True,
    }


# --- reasoning -------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False])
def test_reasoning_summary_reaches_the_client(cluster: Cluster, stream: bool) -> None:
    mark = marker("reason")
    asked: dict[str, Any] = {
        "model": "up-responses-reasoning",
        "messages": [{"role": "user", "content": mark}],
        "reasoning_effort": "high",
    }
    if stream:
        chunks = list(
            client(cluster).chat.completions.create(
                **asked, stream=True, stream_options={"include_usage": True}
            )
        )
        reasoning = "".join(
            reasoning_of(c.choices[0].delta.model_extra) for c in chunks if c.choices
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        usage = chunks[-1].usage
    else:
        completion = client(cluster).chat.completions.create(**asked)
        reasoning = reasoning_of(completion.choices[0].message.model_extra)
        text = completion.choices[0].message.content or ""
        usage = completion.usage
    assert (reasoning, text) == (SUMMARY, ANSWER)
    assert usage is not None and usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == USAGE["reasoning"]
    body = received(cluster, mark).body
    assert body["reasoning"] == {"effort": "high", "summary": "auto"}
    assert body["input"] == [user(mark)]


# --- how it ends -----------------------------------------------------------------------------


def test_an_incomplete_response_finishes_with_length(cluster: Cluster) -> None:
    completion = client(cluster).chat.completions.create(
        model="up-responses-incomplete", messages=[{"role": "user", "content": marker("cut")}]
    )
    assert completion.choices[0].message.content == "Cut short"
    assert completion.choices[0].finish_reason == "length"


@pytest.mark.parametrize(
    ("model", "says"),
    [
        ("up-responses-failed", "the responses model is overloaded"),
        ("up-responses-error", "the responses model is overloaded"),
        ("up-responses-no-terminal", "ended before a finish reason"),
    ],
)
def test_failures_reach_the_client(cluster: Cluster, model: str, says: str) -> None:
    sdk = client(cluster)
    with pytest.raises(openai.APIError) as streamed:
        list(
            sdk.chat.completions.create(
                model=model, messages=[{"role": "user", "content": marker("fail")}], stream=True
            )
        )
    assert says in str(streamed.value)
    with pytest.raises(openai.InternalServerError) as whole:
        sdk.chat.completions.create(
            model=model, messages=[{"role": "user", "content": marker("fail")}]
        )
    assert whole.value.status_code == 502
    assert says in str(whole.value)
