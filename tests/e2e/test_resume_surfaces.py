"""Resume in every surface's own format: drop after k events, resume on the other replica
with the last id seen, and the events equal an uninterrupted reading, for every k."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from shared.sse import SSEDecoder
from tests.conftest import Cluster
from tests.e2e.surfaces import WEATHER_SCHEMA

pytestmark = pytest.mark.e2e

PROMPT = [{"role": "user", "content": "weather in Paris"}]
OPENAI_TOOL = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}}
]

CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai-chat": (
        "/v1/chat/completions",
        {
            "model": "demo-fast",
            "messages": PROMPT,
            "stream": True,
            "tools": OPENAI_TOOL,
            "reasoning_effort": "high",
            "stream_options": {"include_usage": True},
        },
    ),
    "openai-completions": (
        "/v1/completions",
        {"model": "demo-fast", "prompt": "complete", "stream": True, "max_tokens": 25},
    ),
    "anthropic-tools": (
        "/v1/messages",
        {
            "model": "demo-fast",
            "max_tokens": 2048,
            "stream": True,
            "messages": PROMPT,
            "tools": [{"name": "get_weather", "input_schema": WEATHER_SCHEMA}],
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ),
    "anthropic-text": (
        "/v1/messages",
        {
            "model": "demo-fast",
            "max_tokens": 2048,
            "stream": True,
            "messages": PROMPT,
            "thinking": {"type": "enabled", "budget_tokens": 1024},
        },
    ),
    "gemini": (
        "/v1beta/models/demo-fast:streamGenerateContent?alt=sse",
        {
            "contents": [{"role": "user", "parts": [{"text": "weather in Paris"}]}],
            "tools": [
                {"functionDeclarations": [{"name": "get_weather", "parameters": WEATHER_SCHEMA}]}
            ],
            "generationConfig": {"thinkingConfig": {"includeThoughts": True}},
        },
    ),
    "simple": ("/api/chat", {"message": "hello", "model": "demo-fast"}),
}


def event_id(surface: str, event_id: str | None, data: str) -> str | None:
    if surface == "gemini":  # the id travels in the body, where the google-genai SDK reads it
        return str(orjson.loads(data)["responseId"])
    return event_id


def read(
    client: httpx.Client, surface: str, method: str, url: str, **kwargs: Any
) -> list[tuple[str, str | None, str]]:
    """(event name, resume id, data) for every event of the response."""
    with client.stream(method, url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        decoder = SSEDecoder()
        events = []
        for raw in response.iter_raw():
            for e in decoder.feed(raw):
                events.append((e.event, event_id(surface, e.id, e.data), e.data))
    return events


@pytest.mark.parametrize("surface", sorted(CASES))
def test_resume_after_every_event(cluster: Cluster, surface: str) -> None:
    path, body = CASES[surface]
    with httpx.Client(timeout=30) as client:
        created = client.post(cluster.url + path, json=body)
        stream_id = created.headers["x-spool-stream-id"]
        full = read(client, surface, "GET", f"{cluster.url}/v1/streams/{stream_id}")
        assert len(full) > 4
        created_events = [e.data for e in SSEDecoder().feed(created.content)]
        assert [d for _, _, d in full] == created_events, "the creating response matches"
        for k in range(1, len(full)):
            resume_id = full[k - 1][1]
            assert resume_id, f"event {k - 1} of {surface} carries a resume id"
            rest = read(
                client,
                surface,
                "GET",
                f"{cluster.other_url}/v1/streams/{stream_id}",
                headers={"Last-Event-ID": resume_id},
            )
            assert full[:k] + rest == full, f"{surface}: resume after {k} of {len(full)} events"
