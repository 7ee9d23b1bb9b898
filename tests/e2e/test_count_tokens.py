"""`POST /v1/messages/count_tokens` through the official `anthropic` SDK against a real API
process: Anthropic's own count for Anthropic models (a mock count_tokens upstream here,
recording what it was sent), Spool's estimate for the rest, both said in a header; keys,
model access, rate limits and errors in Anthropic's shape."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import httpx
import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from api.routes.anthropic import MessagesBody, to_canonical
from shared.redis.embedded import EmbeddedRedis, free_port
from tests.conftest import UPSTREAM_KEY
from tests.media import PNG_B64, Weather
from tests.processes import SpoolProcess, create_key, start_api, write_config
from tests.threaded_server import ThreadedServer

pytestmark = pytest.mark.e2e

COUNTED = 4242  # what the mock upstream counts
HEADER = "x-spool-token-count"
MESSAGES: list[Any] = [{"role": "user", "content": "How many tokens is this?"}]


@dataclass
class CountingUpstream:
    """Anthropic's `POST /v1/messages/count_tokens`; the upstream model name picks the
    answer: `claude-counted` counts, `claude-broken` fails quoting the key it was sent."""

    seen: list[tuple[dict[str, str], dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/v1/messages/count_tokens", self.count, methods=["POST"])])

    async def count(self, request: Request) -> Response:
        body = orjson.loads(await request.body())
        with self.lock:
            self.seen.append((dict(request.headers), body))
        if body["model"] == "claude-broken":
            message = f"invalid x-api-key {UPSTREAM_KEY}"
            error = {"type": "error", "error": {"type": "authentication_error", "message": message}}
            return JSONResponse(error, status_code=401)
        if body["model"] == "claude-garbage":
            return Response(b"<html>oops</html>", media_type="text/html")
        return JSONResponse({"input_tokens": COUNTED})

    def last(self) -> tuple[dict[str, str], dict[str, Any]]:
        with self.lock:
            return self.seen[-1]


@dataclass
class Deployment:
    api: SpoolProcess
    upstream: CountingUpstream
    config: Path
    redis_url: str

    @property
    def url(self) -> str:
        return self.api.url

    def new_key(self, name: str, *limits: str) -> str:
        return create_key(self.config, self.redis_url, name, *limits)

    def client(self, secret: str, prefix: str = "") -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.url + prefix, api_key=secret, max_retries=0)


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[Deployment]:
    """One API process (token counts need no worker) with keys on, and the mock upstream."""
    upstream = CountingUpstream()
    port = free_port()
    server = ThreadedServer(upstream.app(), port, "count-tokens-upstream")
    server.start()

    def claude(model: str) -> dict[str, object]:
        return {
            "provider": "anthropic", "base_url": f"http://127.0.0.1:{port}/v1", "model": model,
            "api_key_env": "SPOOL_TEST_UPSTREAM_KEY",
        }  # fmt: skip

    models = {
        "claude": claude("claude-counted"),
        "claude-broken": claude("claude-broken"),
        "claude-garbage": claude("claude-garbage"),
        "demo-fast": {"provider": "demo", "tokens_per_second": 0},
    }
    workdir = tmp_path_factory.mktemp("count-tokens")
    config = write_config(workdir / "spool.yaml", models, upstream_allowlist="127.0.0.1")
    os.environ["SPOOL_TEST_UPSTREAM_KEY"] = UPSTREAM_KEY
    redis_url = redis_server.url.replace("/0", "/13")  # a database no other suite uses
    api = start_api(redis_url, config, workdir)
    try:
        yield Deployment(api, upstream, config, redis_url)
    finally:
        api.stop()
        server.stop()


@pytest.fixture(scope="module")
def secret(deployment: Deployment) -> str:
    return deployment.new_key("count-tokens")


# -- Anthropic's own count -------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "/anthropic"])
def test_an_anthropic_model_is_counted_upstream(
    deployment: Deployment, secret: str, prefix: str
) -> None:
    client = deployment.client(secret, prefix)
    tools: Any = [
        {
            "name": "get_weather",
            "input_schema": {"type": "object"},
            "cache_control": {"type": "ephemeral"},
        }
    ]
    raw = client.messages.with_raw_response.count_tokens(
        model="claude",
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=MESSAGES,
        tools=tools,
        thinking={"type": "enabled", "budget_tokens": 2048},
    )
    assert raw.headers[HEADER] == "exact"
    assert raw.parse().input_tokens == COUNTED
    headers, body = deployment.upstream.last()
    assert headers["x-api-key"] == UPSTREAM_KEY
    assert headers["anthropic-version"] == "2023-06-01"
    # The client's request as it sent it, under the upstream's model name.
    assert body == {
        "model": "claude-counted",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": MESSAGES,
        "tools": tools,
        "thinking": {"type": "enabled", "budget_tokens": 2048},
    }


def test_a_structured_output_is_counted_in_its_ga_form(deployment: Deployment, secret: str) -> None:
    count = deployment.client(secret).messages.count_tokens(
        model="claude", messages=MESSAGES, output_format=Weather
    )
    assert count.input_tokens == COUNTED
    _, body = deployment.upstream.last()
    assert body["output_config"]["format"]["type"] == "json_schema"
    assert set(body["output_config"]["format"]["schema"]["properties"]) == {
        "city",
        "temperature",
        "conditions",
    }


@pytest.mark.parametrize("model", ["claude-broken", "claude-garbage"])
def test_an_upstream_failure_is_a_502_in_anthropics_shape(
    deployment: Deployment, secret: str, model: str
) -> None:
    with pytest.raises(anthropic.APIStatusError) as info:
        deployment.client(secret).messages.count_tokens(model=model, messages=MESSAGES)
    assert info.value.status_code == 502
    body = info.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "api_error"
    assert UPSTREAM_KEY not in info.value.response.text


# -- Spool's estimate ----------------------------------------------------------------------


def test_other_models_are_estimated_and_say_so(deployment: Deployment, secret: str) -> None:
    messages: Any = [
        {"role": "user", "content": "Describe this picture in a few words, please."},
        {"role": "assistant", "content": "A red square."},
        {
            "role": "user",
            "content": [
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": PNG_B64},
                },
                {"type": "text", "text": "And now?"},
            ],
        },
    ]
    raw = deployment.client(secret).messages.with_raw_response.count_tokens(
        model="demo-fast", system="Be brief.", messages=messages
    )
    assert raw.headers[HEADER] == "estimated"
    body = {"model": "demo-fast", "system": "Be brief.", "messages": messages}
    expected = to_canonical(MessagesBody.model_validate(body)).estimated_input_tokens()
    assert raw.parse().input_tokens == expected > 1000  # the image counts
    before = len(deployment.upstream.seen)
    deployment.client(secret).messages.count_tokens(model="demo-fast", messages=MESSAGES)
    assert len(deployment.upstream.seen) == before


# -- keys, limits and bad requests ---------------------------------------------------------


def test_a_key_is_required(deployment: Deployment) -> None:
    with pytest.raises(anthropic.AuthenticationError) as info:
        deployment.client("sk-not-a-key").messages.count_tokens(model="claude", messages=MESSAGES)
    assert info.value.response.json()["error"]["type"] == "authentication_error"
    response = httpx.post(
        f"{deployment.url}/v1/messages/count_tokens",
        json={"model": "claude", "messages": MESSAGES},
    )
    assert response.status_code == 401


def test_unknown_and_forbidden_models_are_404s(deployment: Deployment, secret: str) -> None:
    before = len(deployment.upstream.seen)
    with pytest.raises(anthropic.NotFoundError) as info:
        deployment.client(secret).messages.count_tokens(model="nope", messages=MESSAGES)
    assert info.value.response.json()["error"]["type"] == "not_found_error"
    limited = deployment.new_key("demo-only", "--models", "demo-fast")
    with pytest.raises(anthropic.NotFoundError):
        deployment.client(limited).messages.count_tokens(model="claude", messages=MESSAGES)
    assert len(deployment.upstream.seen) == before


def test_counts_are_requests_of_the_keys_minute(deployment: Deployment) -> None:
    client = deployment.client(deployment.new_key("two-a-minute", "--rpm", "2"))
    for _ in range(2):
        client.messages.count_tokens(model="demo-fast", messages=MESSAGES)
    with pytest.raises(anthropic.RateLimitError) as info:
        client.messages.count_tokens(model="demo-fast", messages=MESSAGES)
    assert info.value.response.json()["error"]["type"] == "rate_limit_error"
    assert int(info.value.response.headers["retry-after"]) >= 1


@pytest.mark.parametrize(
    ("body", "status", "says"),
    [
        (
            {
                "model": "claude",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "document", "source": {"type": "file", "file_id": "f"}}
                        ],
                    }
                ],
            },
            400,
            "document sources of type 'file' are not supported",
        ),
        ({"model": "claude"}, 422, "messages"),
        (
            {
                "model": "demo-fast",
                "messages": MESSAGES,
                "tools": [{"type": "bash_20250124", "name": "bash"}],
            },
            400,
            "'bash_20250124'",
        ),
    ],
)
def test_bad_requests_are_refused_before_the_upstream(
    deployment: Deployment, secret: str, body: dict[str, Any], status: int, says: str
) -> None:
    before = len(deployment.upstream.seen)
    response = httpx.post(
        f"{deployment.url}/v1/messages/count_tokens", json=body, headers={"x-api-key": secret}
    )
    assert response.status_code == status
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert says in error["error"]["message"]
    assert len(deployment.upstream.seen) == before
