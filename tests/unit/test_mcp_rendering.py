"""A tool loop the worker ran, as each surface shows it: the simple API's tool events
with their results, Responses `mcp_list_tools` and `mcp_call` items, Anthropic's
`mcp_tool_use` and `mcp_tool_result` blocks, OpenAI chat's `spool_tool_steps` (and never
`tool_calls`, which are the client's to run), Gemini's final text only."""

from __future__ import annotations

from typing import Any

import orjson

from api.formats import registry
from shared import events as ev
from shared.store import JobRecord, Status
from shared.transcript import Transcript

RENDERS: dict[str, dict[str, Any]] = {
    "simple": {"id": "s1", "model": "agent", "created_at": 1_700_000_000.0},
    "openai.chat": {"id": "chatcmpl-s1", "created": 1, "model": "agent", "include_usage": False},
    "anthropic.messages": {"id": "msg_s1", "model": "agent"},
    "gemini": {"id": "s1", "model": "agent"},
    "openai.responses": {"id": "resp_s1", "created_at": 1, "model": "agent", "echo": {}},
}
LISTING = [{"name": "add", "description": "Adds", "input_schema": {"type": "object"}}]
LOOP: list[ev.Event] = [
    ev.Start(model="agent", provider="demo"),
    ev.ServerTools(server="calc", tools=LISTING),
    ev.ToolCallDelta(index=0, id="call_1", name="add", arguments='{"a": 2,', server="calc"),
    ev.ToolCallDelta(index=0, arguments=' "b": 3}', server="calc"),
    ev.ToolsRunning(),
    ev.ToolResult(
        index=0, id="call_1", name="add", server="calc", arguments='{"a": 2, "b": 3}', output="5"
    ),
    ev.TextDelta(text="It is "),
    ev.TextDelta(text="5."),
    ev.Finish(reason="stop", usage=ev.Usage(input_tokens=10, output_tokens=6)),
]


def _frames(surface: str, events: list[ev.Event] = LOOP) -> list[tuple[str | None, Any]]:
    renderer = registry()[surface].renderer(RENDERS[surface])
    out = []
    for i, event in enumerate(events):
        for frame in renderer.frames(f"{1_700_000_000_000 + i}-0", event):
            data = orjson.loads(frame.data) if frame.data != b"[DONE]" else "[DONE]"
            out.append((frame.event, data))
    return out


def _record(surface: str) -> tuple[JobRecord, Transcript]:
    transcript = Transcript()
    for event in LOOP:
        transcript.apply(event)
    record = JobRecord(
        id="s1", status=Status.COMPLETED, surface=surface, model="agent", created_at=1.0,
        started_at=1.0, finished_at=2.0, request={}, render=RENDERS[surface], output=None,
        cancel_requested=False, owner="",
    )  # fmt: skip
    return record, transcript


def test_the_simple_api_sends_each_step_once_with_its_result() -> None:
    tools = [d for _, d in _frames("simple") if "tool_name" in d]
    assert tools == [
        {
            "tool_name": "add",
            "tool_input": {"a": 2, "b": 3},
            "tool_result": "5",
            "token": "",
            "done": False,
        }
    ]
    record, transcript = _record("simple")
    body = registry()["simple"].response(record, transcript)
    assert body["tool_calls"] == [{"tool_name": "add", "tool_input": {"a": 2, "b": 3},
                                   "tool_result": "5"}]  # fmt: skip
    assert body["response"] == "It is 5."


def test_openai_chat_shows_steps_beside_and_never_as_tool_calls() -> None:
    deltas = [d["choices"][0]["delta"] for _, d in _frames("openai.chat") if d != "[DONE]"]
    assert not any("tool_calls" in d for d in deltas)
    steps = [d["spool_tool_steps"] for d in deltas if "spool_tool_steps" in d]
    assert steps == [[{"id": "call_1", "server": "calc", "name": "add",
                       "arguments": '{"a": 2, "b": 3}', "output": "5", "is_error": False}]]  # fmt: skip
    record, transcript = _record("openai.chat")
    message = registry()["openai.chat"].response(record, transcript)["choices"][0]["message"]
    assert "tool_calls" not in message and message["content"] == "It is 5."
    assert message["spool_tool_steps"][0]["output"] == "5"


