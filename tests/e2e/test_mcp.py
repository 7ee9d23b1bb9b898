"""Server-side tools end to end: a real MCP server (tests/mcp_servers.py, over streamable
HTTP and stdio), real API and worker processes, the demo model driving the tool loop, and
the official SDKs reading each surface's own form of it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from openai import BadRequestError, OpenAI

from shared.redis.embedded import EmbeddedRedis
from tests.mcp_servers import http_server, stdio_command
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config

pytestmark = pytest.mark.e2e

DEMO = {"provider": "demo", "tokens_per_second": 0, "max_output_tokens": 12}
SETTINGS = {
    "keepalive_interval_s": 0.5,
    "lease_s": 2,
    "auth_enabled": False,
    "upstream_allowlist": "127.0.0.1",
}


@dataclass
class Agents:
    api: SpoolProcess
    worker: SpoolProcess
    redis_url: str
    config: Path

    @property
    def url(self) -> str:
        return self.api.url


def _config(path: Path, url: str) -> Path:
    servers = {
        "calc": {"url": url, "allowed_tools": ["add"]},
        "failing": {"url": url, "allowed_tools": ["fail"]},
        "napper": {"url": url, "allowed_tools": ["nap"], "timeout_s": 60},
        "files": {"command": stdio_command(), "allowed_tools": ["echo"]},
        "everything": {"url": url},
    }
    models = {
        "agent": {**DEMO, "server_tools": ["calc"]},
        "agent-stdio": {**DEMO, "server_tools": ["files"]},
        "agent-failing": {**DEMO, "server_tools": ["failing"]},
        "agent-napping": {**DEMO, "server_tools": ["napper"]},
        "agent-once": {**DEMO, "server_tools": ["calc"], "max_tool_steps": 1},
        "plain": DEMO,
    }
    return write_config(path, models, mcp_servers=servers, **SETTINGS)


@pytest.fixture(scope="module")
def mcp_url() -> Iterator[str]:
    with http_server() as url:
        yield url


@pytest.fixture(scope="module")
def agents(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis, mcp_url: str
) -> Iterator[Agents]:
    workdir = tmp_path_factory.mktemp("mcp")
    config = _config(workdir / "spool.yaml", mcp_url)
    redis_url = redis_server.url.replace("/0", "/14")  # a database no other suite uses
    worker = start_worker(redis_url, config, workdir)
    api = start_api(redis_url, config, workdir)
    wait_ready(api.url)
    agents = Agents(api, worker, redis_url, config)
    yield agents
    agents.api.stop()
    agents.worker.stop()  # the one running now (a test replaces it)


def simple_events(url: str, model: str, message: str, **headers: str) -> list[dict[str, Any]]:
    body = {"model": model, "message": message, "stream": True}
    events = []
    with httpx.stream("POST", f"{url}/api/chat", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return events


def sse_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """(id, data) of each event of an SSE response."""
    out: list[tuple[str, dict[str, Any]]] = []
    event_id, data = "", None
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
        elif not line and data is not None:
            out.append((event_id, data))
            data = None
    return out


# -- each surface shows the loop ----------------------------------------------------------


def test_the_simple_api_carries_each_tool_result(agents: Agents) -> None:
    events = simple_events(agents.url, "agent", "add two numbers")
    steps = [e for e in events if "tool_name" in e]
    assert len(steps) == 1
    step = steps[0]
    assert step["tool_name"] == "add" and step["token"] == "" and step["done"] is False
    a, b = step["tool_input"]["a"], step["tool_input"]["b"]
    assert step["tool_result"] == str(a + b)  # the MCP server's answer
    text = "".join(e.get("token", "") for e in events if "tool_name" not in e)
    assert text.startswith(f"add said: {a + b}")  # the model went on with the result
    assert events[-1]["done"] is True and events[-1]["finish_reason"] == "stop"


def test_a_stdio_server_runs_the_tool_too(agents: Agents) -> None:
    events = simple_events(agents.url, "agent-stdio", "say this back")
    step = next(e for e in events if "tool_name" in e)
    assert step["tool_name"] == "echo"
    assert step["tool_result"] == step["tool_input"]["text"]


def test_a_failing_tool_is_a_result_the_model_sees(agents: Agents) -> None:
    events = simple_events(agents.url, "agent-failing", "try it")
    step = next(e for e in events if "tool_name" in e)
    # The server's error, as it said it.
    assert step["tool_result"] == f"Error executing tool fail: {step['tool_input']['message']}"
    assert events[-1]["finish_reason"] == "stop"


def test_responses_sdk_sees_typed_mcp_items(agents: Agents) -> None:
    client = OpenAI(base_url=f"{agents.url}/v1", api_key="unused")
    tools: Any = [{"type": "mcp", "server_label": "everything", "allowed_tools": ["add"],
                   "require_approval": "never"}]  # fmt: skip
    response = client.responses.create(model="plain", input="add", tools=tools)
    assert [item.type for item in response.output] == ["mcp_list_tools", "mcp_call", "message"]
    listing, call, _ = response.output
    assert listing.type == "mcp_list_tools" and [t.name for t in listing.tools] == ["add"]
    assert call.type == "mcp_call" and call.server_label == "everything"
    arguments = json.loads(call.arguments)
    assert call.output == str(arguments["a"] + arguments["b"]) and call.status == "completed"
    assert response.output_text.startswith(f"add said: {call.output}")
    # Usage sums both turns: the call's, and the 12-token answer.
    assert response.usage is not None and response.usage.output_tokens > 12

    # A follow-up continues after the worker's steps (their calls with their results).
    follow_up = client.responses.create(
        model="plain", input="and now?", previous_response_id=response.id
    )
    assert follow_up.status == "completed" and follow_up.output_text

    stream = client.responses.create(model="plain", input="add", tools=tools, stream=True)
    kinds = [event.type for event in stream]
    for kind in (
        "response.mcp_list_tools.completed",
        "response.mcp_call.in_progress",
        "response.mcp_call_arguments.done",
        "response.mcp_call.completed",
        "response.completed",
    ):
        assert kind in kinds


def test_responses_refuses_servers_it_does_not_have(agents: Agents) -> None:
    client = OpenAI(base_url=f"{agents.url}/v1", api_key="unused")
    for tool in (
        {"type": "mcp", "server_label": "nowhere"},
        {"type": "mcp", "server_label": "calc", "server_url": "https://evil.example/mcp"},
        {"type": "mcp", "server_label": "calc", "require_approval": "always"},
    ):
        with pytest.raises(BadRequestError):
            client.responses.create(model="plain", input="x", tools=[tool])  # type: ignore[list-item]


def test_anthropic_sdk_sees_mcp_blocks(agents: Agents) -> None:
    client = anthropic.Anthropic(base_url=agents.url, api_key="unused")
    servers = [{"type": "url", "name": "calc", "url": None}]
    message = client.beta.messages.create(
        model="plain",
        max_tokens=50,
        messages=[{"role": "user", "content": "add"}],
        mcp_servers=[{k: v for k, v in s.items() if v is not None} for s in servers],  # type: ignore[misc]
        betas=["mcp-client-2025-04-04"],
    )
    kinds = [block.type for block in message.content]
    assert kinds == ["text", "mcp_tool_use", "mcp_tool_result"]
    use, result = message.content[1], message.content[2]
    assert use.type == "mcp_tool_use" and use.server_name == "calc" and use.name == "add"
    assert result.type == "mcp_tool_result" and result.tool_use_id == use.id
    total = use.input["a"] + use.input["b"]  # type: ignore[index]
    assert result.content[0].text == str(total)  # type: ignore[union-attr,index]

    with client.beta.messages.stream(
        model="plain",
        max_tokens=50,
        messages=[{"role": "user", "content": "add"}],
        mcp_servers=[{"type": "url", "name": "calc"}],
        betas=["mcp-client-2025-04-04"],
    ) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["mcp_tool_use", "mcp_tool_result", "text"]
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model="plain",
            max_tokens=50,
            messages=[{"role": "user", "content": "add"}],
            extra_body={"mcp_servers": [{"type": "url", "name": "calc",
                                         "url": "https://elsewhere.example/mcp"}]},
        )  # fmt: skip


def test_openai_chat_shows_the_steps_beside_the_answer(agents: Agents) -> None:
    client = OpenAI(base_url=f"{agents.url}/v1", api_key="unused")
    completion = client.chat.completions.create(
        model="agent", messages=[{"role": "user", "content": "add"}]
    )
    message = completion.choices[0].message
    assert message.tool_calls is None and completion.choices[0].finish_reason == "stop"
    steps = message.model_extra["spool_tool_steps"]  # type: ignore[index]
    assert [(s["server"], s["name"]) for s in steps] == [("calc", "add")]
    assert message.content is not None and message.content.startswith("add said: ")


# -- durability and limits -----------------------------------------------------------------


def test_resume_from_inside_a_tool_step_is_exact(agents: Agents) -> None:
    client = OpenAI(base_url=f"{agents.url}/v1", api_key="unused")
    created = client.responses.create(model="agent", input="add", background=True, stream=True)
    full = [event.model_dump() for event in created]
    response_id = full[0]["response"]["id"]
    for n in range(len(full)):
        rest = client.responses.retrieve(response_id, stream=True, starting_after=n)
        assert [event.model_dump() for event in rest] == full[n + 1 :]
    # The same events on the stream's own route, numbered the same.
    url = f"{agents.url}/v1/responses/{response_id}?stream=true"
    with httpx.stream("GET", url, timeout=30) as r:
        raw = sse_events(r)
    stream_id = response_id.removeprefix("resp_")
    with httpx.stream("GET", f"{agents.url}/v1/streams/{stream_id}", timeout=30) as r:
        assert sse_events(r) == raw
    assert [event_id for event_id, _ in raw] == [str(n) for n in range(len(full))]


def test_a_loop_past_max_tool_steps_ends_cut_short(agents: Agents) -> None:
    events = simple_events(agents.url, "agent-once", "add")
    assert [e["tool_name"] for e in events if "tool_name" in e] == ["add"]
    assert events[-1]["done"] is True and events[-1]["finish_reason"] == "length"
    assert not any(e.get("token") for e in events)  # no turn was left to answer in


def test_cancel_during_a_slow_tool_call_ends_the_stream_at_once(agents: Agents) -> None:
    client = OpenAI(base_url=f"{agents.url}/v1", api_key="unused")
    stream = client.responses.create(model="agent-napping", input="nap", stream=True)
    response_id = ""
    for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.mcp_call_arguments.done":
            break  # the tool is running now
    started = time.monotonic()
    cancelled = client.responses.cancel(response_id)
    took = time.monotonic() - started
    stream.close()
    assert cancelled.status == "cancelled"
    assert took < 1.5, f"the cancel took {took:.2f}s"
    call = next(item for item in cancelled.output if item.type == "mcp_call")
    assert call.status == "incomplete" and call.output is None


def test_a_worker_killed_during_a_tool_call_ends_the_stream_lost(
    agents: Agents, tmp_path: Path
) -> None:
    """The call is in the stream before it runs, so the job is not run again (which would
    call the tool a second time, unseen): it ends as lost, like any started stream."""
    worker = start_worker(agents.redis_url, agents.config, tmp_path)
    agents.worker.stop()  # the new worker takes the job
    try:
        client = OpenAI(base_url=f"{agents.url}/v1", api_key="unused")
        created = client.responses.create(model="agent-napping", input="nap", background=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            response = client.responses.retrieve(created.id)
            if any(item.type == "mcp_call" for item in response.output):
                break
            time.sleep(0.1)
        worker.stop(sig=9)
        deadline = time.monotonic() + 20
        while (response := client.responses.retrieve(created.id)).status == "in_progress":
            assert time.monotonic() < deadline, "the stream never ended"
            time.sleep(0.2)
        assert response.status == "failed" and response.error is not None
        assert response.error.code == "worker_lost"
        calls = [item for item in response.output if item.type == "mcp_call"]
        assert len(calls) == 1 and calls[0].output is None
    finally:
        worker.stop(sig=9)
        agents.worker = start_worker(agents.redis_url, agents.config, tmp_path)
