"""The OpenAI Agents SDK as the client: an agent with a function tool runs its whole loop
(a tool call, the tool's result sent back, a text answer) against the `demo` model through
Spool's Responses API, run to completion and streamed."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest
from agents import (
    Agent,
    FunctionTool,
    OpenAIResponsesModel,
    RunItemStreamEvent,
    Runner,
    function_tool,
    set_tracing_disabled,
)
from agents.items import ToolCallItem, ToolCallOutputItem
from openai import AsyncOpenAI
from openai.types.responses import ResponseFunctionToolCall

from tests.conftest import Cluster

pytestmark = pytest.mark.e2e

MODEL = "demo"  # the built-in demo model: it calls the first tool offered, then answers


@pytest.fixture(autouse=True)
def no_tracing() -> None:
    """The SDK sends its traces to OpenAI unless told not to: these tests never leave the
    machine (and tracing stays off for the rest of the session)."""
    set_tracing_disabled(True)


@dataclass
class Forecasts:
    """A weather tool that records every call the agent loop makes to it."""

    calls: list[str] = field(default_factory=list)

    def tool(self) -> FunctionTool:
        @function_tool
        def get_forecast(city: str) -> str:
            """The weather forecast for a city."""
            self.calls.append(city)
            return f"sunny in {city}, 21 degrees"

        return get_forecast


def agent(url: str, forecasts: Forecasts) -> Agent[None]:
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="spool", max_retries=0)
    return Agent(
        name="forecaster",
        instructions="Answer weather questions with the get_forecast tool.",
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        tools=[forecasts.tool()],
    )


async def test_runner_run_calls_the_tool_and_answers(cluster: Cluster) -> None:
    forecasts = Forecasts()
    result = await Runner.run(agent(cluster.url, forecasts), "What is the weather in Paris?")
    assert isinstance(result.final_output, str) and result.final_output.strip()
    assert len(forecasts.calls) == 1, forecasts.calls
    calls = [i for i in result.new_items if isinstance(i, ToolCallItem)]
    outputs = [i for i in result.new_items if isinstance(i, ToolCallOutputItem)]
    assert len(calls) == len(outputs) == 1
    call = calls[0].raw_item
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "get_forecast"
    # The tool ran with the arguments the model's call carried, and its result went back.
    assert forecasts.calls == [json.loads(call.arguments)["city"]]
    assert outputs[0].output == f"sunny in {forecasts.calls[0]}, 21 degrees"
    # Two model turns: the one that called the tool, the one that read its result.
    assert len(result.raw_responses) == 2
    assert all(r.response_id and r.response_id.startswith("resp_") for r in result.raw_responses)


async def test_runner_run_streamed_calls_the_tool_and_answers(cluster: Cluster) -> None:
    forecasts = Forecasts()
    result = Runner.run_streamed(
        agent(cluster.other_url, forecasts), "Will it rain in Lyon tomorrow?"
    )
    kinds: list[str] = []
    deltas: list[str] = []
    async for event in result.stream_events():
        if isinstance(event, RunItemStreamEvent):
            kinds.append(event.name)
        elif event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas.append(event.data.delta)
    assert result.is_complete
    assert isinstance(result.final_output, str) and result.final_output.strip()
    assert len(forecasts.calls) == 1, forecasts.calls
    assert kinds.count("tool_called") == kinds.count("tool_output") == 1, kinds
    assert (
        kinds.index("tool_called")
        < kinds.index("tool_output")
        < kinds.index("message_output_created")
    )
    # The answer streamed token by token is the answer the run ends with.
    assert "".join(deltas) == result.final_output
