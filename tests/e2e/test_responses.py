"""OpenAI's Responses API on Spool, driven through the official `openai` SDK on every provider:
plain and streamed creates (events in the API's order, numbered 0, 1, 2, …), background mode
with polling and resume after every sequence number on the other replica, cancel, function
tools round-tripped through `previous_response_id`, conversation chains, structured output,
input items, delete, and the errors (raw HTTP only where the SDK cannot say it)."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import openai
import orjson
import pytest

from shared.sse import SSEDecoder
from tests import mock_anthropic, mock_gemini
from tests import mock_upstream as mock
from tests.conftest import Cluster
from tests.e2e.surfaces import WEATHER_SCHEMA
from tests.media import Weather

pytestmark = pytest.mark.e2e

PROVIDERS = ("demo", "openai", "anthropic", "gemini", "responses")
MOCKS = PROVIDERS[1:]
# The model each provider answers with, by what it is asked to do.
MODELS: dict[str, dict[str, str]] = {
    "demo": {"text": "demo-fast", "tools": "demo", "json": "demo-fast"},
    **{p: {kind: f"up-{p}-{kind}" for kind in ("text", "tools", "json")} for p in MOCKS},
}
# What each mock's text model answers, and the usage it reports (input, output).
TEXT = {
    "openai": "".join(mock.INSTANT_TEXT),
    "anthropic": mock_anthropic.TEXT,
    "gemini": mock_gemini.TEXT,
    "responses": "".join(mock.RESPONSES_TEXT),
}
USAGE = {
    "openai": (3, len(mock.INSTANT_TEXT)),
    "anthropic": (mock_anthropic.INPUT_TOKENS, mock_anthropic.OUTPUT_TOKENS),
    "gemini": (
        mock_gemini.TEXT_USAGE["promptTokenCount"],
        mock_gemini.TEXT_USAGE["candidatesTokenCount"],
    ),
    "responses": (mock.RESPONSES_USAGE["input_tokens"], mock.RESPONSES_USAGE["output_tokens"]),
}
# The calls each mock's tools model makes: (name, arguments).
CALLS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "openai": [(mock.TOOL_CALL[0], json.loads(mock.TOOL_CALL[1]))],
    "anthropic": [(mock_anthropic.TOOL_NAME, json.loads("".join(mock_anthropic.TOOL_JSON_PIECES)))],
    "gemini": list(mock_gemini.TOOL_CALLS),
    "responses": [(name, json.loads("".join(p))) for _, name, p in mock.RESPONSES_CALLS],
}
TOOLS: list[Any] = [
    {"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA},
    {
        "type": "function",
        "name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}},
    },
]
WEATHER = Weather(city="Paris", temperature=21.5, conditions="sunny")
ENDED = ("completed", "failed", "cancelled", "incomplete")


def sdk(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="spool", max_retries=0, timeout=30)


def marker(what: str) -> str:
    return f"{what} {uuid.uuid4().hex}"


def received(cluster: Cluster, mark: str) -> dict[str, Any]:
    """The one body an upstream mock received that carries `mark`."""
    bodies = [s.body for s in cluster.upstream.seen if mark in orjson.dumps(s.body).decode()]
    assert len(bodies) == 1, f"{len(bodies)} upstream requests carry {mark!r}"
    return bodies[0]


def matches(value: Any, pattern: Any) -> bool:
    """Whether `value` has everything `pattern` has (dicts may have more keys)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and matches(value[k], v) for k, v in pattern.items()
        )
    return bool(value == pattern)


def find(value: Any, pattern: Any) -> list[Any]:
    """Every dict inside `value` that matches `pattern`."""
    found = [value] if matches(value, pattern) else []
    children = value.values() if isinstance(value, dict) else value
    if isinstance(value, dict | list):
        for child in children:
            found += find(child, pattern)
    return found


def dumps(events: Any) -> list[dict[str, Any]]:
    return [e.model_dump() for e in events]