def test_anthropic_shows_mcp_tool_use_and_result_blocks() -> None:
    frames = _frames("anthropic.messages")
    starts = [d["content_block"] for e, d in frames if e == "content_block_start"]
    assert [b["type"] for b in starts] == ["mcp_tool_use", "mcp_tool_result", "text"]
    assert starts[0]["server_name"] == "calc" and starts[0]["name"] == "add"
    assert starts[1]["tool_use_id"] == starts[0]["id"]
    assert starts[1]["content"] == [{"type": "text", "text": "5"}]
    json_deltas = [
        d["delta"]["partial_json"]
        for e, d in frames
        if e == "content_block_delta" and d["delta"]["type"] == "input_json_delta"
    ]
    assert "".join(json_deltas) == '{"a": 2, "b": 3}'
    stops = [d["index"] for e, d in frames if e == "content_block_stop"]
    assert stops == [0, 1, 2]
    record, transcript = _record("anthropic.messages")
    content = registry()["anthropic.messages"].response(record, transcript)["content"]
    assert [b["type"] for b in content] == ["text", "mcp_tool_use", "mcp_tool_result"]
    assert content[1]["input"] == {"a": 2, "b": 3}


def test_gemini_shows_the_final_text_only() -> None:
    parts = [
        p for _, d in _frames("gemini") for c in d["candidates"] for p in c["content"]["parts"]
    ]
    assert not any("functionCall" in p for p in parts)
    assert "".join(p.get("text", "") for p in parts) == "It is 5."


def test_responses_lists_tools_and_shows_the_mcp_call_with_its_output() -> None:
    kinds = [(d["type"], d.get("output_index")) for _, d in _frames("openai.responses")]
    assert kinds[:12] == [
        ("response.in_progress", None),
        ("response.output_item.added", 0),
        ("response.mcp_list_tools.in_progress", 0),
        ("response.mcp_list_tools.completed", 0),
        ("response.output_item.done", 0),
        ("response.output_item.added", 1),
        ("response.mcp_call.in_progress", 1),
        ("response.mcp_call_arguments.delta", 1),
        ("response.mcp_call_arguments.delta", 1),
        ("response.mcp_call_arguments.done", 1),
        ("response.mcp_call.completed", 1),
        ("response.output_item.done", 1),
    ]
    completed = _frames("openai.responses")[-1][1]["response"]
    listing, call, answer = completed["output"]
    assert listing["type"] == "mcp_list_tools" and listing["tools"] == LISTING
    assert call == {
        "id": "mcp_s1_1", "type": "mcp_call", "status": "completed", "server_label": "calc",
        "name": "add", "arguments": '{"a": 2, "b": 3}', "output": "5", "error": None,
    }  # fmt: skip
    assert answer["content"][0]["text"] == "It is 5."
    record, transcript = _record("openai.responses")
    assert registry()["openai.responses"].response(record, transcript)["output"] == [
        listing,
        call,
        answer,
    ]


def test_a_failed_tool_and_a_call_cut_short_show_as_such() -> None:
    failed = ev.ToolResult(
        index=0, id="c", name="add", server="calc", arguments="{}", output="boom", is_error=True
    )
    events: list[ev.Event] = [
        ev.ToolCallDelta(index=0, id="c", name="add", server="calc"),
        failed,
        ev.ToolCallDelta(index=1, id="d", name="add", server="calc"),
        ev.Finish(reason="cancelled"),
    ]
    frames = _frames("openai.responses", events)
    types = [d["type"] for _, d in frames]
    assert "response.mcp_call.failed" in types
    output = frames[-1][1]["response"]["output"]
    assert output[0]["status"] == "failed"
    assert output[0]["error"]["content"] == [{"type": "text", "text": "boom"}]
    assert output[1]["status"] == "incomplete" and output[1]["output"] is None
    simple = [d for _, d in _frames("simple", events) if "tool_name" in d]
    assert [d["tool_result"] for d in simple] == ["boom"]
