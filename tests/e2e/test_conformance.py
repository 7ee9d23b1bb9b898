"""Every surface against every provider, through the official SDKs: what arrives (text,
tool calls, finish reason, usage) is what the upstream sent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from tests import mock_anthropic, mock_gemini, mock_upstream
from tests.conftest import Cluster
from tests.e2e import surfaces
from tests.e2e.surfaces import Outcome

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Upstream:
    model: str
    text: str
    tool_calls: list[tuple[str, dict[str, Any]]]
    finish: str
    input_tokens: int
    output_tokens: int


UPSTREAMS = {
    "openai-text": Upstream(
        "up-openai-text", "".join(mock_upstream.INSTANT_TEXT), [], "stop", 3, 6
    ),
    "openai-tools": Upstream(
        "up-openai-tools",
        "".join(mock_upstream.TOOLS_TEXT),
        [("get_weather", {"city": "Paris"})],
        "tool_calls",
        3,
        6,
    ),
    "anthropic-text": Upstream(
        "up-anthropic-text",
        mock_anthropic.TEXT,
        [],
        "stop",
        mock_anthropic.INPUT_TOKENS,
        mock_anthropic.OUTPUT_TOKENS,
    ),
    "anthropic-tools": Upstream(
        "up-anthropic-tools",
        "Let me look.",
        [("get_weather", {"city": "Paris", "unit": "celsius"})],
        "tool_calls",
        mock_anthropic.INPUT_TOKENS,
        mock_anthropic.OUTPUT_TOKENS,
    ),
    "gemini-text": Upstream("up-gemini-text", mock_gemini.TEXT, [], "stop", 9, 6),
    "gemini-tools": Upstream(
        "up-gemini-tools",
        "Let me check.",
        [(name, args) for name, args in mock_gemini.TOOL_CALLS],
        "tool_calls",
        20,
        12,
    ),
}

SURFACES: dict[str, Callable[..., Outcome]] = {
    "openai-chat": surfaces.openai_chat,
    "anthropic": surfaces.anthropic_messages,
    "gemini": surfaces.gemini_generate,
    "simple": surfaces.simple_chat,
}


def check(outcome: Outcome, upstream: Upstream, *, usage: str = "full") -> None:
    assert outcome.text == upstream.text
    assert outcome.tool_calls == upstream.tool_calls
    assert outcome.finish == upstream.finish
    total = upstream.input_tokens + upstream.output_tokens
    if usage == "full":
        assert (outcome.input_tokens, outcome.output_tokens) == (
            upstream.input_tokens,
            upstream.output_tokens,
        )
    assert outcome.total_tokens == total


@pytest.mark.parametrize("upstream_name", sorted(UPSTREAMS))
@pytest.mark.parametrize("surface_name", sorted(SURFACES))
def test_surface_by_provider(cluster: Cluster, surface_name: str, upstream_name: str) -> None:
    upstream = UPSTREAMS[upstream_name]
    surface = SURFACES[surface_name]
    kwargs = {"tools": True} if upstream.tool_calls and surface_name != "simple" else {}
    outcome = surface(cluster.url, upstream.model, f"matrix {surface_name}", **kwargs)
    check(outcome, upstream, usage="total" if surface_name == "simple" else "full")


@pytest.mark.parametrize("upstream_name", ["openai-text", "anthropic-text", "gemini-text"])
def test_completions_by_provider(cluster: Cluster, upstream_name: str) -> None:
    upstream = UPSTREAMS[upstream_name]
    outcome = surfaces.openai_completions(cluster.url, upstream.model, "complete this")
    check(outcome, upstream)


@pytest.mark.parametrize(
    ("model", "reasoning", "answer"),
    [
        (
            "up-anthropic-thinking",
            "".join(mock_anthropic.THINKING_PIECES),
            mock_anthropic.THINKING_ANSWER,
        ),
        ("up-gemini-thinking", mock_gemini.THOUGHT, mock_gemini.THINKING_ANSWER),
    ],
)
def test_reasoning_reaches_both_reasoning_surfaces(
    cluster: Cluster, model: str, reasoning: str, answer: str
) -> None:
    for client in (surfaces.anthropic_messages, surfaces.gemini_generate):
        outcome = client(cluster.url, model, "think", thinking=True)
        assert (outcome.reasoning, outcome.text) == (reasoning, answer)


@pytest.mark.parametrize("surface_name", sorted(SURFACES))
def test_the_demo_model_speaks_every_surface(cluster: Cluster, surface_name: str) -> None:
    """Tool calls with no upstream at all: the demo fills arguments from the schema."""
    surface = SURFACES[surface_name]
    kwargs = {} if surface_name == "simple" else {"tools": True}
    outcome = surface(cluster.url, "demo-fast", "weather in Paris", **kwargs)
    if surface_name == "simple":
        assert outcome.text and outcome.finish == "stop"
        return
    assert outcome.finish == "tool_calls"
    assert [name for name, _ in outcome.tool_calls] == ["get_weather"]
    assert outcome.tool_calls[0][1]["city"] == "weather in Paris"


NON_STREAMING: dict[str, Callable[..., Outcome]] = {
    "openai-chat": surfaces.openai_chat_once,
    "anthropic": surfaces.anthropic_messages_once,
    "gemini": surfaces.gemini_generate_once,
}


@pytest.mark.parametrize("upstream_name", sorted(UPSTREAMS))
@pytest.mark.parametrize("surface_name", sorted(NON_STREAMING))
def test_non_streaming_by_provider(cluster: Cluster, surface_name: str, upstream_name: str) -> None:
    """The same answer, assembled server-side into each API's non-streaming shape."""
    upstream = UPSTREAMS[upstream_name]
    kwargs = {"tools": True} if upstream.tool_calls else {}
    outcome = NON_STREAMING[surface_name](cluster.url, upstream.model, "once", **kwargs)
    check(outcome, upstream)