def wait_done(client: openai.OpenAI, response_id: str, timeout_s: float = 15) -> Any:
    """Poll `retrieve` until the response has ended."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = client.responses.retrieve(response_id)
        if response.status in ENDED:
            return response
        assert time.monotonic() < deadline, f"{response_id} still {response.status}"
        time.sleep(0.05)


# -- the order of a stream's events ----------------------------------------------------------


class Events:
    """A stream's events (as dicts), taken in the order the Responses API sends them."""

    def __init__(self, events: list[dict[str, Any]]) -> None:
        self.events = events
        self.at = 0

    def peek(self) -> str | None:
        return self.events[self.at]["type"] if self.at < len(self.events) else None

    def take(self, kind: str) -> dict[str, Any]:
        assert self.peek() == kind, f"event {self.at} is {self.peek()}, expected {kind}"
        self.at += 1
        return self.events[self.at - 1]

    def take_all(self, kind: str) -> list[dict[str, Any]]:
        out = []
        while self.peek() == kind:
            out.append(self.take(kind))
        return out


def check_message(events: Events) -> list[dict[str, Any]]:
    group = [events.take("response.content_part.added")]
    deltas = events.take_all("response.output_text.delta")
    text = "".join(d["delta"] for d in deltas)
    done = events.take("response.output_text.done")
    part = events.take("response.content_part.done")
    assert done["text"] == text and part["part"]["text"] == text
    return [*group, *deltas, done, part]


def check_call(events: Events) -> list[dict[str, Any]]:
    deltas = events.take_all("response.function_call_arguments.delta")
    done = events.take("response.function_call_arguments.done")
    assert done["arguments"] == ("".join(d["delta"] for d in deltas) or "{}")
    json.loads(done["arguments"])
    return [*deltas, done]


def check_reasoning(events: Events) -> list[dict[str, Any]]:
    added = events.take("response.reasoning_summary_part.added")
    deltas = events.take_all("response.reasoning_summary_text.delta")
    done = events.take("response.reasoning_summary_text.done")
    assert done["text"] == "".join(d["delta"] for d in deltas)
    return [added, *deltas, done, events.take("response.reasoning_summary_part.done")]


def check_item(events: Events, index: int) -> dict[str, Any]:
    """One output item: added, filled, closed; every event of it names it."""
    added = events.take("response.output_item.added")
    item = added["item"]
    checks = {"message": check_message, "function_call": check_call, "reasoning": check_reasoning}
    group = checks[item["type"]](events)
    done = events.take("response.output_item.done")
    for event in [added, *group, done]:
        assert event["output_index"] == index
        assert event.get("item_id", item["id"]) == item["id"]
    assert done["item"]["id"] == item["id"] and done["item"]["type"] == item["type"]
    return dict(done["item"])


def check_stream(
    events: list[dict[str, Any]], *, background: bool = False, end: str = "response.completed"
) -> dict[str, Any]:
    """Assert a whole stream is in order and numbered 0, 1, 2, …; its final response."""
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    stream = Events(events)
    created = stream.take("response.created")["response"]
    assert created["status"] == ("queued" if background else "in_progress")
    if background:
        assert stream.take("response.queued")["response"]["status"] == "queued"
    stream.take("response.in_progress")
    items: list[dict[str, Any]] = []
    while stream.peek() == "response.output_item.added":
        items.append(check_item(stream, len(items)))
    # An item closes complete when the next one opens; the last one closes with the
    # response, incomplete when the response ended short.
    statuses = ["completed"] * len(items)
    if items and end != "response.completed":
        statuses[-1] = "incomplete"
    assert [item["status"] for item in items] == statuses
    final = stream.take(end)["response"]
    assert stream.at == len(events), f"{events[stream.at]['type']} after {end}"
    assert {e["response"]["id"] for e in events if "response" in e} == {created["id"]}
    assert final["output"] == items
    return dict(final)


def deltas(events: list[dict[str, Any]]) -> str:
    return "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")


