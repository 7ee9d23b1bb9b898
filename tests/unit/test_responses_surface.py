"""The Responses surface's translation: input items to canonical messages and back, the
request's fields to the canonical request, and the event renderer's numbering and items."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from api.formats.openai_responses import (
    OpenAIResponsesFormat,
    ResponsesRenderer,
    terminal_status,
)
from api.response_items import answer, to_items, to_messages
from api.routes.openai_responses import ResponsesRequest, to_canonical
from shared import events as ev
from shared.errors import InvalidRequest
from shared.request import Message
from shared.store import Status
from shared.transcript import Transcript

PNG = "data:image/png;base64,iVBORw0KGgo="
RENDER: dict[str, Any] = {"id": "resp_abc", "created_at": 1, "model": "m", "echo": {}}


def _body(**fields: Any) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "demo", "input": "hi", **fields})


# -- input items -----------------------------------------------------------------------------


def test_a_string_input_is_one_user_turn_after_the_instructions() -> None:
    messages = to_messages("hello", "be brief")
    assert [(m.role, m.content) for m in messages] == [("system", "be brief"), ("user", "hello")]


def test_items_become_turns_with_calls_results_and_reasoning() -> None:
    items = [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look"},
            {"type": "input_image", "image_url": PNG, "detail": "low"},
        ]},
        {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hm"}],
         "encrypted_content": "sig"},
        {"role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": '{"a":1}'},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": "two"},
    ]  # fmt: skip
    messages = to_messages(items, None)
    assert [m.role for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    user = messages[1]
    assert user.content == "look"
    assert user.parts is not None and user.parts[1].type == "image"
    assert user.parts[1].media_type == "image/png" and user.parts[1].detail == "low"
    assistant = messages[2]
    assert assistant.content == "calling"
    assert [(c.id, c.name, c.arguments) for c in assistant.tool_calls or []] == [
        ("c1", "f", '{"a":1}'),
        ("c2", "g", "{}"),
    ]
    assert assistant.thinking is not None
    assert (assistant.thinking[0].text, assistant.thinking[0].signature) == ("hm", "sig")
    assert [(m.tool_call_id, m.name, m.content) for m in messages[3:]] == [
        ("c1", "f", "one"),
        ("c2", "g", "two"),
    ]


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ({"type": "web_search_call", "id": "x"}, "'web_search_call' are not supported"),
        ({"type": "item_reference", "id": "x"}, "'item_reference' are not supported"),
        ({"role": "tool", "content": "x"}, "role must be one of"),
        ({"role": "user", "content": [{"type": "output_text", "text": "x"}]}, "cannot carry"),
        ({"role": "assistant", "content": [{"type": "input_image", "image_url": PNG}]}, "cannot"),
        ({"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}, "file ids"),
        ({"role": "user", "content": [{"type": "input_video"}]}, "'input_video' are not"),
        ({"role": "user", "content": 5}, "must be a string or a list"),
        ({"type": "function_call", "call_id": "c", "name": 3}, "name must be a string"),
        (7, "must be an object"),
        ({"content": "x"}, "needs a type"),
    ],
)
def test_items_spool_cannot_carry_are_named(item: Any, says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_messages([item], None)
    assert says in caught.value.message
    assert "input[0]" in caught.value.message


def test_listed_items_give_back_what_was_sent() -> None:
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_image", "image_url": PNG, "detail": "auto"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "done"},
    ]  # fmt: skip
    listed = to_items(to_messages(items, None), "s1")
    assert [i["id"] for i in listed] == ["msg_s1_in0", "fc_s1_in1", "fco_s1_in2"]
    assert listed[0]["content"] == [
        {"type": "input_text", "text": "look"},
        {"type": "input_image", "image_url": PNG, "detail": "auto"},
    ]
    assert (listed[1]["call_id"], listed[1]["name"]) == ("c1", "f")
    assert (listed[2]["call_id"], listed[2]["output"]) == ("c1", "done")
    # What is listed can be sent again as input and means the same.
    again = [{k: v for k, v in i.items() if k not in ("id", "status")} for i in listed]
    assert to_messages(again, None) == to_messages(items, None)


def test_an_answer_continues_with_its_calls_and_only_signed_reasoning() -> None:
    transcript = Transcript()
    for event in [
        ev.ReasoningDelta(text="think"),
        ev.TextDelta(text="ok"),
        ev.ToolCallDelta(index=0, id="c", name="f"),
    ]:
        transcript.apply(event)
    [reply] = answer(transcript)
    assert reply.thinking is None
    assert reply.content == "ok" and reply.tool_calls is not None
    assert reply.tool_calls[0].arguments == "{}"
    transcript.apply(ev.ReasoningDelta(text="", signature="sig"))
    [signed] = answer(transcript)
    assert signed.thinking is not None
    assert signed.thinking[0].signature == "sig"
    assert answer(Transcript()) == []


def test_an_answer_keeps_the_workers_tool_steps_with_their_results() -> None:
    transcript = Transcript()
    for event in [
        ev.ToolCallDelta(index=0, id="m1", name="add", arguments='{"a":1}', server="calc"),
        ev.ToolResult(index=0, id="m1", name="add", server="calc", arguments='{"a":1}', output="1"),
        ev.TextDelta(text="one"),
        ev.ToolCallDelta(index=1, id="c1", name="mine"),
    ]:
        transcript.apply(event)
    calls, result, reply = answer(transcript)
    assert [(c.id, c.name) for c in calls.tool_calls or []] == [("m1", "add")]
    assert (result.role, result.tool_call_id, result.content) == ("tool", "m1", "1")
    assert reply.content == "one"
    assert [c.id for c in reply.tool_calls or []] == ["c1"]


# -- request fields --------------------------------------------------------------------------


def test_request_fields_become_the_canonical_request() -> None:
    body = _body(
        instructions="sys",
        max_output_tokens=50,
        temperature=0.5,
        top_p=0.9,
        tools=[{"type": "function", "name": "f", "description": "d", "parameters": {
            "type": "object", "properties": {"x": {"type": "string"}}}}],
        tool_choice={"type": "function", "name": "f"},
        parallel_tool_calls=False,
        reasoning={"effort": "high", "summary": "auto"},
        text={"format": {"type": "json_schema", "name": "out", "schema": {"type": "object"},
                         "strict": True}, "verbosity": "low"},
        include=["message.output_text.logprobs"],
        top_logprobs=3,
        metadata={"k": "v"},
        truncation="auto",
    )  # fmt: skip
    request = to_canonical(body, [Message(role="user", content="before")])
    assert [m.content for m in request.messages] == ["sys", "before", "hi"]
    assert request.max_tokens == 50 and request.temperature == 0.5 and request.top_p == 0.9
    assert request.tools[0].name == "f" and request.tool_choice == "f"
    assert request.parallel_tool_calls is False
    assert request.reasoning and request.reasoning_effort == "high"
    assert request.response_format is not None and request.response_format.strict is True
    assert request.response_format.name == "out"
    assert request.logprobs is True and request.top_logprobs == 3
    assert request.metadata == {"k": "v"}
    assert request.protocol == "responses"
    assert request.extra == {"truncation": "auto", "text": {"verbosity": "low"}}


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"tools": [{"type": "web_search"}]}, "'web_search' tool is not supported"),
        ({"tools": [{"type": "function", "name": ""}]}, "tools[0].name"),
        ({"tool_choice": {"type": "file_search"}}, "'file_search' is not supported"),
        ({"tool_choice": {"type": "function"}}, "tool_choice.name"),
        ({"include": ["file_search_call.results"]}, "file_search_call.results"),
        ({"text": {"format": {"type": "json_schema"}}}, "needs its name and schema"),
    ],
)
def test_fields_spool_cannot_honour_are_named(fields: dict[str, Any], says: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        to_canonical(_body(**fields), [])
    assert says in caught.value.message


# -- rendering -------------------------------------------------------------------------------


def _events(frames: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(f.data) for f in frames]


def _render(events: list[ev.Event], render: dict[str, Any] = RENDER) -> list[dict[str, Any]]:
    renderer = ResponsesRenderer(render)
    frames = [f for i, e in enumerate(events) for f in renderer.frames(f"{1000 * (i + 1)}-0", e)]
    for frame in frames:
        assert frame.id == str(orjson.loads(frame.data)["sequence_number"])
        assert frame.event == orjson.loads(frame.data)["type"]
    opening = OpenAIResponsesFormat().opening(render)
    return _events(opening) + _events(frames)


def test_a_stream_numbers_every_event_and_closes_every_item() -> None:
    out = _render(
        [
            ev.Start(model="m", provider="demo"),
            ev.ReasoningDelta(text="th"),
            ev.ReasoningDelta(text="ink"),
            ev.TextDelta(text="Hel"),
            ev.TextDelta(text="lo"),
            ev.ToolCallDelta(index=0, id="c1", name="f", arguments='{"a"'),
            ev.ToolCallDelta(index=0, arguments=":1}"),
            ev.Finish(reason="tool_calls", usage=ev.Usage(input_tokens=3, output_tokens=4)),
        ]
    )
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert [e["type"] for e in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    done = [e["item"] for e in out if e["type"] == "response.output_item.done"]
    assert [i["id"] for i in done] == ["rs_abc_0", "msg_abc_1", "fc_abc_2"]
    assert done[0]["summary"] == [{"type": "summary_text", "text": "think"}]
    assert done[1]["content"][0]["text"] == "Hello"
    assert (done[2]["call_id"], done[2]["arguments"]) == ("c1", '{"a":1}')
    completed = out[-1]["response"]
    assert completed["status"] == "completed" and completed["output"] == done
    assert completed["usage"]["total_tokens"] == 7
    assert completed["completed_at"] == 8  # the finish entry's time, in seconds


@pytest.mark.parametrize(
    ("reason", "status", "why"),
    [("length", "incomplete", "max_output_tokens"), ("content_filter", "incomplete",
     "content_filter"), ("cancelled", "cancelled", None)],
)  # fmt: skip
def test_a_cut_response_ends_incomplete(reason: Any, status: str, why: str | None) -> None:
    out = _render(
        [ev.Start(model="m", provider="demo"), ev.TextDelta(text="a"), ev.Finish(reason=reason)]
    )
    assert out[-1]["type"] == "response.incomplete"
    assert out[-1]["response"]["status"] == status
    assert out[-2]["item"]["status"] == "incomplete"
    details = out[-1]["response"]["incomplete_details"]
    assert details == ({"reason": why} if why else None)


def test_a_failure_ends_failed_with_its_error_after_closing_the_open_item() -> None:
    out = _render(
        [
            ev.Start(model="m", provider="demo"),
            ev.TextDelta(text="a"),
            ev.Error(code="worker_lost", message="gone"),
        ]
    )
    assert [e["type"] for e in out[-3:]] == [
        "response.content_part.done",
        "response.output_item.done",
        "response.failed",
    ]
    assert out[-1]["response"]["error"] == {"code": "worker_lost", "message": "gone"}
    # The message the failure cut short is incomplete, in the stream and in its response.
    assert out[-2]["item"]["status"] == "incomplete"
    assert out[-1]["response"]["output"][0]["status"] == "incomplete"


def test_background_streams_open_queued_and_signed_reasoning_is_encrypted_content() -> None:
    render = {**RENDER, "background": True, "encrypted_reasoning": True}
    out = _render(
        [
            ev.Start(model="m", provider="anthropic"),
            ev.ReasoningDelta(text="t"),
            ev.ReasoningDelta(text="", signature="sig"),
            ev.Finish(reason="stop"),
        ],
        render,
    )
    assert [e["type"] for e in out[:3]] == [
        "response.created",
        "response.queued",
        "response.in_progress",
    ]
    assert out[0]["response"]["status"] == "queued"
    assert out[-1]["response"]["output"][0]["encrypted_content"] == "sig"


def test_the_response_object_follows_the_job() -> None:
    done = Transcript()
    for e in [ev.TextDelta(text="x"), ev.Finish(reason="length")]:
        done.apply(e)
    assert terminal_status(Status.QUEUED, Transcript()) == ("queued", None)
    assert terminal_status(Status.RUNNING, Transcript()) == ("in_progress", None)
    assert terminal_status(Status.COMPLETED, done) == ("incomplete", "max_output_tokens")
    assert terminal_status(Status.CANCELLED, done) == ("cancelled", None)
    assert terminal_status(Status.FAILED, Transcript()) == ("failed", None)