# -- create, plain and streamed --------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_create(cluster: Cluster, provider: str) -> None:
    response = sdk(cluster.url).responses.create(
        model=MODELS[provider]["text"], input=marker("hello")
    )
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.status == "completed" and response.model == MODELS[provider]["text"]
    assert response.output_text == TEXT.get(provider, response.output_text) != ""
    assert [o.type for o in response.output] == ["message"]
    usage = response.usage
    assert usage is not None and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    if provider in USAGE:
        assert (usage.input_tokens, usage.output_tokens) == USAGE[provider]
    assert sdk(cluster.other_url).responses.retrieve(response.id).model_dump() == (
        response.model_dump()
    )


@pytest.mark.parametrize("kind", ["text", "tools"])
@pytest.mark.parametrize("provider", PROVIDERS)
def test_create_streamed(cluster: Cluster, provider: str, kind: str) -> None:
    client = sdk(cluster.url)
    tools = TOOLS if kind == "tools" else []
    events = dumps(
        client.responses.create(
            model=MODELS[provider][kind], input=marker("weather?"), tools=tools, stream=True
        )
    )
    final = check_stream(events)
    assert final["status"] == "completed" and final["usage"]["output_tokens"] > 0
    text = deltas(events)
    assert text == "".join(
        part["text"] for item in final["output"] if item["type"] == "message"
        for part in item["content"]
    )  # fmt: skip
    if kind == "text":
        assert text == TEXT.get(provider, text) != ""
    else:
        calls = [o for o in final["output"] if o["type"] == "function_call"]
        assert calls and all(c["call_id"] and json.loads(c["arguments"]) for c in calls)
        if provider in CALLS:
            assert [(c["name"], json.loads(c["arguments"])) for c in calls] == CALLS[provider]
    # The stored response is what the stream ended with, from either replica.
    stored = sdk(cluster.other_url).responses.retrieve(final["id"]).model_dump()
    assert stored == final


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_helper(cluster: Cluster, provider: str) -> None:
    with sdk(cluster.url).responses.stream(
        model=MODELS[provider]["text"], input=marker("typed")
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    text_deltas = [
        e for e in events if isinstance(e, openai.types.responses.ResponseTextDeltaEvent)
    ]
    assert text_deltas, [e.type for e in events]
    assert text_deltas[-1].snapshot == final.output_text
    assert "".join(e.delta for e in text_deltas) == final.output_text
    assert final.output_text == TEXT.get(provider, final.output_text) != ""
    assert isinstance(events[0], openai.types.responses.ResponseCreatedEvent)
    assert isinstance(events[-1], openai.types.responses.ResponseCompletedEvent)
    assert final.status == "completed" and final.usage is not None


def test_alias_route_and_max_output_tokens(cluster: Cluster) -> None:
    alias = openai.OpenAI(base_url=f"{cluster.url}/openai/v1", api_key="spool", max_retries=0)
    response = alias.responses.create(model="demo-fast", input="cut me", max_output_tokens=3)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    events = dumps(alias.responses.retrieve(response.id, stream=True))
    final = check_stream(events, end="response.incomplete")
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}


@pytest.mark.parametrize(
    "model",
    ["mock-midstream-error", "up-anthropic-overloaded", "up-gemini-error-midstream",
     "up-responses-failed", "up-responses-error"],
)  # fmt: skip
def test_failure_after_start_ends_with_response_failed(cluster: Cluster, model: str) -> None:
    events = dumps(sdk(cluster.url).responses.create(model=model, input="x", stream=True))
    final = check_stream(events, end="response.failed")
    assert final["status"] == "failed"
    assert final["error"]["code"] and "overloaded" in final["error"]["message"].lower()
    stored = sdk(cluster.other_url).responses.retrieve(final["id"])
    assert stored.status == "failed" and stored.error is not None
    assert stored.error.message == final["error"]["message"]


# What each provider's thinking model thinks and answers (the demo's own words vary).
REASONING = {
    "demo": ("demo-fast", None, None),
    "anthropic": (
        "up-anthropic-thinking",
        "".join(mock_anthropic.THINKING_PIECES),
        mock_anthropic.THINKING_ANSWER,
    ),
    "gemini": ("up-gemini-thinking", mock_gemini.THOUGHT, mock_gemini.THINKING_ANSWER),
    "responses": (
        "up-responses-reasoning",
        "\n\n".join("".join(part) for part in mock.RESPONSES_SUMMARY),
        "".join(mock.RESPONSES_ANSWER),
    ),
}


@pytest.mark.parametrize("provider", sorted(REASONING))
def test_reasoning_streams_as_a_summary_item(cluster: Cluster, provider: str) -> None:
    model, thought, answer = REASONING[provider]
    events = dumps(
        sdk(cluster.url).responses.create(
            model=model,
            input=marker("think"),
            reasoning={"effort": "high", "summary": "auto"},
            include=["reasoning.encrypted_content"],
            stream=True,
        )
    )
    final = check_stream(events)
    reasoning, message = final["output"]
    assert reasoning["type"] == "reasoning" and message["type"] == "message"
    summary = "".join(s["text"] for s in reasoning["summary"])
    assert summary == (thought or summary) != ""
    assert message["content"][0]["text"] == (answer or deltas(events)) == deltas(events)
    if provider == "anthropic":  # a signed thinking block comes back to be sent again
        assert reasoning["encrypted_content"] == mock_anthropic.SIGNATURE


# -- background mode, polling and resume -----------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_background_poll_and_resume_after_every_event(cluster: Cluster, provider: str) -> None:
    created = sdk(cluster.url).responses.create(
        model=MODELS[provider]["text"], input=marker("background"), background=True
    )
    assert created.status == "queued" and created.background is True
    other = sdk(cluster.other_url)
    done = wait_done(other, created.id)
    assert done.status == "completed" and done.output_text == TEXT.get(provider, done.output_text)
    full = dumps(other.responses.retrieve(created.id, stream=True))
    final = check_stream(full, background=True)
    assert final["output"] == done.model_dump()["output"]
    assert deltas(full) == done.output_text != ""
    for n in range(len(full)):
        rest = dumps(other.responses.retrieve(created.id, stream=True, starting_after=n))
        assert rest == full[n + 1 :], f"resume after {n} of {len(full)}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_stream_helper_resumes_a_response(cluster: Cluster, provider: str) -> None:
    created = sdk(cluster.url).responses.create(
        model=MODELS[provider]["text"], input=marker("helper"), background=True
    )
    other = sdk(cluster.other_url)
    done = wait_done(other, created.id)
    full = dumps(other.responses.retrieve(created.id, stream=True))
    for n in range(len(full)):
        with other.responses.stream(response_id=created.id, starting_after=n) as stream:
            got = [(e.type, e.sequence_number) for e in stream]
            final = stream.get_final_response()
        assert got == [(e["type"], e["sequence_number"]) for e in full[n + 1 :]]
        assert final.id == created.id and final.output_text == done.output_text


def test_background_stream_opens_with_created_then_queued(cluster: Cluster) -> None:
    events = dumps(
        sdk(cluster.url).responses.create(
            model="demo-fast", input="background stream", background=True, stream=True
        )
    )
    final = check_stream(events, background=True)
    assert [e["type"] for e in events[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert final["background"] is True
    assert dumps(sdk(cluster.other_url).responses.retrieve(final["id"], stream=True)) == events


def test_cancel_running_background_response(cluster: Cluster) -> None:
    client, other = sdk(cluster.url), sdk(cluster.other_url)
    created = client.responses.create(model="demo-slow", input="take your time", background=True)
    deadline = time.monotonic() + 10
    while not client.responses.retrieve(created.id).output_text:
        assert time.monotonic() < deadline, "demo-slow never started"
        time.sleep(0.05)
    cancelled = other.responses.cancel(created.id)
    assert cancelled.id == created.id and cancelled.status == "cancelled"
    assert 0 < len(cancelled.output_text.split()) < 400, "cancel stopped the tokens"
    again = client.responses.cancel(created.id)
    assert again.model_dump() == cancelled.model_dump()
    assert client.responses.retrieve(created.id).model_dump() == cancelled.model_dump()
    events = dumps(other.responses.retrieve(created.id, stream=True))
    final = check_stream(events, background=True, end="response.incomplete")
    assert final["status"] == "cancelled"
    assert deltas(events) == cancelled.output_text


def test_resume_while_running_then_cancel(cluster: Cluster) -> None:
    """A reader that resumes on the other replica in the middle of a running response
    gets the rest as it is written, up to the cancel."""
    client, other = sdk(cluster.url), sdk(cluster.other_url)
    created = client.responses.create(model="demo-slow", input="resume me live", background=True)
    first = []
    with client.responses.retrieve(created.id, stream=True) as stream:
        for event in stream:
            first.append(event.model_dump())
            if len(first) == 8:
                break
    rest = []
    with other.responses.retrieve(created.id, stream=True, starting_after=7) as stream:
        for event in stream:
            rest.append(event.model_dump())
            if len(rest) == 4:
                client.responses.cancel(created.id)
    assert rest[-1]["type"] == "response.incomplete"
    assert rest[-1]["response"]["status"] == "cancelled"
    assert first + rest == dumps(client.responses.retrieve(created.id, stream=True))


# -- function tools --------------------------------------------------------------------------


def tool_result_form(provider: str, call_id: str, name: str, output: str) -> dict[str, Any]:
    """How a provider's request carries the result of a call."""
    forms: dict[str, dict[str, Any]] = {
        "openai": {"role": "tool", "tool_call_id": call_id, "content": output},
        "anthropic": {"type": "tool_result", "tool_use_id": call_id, "content": output},
        "gemini": {"functionResponse": {"name": name, "response": {"result": output}}},
        "responses": {"type": "function_call_output", "call_id": call_id, "output": output},
    }
    return forms[provider]


def tool_call_form(provider: str, call_id: str, name: str) -> dict[str, Any]:
    """How a provider's request carries the call a model made earlier."""
    forms: dict[str, dict[str, Any]] = {
        "openai": {"id": call_id, "type": "function", "function": {"name": name}},
        "anthropic": {"type": "tool_use", "id": call_id, "name": name},
        "gemini": {"functionCall": {"name": name}},
        "responses": {"type": "function_call", "call_id": call_id, "name": name},
    }
    return forms[provider]


@pytest.mark.parametrize("provider", PROVIDERS)
def test_function_tools_round_trip(cluster: Cluster, provider: str) -> None:
    model, asked, told = MODELS[provider]["tools"], marker("weather in"), marker("sunny")
    first = sdk(cluster.url).responses.create(model=model, input=asked, tools=TOOLS)
    assert first.status == "completed"
    calls = [o for o in first.output if o.type == "function_call"]
    assert calls and len({c.call_id for c in calls}) == len(calls)
    assert all(c.call_id and isinstance(json.loads(c.arguments), dict) for c in calls)
    if provider in CALLS:
        assert [(c.name, json.loads(c.arguments)) for c in calls] == CALLS[provider]
    else:
        assert [c.name for c in calls] == ["get_weather"]
    outputs: list[Any] = [
        {"type": "function_call_output", "call_id": c.call_id, "output": f"{c.name}: {told}"}
        for c in calls
    ]
    second = sdk(cluster.other_url).responses.create(
        model=model, previous_response_id=first.id, input=outputs, tools=TOOLS
    )
    assert second.status == "completed" and second.previous_response_id == first.id
    items = sdk(cluster.url).responses.input_items.list(second.id, order="asc").data
    assert [(i.type, getattr(i, "call_id", None)) for i in items] == [
        ("function_call_output", c.call_id) for c in calls
    ]
    if provider == "demo":  # given the tool's result, the demo answers in text
        assert second.output_text and [o.type for o in second.output] == ["message"]
        return
    body = received(cluster, told)
    assert asked in orjson.dumps(body).decode(), "the first turn is in the history"
    for c in calls:
        assert find(body, tool_call_form(provider, c.call_id, c.name)), c.name
        form = tool_result_form(provider, c.call_id, c.name, f"{c.name}: {told}")
        assert find(body, form), f"{provider} got the result of {c.name}"


# -- conversations with previous_response_id -------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_three_turn_chain(cluster: Cluster, provider: str) -> None:
    model = MODELS[provider]["text"]
    turns = [marker(f"turn {n}") for n in range(3)]
    rules = [marker(f"rule {n}") for n in range(3)]
    previous: str | None = None
    answers = []
    for n in range(3):
        client = sdk(cluster.url if n % 2 == 0 else cluster.other_url)
        response = client.responses.create(
            model=model, input=turns[n], instructions=rules[n], previous_response_id=previous
        )
        assert response.status == "completed" and response.previous_response_id == previous
        assert response.instructions == rules[n]
        previous = response.id
        answers.append(response.output_text)
    if provider == "demo":
        # The demo's text is a function of the conversation: the chain's third answer is
        # the answer to the earlier turns sent whole, under the third turn's instructions.
        whole = sdk(cluster.url).responses.create(
            model=model,
            instructions=rules[2],
            input=[
                {"role": "user", "content": turns[0]},
                {"role": "assistant", "content": answers[0]},
                {"role": "user", "content": turns[1]},
                {"role": "assistant", "content": answers[1]},
                {"role": "user", "content": turns[2]},
            ],
        )
        assert whole.output_text == answers[2]
        return
    body = orjson.dumps(received(cluster, turns[2])).decode()
    at = [body.index(t) for t in turns]
    assert at == sorted(at), "the turns in order"
    assert body.count(json.dumps(answers[0], ensure_ascii=False)[1:-1]) == 2, "both answers"
    assert rules[2] in body
    assert rules[0] not in body and rules[1] not in body, "instructions do not carry over"


@pytest.mark.parametrize("kind", ["unknown", "foreign", "bare stream id"])
def test_previous_response_that_is_not_one(cluster: Cluster, kind: str) -> None:
    chat = httpx.post(
        f"{cluster.url}/v1/chat/completions",
        json={"model": "demo-fast", "messages": [{"role": "user", "content": "x"}]},
        timeout=30,
    )
    stream_id = chat.headers["x-spool-stream-id"]
    previous = {
        "unknown": "resp_" + uuid.uuid4().hex,
        "foreign": "resp_" + stream_id,  # a chat completion's stream, not a response
        "bare stream id": stream_id,
    }[kind]
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(cluster.url).responses.create(
            model="demo-fast", input="x", previous_response_id=previous
        )
    assert refused.value.status_code == 400
    error = refused.value.body
    assert isinstance(error, dict) and previous in error["message"]
    assert error["type"] == "invalid_request_error" and error["code"]
    with pytest.raises(openai.NotFoundError):
        sdk(cluster.url).responses.retrieve(previous)


# -- structured output -----------------------------------------------------------------------


@pytest.mark.parametrize("provider", PROVIDERS)
def test_parse(cluster: Cluster, provider: str) -> None:
    client = sdk(cluster.url)
    model = MODELS[provider]["json"]
    parsed = client.responses.parse(model=model, input="weather in Paris", text_format=Weather)
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Weather)
    with client.responses.stream(model=model, input="weather?", text_format=Weather) as stream:
        streamed = stream.get_final_response().output_parsed
    assert isinstance(streamed, Weather)
    if provider != "demo":
        assert parsed.output_parsed == streamed == WEATHER


# -- input items -----------------------------------------------------------------------------

CONVERSATION: list[Any] = [
    {"role": "user", "content": "one"},
    {"role": "assistant", "content": "two"},
    {"type": "function_call", "call_id": "call_3", "name": "get_time", "arguments": "{}"},
    {"type": "function_call_output", "call_id": "call_3", "output": "four"},
    {"role": "user", "content": [{"type": "input_text", "text": "five"}]},
]


def describe(item: Any) -> tuple[str, str]:
    """An input item as (type, what it says)."""
    if item.type == "message":
        return "message", f"{item.role}: " + "".join(p.text for p in item.content)
    if item.type == "function_call":
        return "function_call", f"{item.call_id} {item.name}"
    return item.type, f"{item.call_id} {item.output}"


EXPECTED_ITEMS = [
    ("message", "user: one"),
    ("message", "assistant: two"),
    ("function_call", "call_3 get_time"),
    ("function_call_output", "call_3 four"),
    ("message", "user: five"),
]


def test_input_items(cluster: Cluster) -> None:
    client = sdk(cluster.url)
    response = client.responses.create(
        model="demo-fast", instructions="not an item", input=CONVERSATION
    )
    other = sdk(cluster.other_url)
    desc = other.responses.input_items.list(response.id)
    asc = other.responses.input_items.list(response.id, order="asc")
    assert [describe(i) for i in asc.data] == EXPECTED_ITEMS
    assert [i.id for i in desc.data] == [i.id for i in reversed(asc.data)], "desc by default"
    ids = [i.id for i in asc.data]
    assert all(ids) and len(set(ids)) == len(ids)
    listed = asc.model_dump()
    assert (listed["first_id"], listed["last_id"], asc.has_more) == (ids[0], ids[-1], False)
    page = other.responses.input_items.list(response.id, order="asc", limit=2)
    assert [i.id for i in page.data] == ids[:2] and page.has_more
    after = other.responses.input_items.list(response.id, order="asc", limit=2, after=ids[1])
    assert [i.id for i in after.data] == ids[2:4] and after.has_more
    last = other.responses.input_items.list(response.id, order="asc", limit=2, after=ids[3])
    assert [i.id for i in last.data] == ids[4:] and not last.has_more
    paged = list(other.responses.input_items.list(response.id, limit=2))  # every page
    assert [i.id for i in paged] == ids[::-1]


def test_input_items_of_a_follow_up_are_its_own(cluster: Cluster) -> None:
    client = sdk(cluster.url)
    first = client.responses.create(model="demo-fast", input=CONVERSATION)
    second = client.responses.create(model="demo-fast", input="six", previous_response_id=first.id)
    items = client.responses.input_items.list(second.id).data
    assert [describe(i) for i in items] == [("message", "user: six")]


def test_item_ids_are_unique_across_input_and_output(cluster: Cluster) -> None:
    client = sdk(cluster.url)
    response = client.responses.create(model="demo-fast", input=CONVERSATION)
    inputs = {i.id for i in client.responses.input_items.list(response.id, limit=100).data}
    outputs = {o.id for o in response.output if o.id}
    assert not inputs & outputs, f"items share ids: {sorted(inputs & outputs)}"


# -- delete ----------------------------------------------------------------------------------


def test_delete(cluster: Cluster) -> None:
    client = sdk(cluster.url)
    response = client.responses.create(model="demo-fast", input="forget me")
    client.responses.delete(response.id)
    other = sdk(cluster.other_url)
    with pytest.raises(openai.NotFoundError) as gone:
        other.responses.retrieve(response.id)
    assert gone.value.status_code == 404 and gone.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        other.responses.input_items.list(response.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(response.id)
    with pytest.raises(openai.BadRequestError) as refused:
        other.responses.create(model="demo-fast", input="x", previous_response_id=response.id)
    assert "not found" in refused.value.message


def test_delete_answers_the_deleted_object(cluster: Cluster) -> None:
    response = sdk(cluster.url).responses.create(model="demo-fast", input="forget me too")
    deleted = httpx.delete(f"{cluster.other_url}/v1/responses/{response.id}", timeout=30)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": response.id, "object": "response", "deleted": True}


# -- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", ["web_search", "file_search", "code_interpreter"])
def test_hosted_tools_are_refused_by_name(cluster: Cluster, tool: str) -> None:
    hosted: Any = {"type": tool}
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(cluster.url).responses.create(model="demo-fast", input="x", tools=[hosted])
    assert refused.value.status_code == 400 and tool in refused.value.message
    body = refused.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"


def test_unknown_model_is_not_found(cluster: Cluster) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        sdk(cluster.url).responses.create(model="no-such-model", input="x")
    assert missing.value.status_code == 404 and missing.value.code == "model_not_found"


@pytest.mark.parametrize("value", ["beyond the end", "-1", "abc", "1.5"])
def test_invalid_starting_after(cluster: Cluster, value: str) -> None:
    response = sdk(cluster.url).responses.create(model="demo-fast", input="resume me")
    count = len(list(sdk(cluster.url).responses.retrieve(response.id, stream=True)))
    after = str(count) if value == "beyond the end" else value
    answer = httpx.get(
        f"{cluster.other_url}/v1/responses/{response.id}",
        params={"stream": "true", "starting_after": after},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]


def test_starting_after_beyond_the_end_through_the_sdk(cluster: Cluster) -> None:
    client = sdk(cluster.url)
    response = client.responses.create(model="demo-fast", input="resume me")
    count = len(list(client.responses.retrieve(response.id, stream=True)))
    with pytest.raises(openai.BadRequestError):
        client.responses.retrieve(response.id, stream=True, starting_after=count)
    assert list(client.responses.retrieve(response.id, stream=True, starting_after=count - 1)) == []


def test_unstored_response_is_not_found(cluster: Cluster) -> None:
    client = sdk(cluster.url)
    response = client.responses.create(model="demo-fast", input="ephemeral", store=False)
    assert response.status == "completed" and response.to_dict()["store"] is False
    with pytest.raises(openai.NotFoundError):
        sdk(cluster.other_url).responses.retrieve(response.id)


def test_background_needs_store(cluster: Cluster) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        sdk(cluster.url).responses.create(
            model="demo-fast", input="x", background=True, store=False
        )
    assert refused.value.status_code == 400 and "store" in refused.value.message


# -- Last-Event-ID over raw HTTP -------------------------------------------------------------


SSE = list[tuple[str | None, str | None, str]]


def read_sse(client: httpx.Client, url: str, last_event_id: str | None = None) -> SSE:
    """(event name, id, data) for every event of a GET stream."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    with client.stream("GET", url, headers=headers) as answer:
        assert answer.status_code == 200, answer.read()
        decoder = SSEDecoder()
        return [(e.event, e.id, e.data) for raw in answer.iter_raw() for e in decoder.feed(raw)]


def test_last_event_id_resume(cluster: Cluster) -> None:
    response = sdk(cluster.url).responses.create(model="demo-fast", input="last event id")
    stream_id = response.id.removeprefix("resp_")
    with httpx.Client(timeout=30) as client:
        full = read_sse(client, f"{cluster.url}/v1/streams/{stream_id}")
        sdk_replay = dumps(sdk(cluster.url).responses.retrieve(response.id, stream=True))
        assert len(full) == len(sdk_replay) > 4
        for n, (event, event_id, data) in enumerate(full):
            assert (event, event_id) == (orjson.loads(data)["type"], str(n))
            assert orjson.loads(data)["type"] == sdk_replay[n]["type"]
        assert full == read_sse(client, f"{cluster.url}/v1/responses/{response.id}?stream=true")
        urls = (
            f"{cluster.other_url}/v1/streams/{stream_id}",
            f"{cluster.other_url}/v1/responses/{response.id}?stream=true",
        )
        for k in range(1, len(full)):
            resume_id = full[k - 1][1]
            assert resume_id is not None
            for url in urls:
                assert full[:k] + read_sse(client, url, resume_id) == full, f"{url} @ {resume_id}"
        for url in urls:
            done = client.get(url, headers={"Last-Event-ID": full[-1][1] or ""})
            assert done.status_code == 204, "nothing left after the last event"
