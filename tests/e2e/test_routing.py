"""Model groups end to end: real API and two worker processes in front of a fleet of
scripted upstream deployments. Strategies spread load as configured, failures before the
first token move on invisibly (next deployment, then fallbacks), cooldowns are shared by
the workers through Redis, and nothing falls back after the first token."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import connect_sse
from openai import OpenAI

from shared.redis.embedded import EmbeddedRedis, free_port
from tests.mock_fleet import MockFleet, answer, deployment
from tests.processes import SpoolProcess, start_api, start_worker, wait_ready, write_config

pytestmark = pytest.mark.e2e

FIRST = 1_000_000.0  # a weight that puts a deployment first nearly always (1 in a million)
SETTINGS = {
    "keepalive_interval_s": 0.5,
    "lease_s": 3,
    "auth_enabled": False,
    "upstream_allowlist": "127.0.0.1",
    "upstream_backoff_s": 0.05,
    # A Retry-After past this fails the round at once instead of being waited out.
    "upstream_retry_after_max_s": 5,
}


def models(fleet: MockFleet) -> dict[str, Any]:
    def group(*deployments: dict[str, Any], **fields: Any) -> dict[str, Any]:
        return {"deployments": list(deployments), **fields}

    def d(name: str, **fields: Any) -> dict[str, Any]:
        return deployment(fleet, name, **fields)

    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    return {
        "spread": group(d("w1", weight=3), d("w2", weight=1)),
        "least": group(d("l1"), d("l2"), routing="least_busy"),
        "fast": group(d("lat-slow"), d("lat-fast"), routing="latency"),
        "usage": group(d("u-small", tpm=50), d("u-big", tpm=100_000), routing="usage"),
        "failover": group(d("f-down", weight=FIRST), d("f-up")),
        "refused": group(
            {**d("r-closed", weight=FIRST), "base_url": closed, "name": "r-closed"}, d("r-up")
        ),
        "stalled": group(d("s-late", weight=FIRST, idle_timeout_s=0.4), d("s-up")),
        "limited": group(d("t-429", weight=FIRST), d("t-up")),
        "cooling": group(d("k-down", weight=FIRST), d("k-up"), allowed_fails=2, cooldown_s=60),
        "frozen": group(d("z1"), d("z2"), fallbacks=["chain-c"]),
        "cold": group(d("y1"), d("y2")),
        "long-prompt": group(
            d("c-small", weight=FIRST), d("c-small-2"), context_window_fallbacks=["long-context"]
        ),
        "long-context": d("c-large"),
        "touchy": group(d("p-strict"), content_policy_fallbacks=["lenient"]),
        "lenient": d("p-lenient"),
        "chain-a": group(d("a-down"), fallbacks=["chain-b"]),
        "chain-b": group(d("b-down"), fallbacks=["chain-c"]),
        "chain-c": d("c-up"),
        "cut": group(d("cut-mid", weight=FIRST), d("cut-other"), fallbacks=["chain-c"]),
        "auto": {
            "router": {
                "rules": [
                    {"when": {"has_tools": True}, "use": "tools-model", "name": "tools"},
                    {"when": {"min_prompt_tokens": 400}, "use": "long-model"},
                    {"when": {"matches": r"(?i)\b(sql|python|def)\b"}, "use": "code-model"},
                    {"when": {"has_images": True}, "use": "vision-model"},
                    {"when": {"reasoning": True}, "use": "thinking-model"},
                ],
                "default": "general-model",
            }
        },
        **{
            f"{kind}-model": d(f"{kind}-up")
            for kind in ("tools", "long", "code", "vision", "thinking", "general")
        },
    }


@dataclass
class Fleet:
    api: SpoolProcess
    workers: list[SpoolProcess]
    fleet: MockFleet
    redis_url: str
    config: Path

    @property
    def url(self) -> str:
        return self.api.url


@pytest.fixture(scope="module")
def routing(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[Fleet]:
    fleet = MockFleet().start()
    workdir = tmp_path_factory.mktemp("routing")
    config = write_config(workdir / "spool.yaml", models(fleet), **SETTINGS)
    redis_url = redis_server.url.replace("/0", "/11")  # a database no other suite uses
    workers = [start_worker(redis_url, config, workdir) for _ in range(2)]
    found = Fleet(start_api(redis_url, config, workdir), workers, fleet, redis_url, config)
    api = found.api
    try:
        wait_ready(api.url)
        yield found
    finally:
        for proc in [api, *found.workers]:
            proc.stop()
        fleet.stop()


def chat(model: str, content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def ask(url: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)


def result(url: str, stream_id: str) -> dict[str, Any]:
    found: dict[str, Any] = httpx.get(f"{url}/v1/streams/{stream_id}/result", timeout=10).json()
    return found


def served_text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


# -- strategies --------------------------------------------------------------------------


async def test_weighted_routing_spreads_by_weight(routing: Fleet) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        replies = await asyncio.gather(
            *(
                client.post(f"{routing.url}/v1/chat/completions", json=chat("spread"))
                for _ in range(100)
            )
        )
    texts = [r.json()["choices"][0]["message"]["content"] for r in replies]
    by_w1 = texts.count("".join(answer("w1")))
    by_w2 = texts.count("".join(answer("w2")))
    assert by_w1 + by_w2 == 100
    # 3:1 expected (75 of 100, give or take 4.3); a uniform split (50) or one-sided
    # routing is far outside.
    assert 60 <= by_w1 <= 90, (by_w1, by_w2)
    assert routing.fleet.hits["w1"] == by_w1 and routing.fleet.hits["w2"] == by_w2


async def test_least_busy_routing_balances_open_generations(routing: Fleet) -> None:
    # Long enough that all eight are open at once, even on a busy machine.
    routing.fleet.script("l1", first_token_delay_s=5)
    routing.fleet.script("l2", first_token_delay_s=5)

    def picked() -> int:
        return routing.fleet.hits["l1"] + routing.fleet.hits["l2"]

    async with httpx.AsyncClient(timeout=30) as client:
        asked = []
        for n in range(1, 9):
            body = chat("least")
            asked.append(
                asyncio.create_task(client.post(f"{routing.url}/v1/chat/completions", json=body))
            )
            # Each request reaches its deployment before the next is sent: it is open.
            await until(lambda n=n: picked() == n)
        replies = await asyncio.gather(*asked)
    assert all(r.status_code == 200 for r in replies)
    # Always the less busy one: never more than one apart, so 4 each.
    assert routing.fleet.hits["l1"] == 4 and routing.fleet.hits["l2"] == 4


def test_latency_routing_prefers_the_faster_deployment(routing: Fleet) -> None:
    routing.fleet.script("lat-slow", first_token_delay_s=0.3)
    texts = [served_text(ask(routing.url, chat("fast"))) for _ in range(12)]
    # Each is measured once at least (a deployment with no samples goes first), then the
    # faster one takes everything.
    assert 1 <= routing.fleet.hits["lat-slow"] <= 2
    assert texts[-6:] == ["".join(answer("lat-fast"))] * 6


def test_usage_routing_keeps_within_tokens_per_minute(routing: Fleet) -> None:
    texts = [served_text(ask(routing.url, chat("usage"))) for _ in range(10)]
    # One answer costs 6 tokens: 12% of u-small's minute, next to nothing of u-big's, so
    # u-small is used once (twice if the minute turns) and u-big for the rest.
    assert 1 <= routing.fleet.hits["u-small"] <= 2
    assert texts.count("".join(answer("u-big"))) >= 8


# -- failures before the first token ------------------------------------------------------


def read_stream(
    url: str, path: str, body: dict[str, Any]
) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    """The response headers and every data event (JSON) of a streamed request."""
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "POST", url + path, json=body) as source,
    ):
        assert source.response.status_code == 200, source.response.read()
        events = [orjson.loads(e.data) for e in source.iter_sse() if e.data and e.data != "[DONE]"]
        return source.response.headers, events


def stream_events(url: str, body: dict[str, Any]) -> tuple[httpx.Headers, list[dict[str, Any]]]:
    return read_stream(url, "/v1/chat/completions", body)


def chunk_text(events: list[dict[str, Any]]) -> str:
    return "".join(
        e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")
    )


def test_a_failing_deployment_is_passed_over_invisibly(routing: Fleet) -> None:
    routing.fleet.script("f-down", "503")
    headers, events = stream_events(routing.url, chat("failover", stream=True))
    assert chunk_text(events) == "".join(answer("f-up"))
    assert not any("error" in e for e in events)
    assert headers["x-spool-deployment"] == "f-up"
    assert {e["model"] for e in events} == {"failover"}
    routing_info = result(routing.url, headers["x-spool-stream-id"])["routing"]
    assert routing_info["deployment"] == "f-up" and routing_info["model"] == "failover"
    outcomes = [(a["deployment"], a["outcome"], a.get("status")) for a in routing_info["attempts"]]
    assert outcomes == [("f-down", "upstream_error", 503), ("f-up", "ok", None)]
    assert all(a["at"] > 0 and a["ms"] >= 0 for a in routing_info["attempts"])


@pytest.mark.parametrize(
    ("model", "failing", "script", "outcome"),
    [
        ("refused", "r-closed", None, "upstream_connect_error"),
        ("stalled", "s-late", {"first_token_delay_s": 3}, "upstream_timeout"),
    ],
)
def test_refused_and_silent_deployments_are_passed_over(
    routing: Fleet, model: str, failing: str, script: dict[str, Any] | None, outcome: str
) -> None:
    if script:
        routing.fleet.script(failing, **script)
    response = ask(routing.url, chat(model))
    assert served_text(response).endswith(model[0] + "-up")
    assert response.headers["x-spool-deployment"] == f"{model[0]}-up"
    attempts = result(routing.url, response.headers["x-spool-stream-id"])["routing"]["attempts"]
    assert [(a["deployment"], a["outcome"]) for a in attempts] == [
        (failing, outcome),
        (f"{model[0]}-up", "ok"),
    ]


def test_a_retry_after_cools_the_deployment_for_every_worker(routing: Fleet) -> None:
    routing.fleet.script("t-429", "429", retry_after="30")
    first = ask(routing.url, chat("limited"))
    assert served_text(first) == "".join(answer("t-up"))
    # Cooling down: later requests, on either worker, go straight to t-up.
    later = [ask(routing.url, chat("limited")) for _ in range(6)]
    assert [served_text(r) for r in later] == ["".join(answer("t-up"))] * 6
    assert routing.fleet.hits["t-429"] == 1
    attempts = result(routing.url, later[-1].headers["x-spool-stream-id"])["routing"]["attempts"]
    assert [a["deployment"] for a in attempts] == ["t-up"]


def test_cooldowns_are_shared_by_the_workers(routing: Fleet, tmp_path: Path) -> None:
    routing.fleet.script("k-down", "503")
    first, second = routing.workers
    # Only the first worker runs while the deployment fails its allowed_fails (2) times...
    second.stop()
    try:
        for _ in range(2):
            assert served_text(ask(routing.url, chat("cooling"))) == "".join(answer("k-up"))
        assert routing.fleet.hits["k-down"] == 2
    finally:
        routing.workers[1] = start_worker(routing.redis_url, routing.config, tmp_path)
    # ... and only the second one runs after: it never saw a failure, yet skips it.
    first.stop()
    try:
        replies = [ask(routing.url, chat("cooling")) for _ in range(4)]
    finally:
        routing.workers[0] = start_worker(routing.redis_url, routing.config, tmp_path)
    assert [served_text(r) for r in replies] == ["".join(answer("k-up"))] * 4
    assert routing.fleet.hits["k-down"] == 2
    attempts = result(routing.url, replies[-1].headers["x-spool-stream-id"])["routing"]["attempts"]
    assert [a["deployment"] for a in attempts] == ["k-up"]


def test_a_group_whose_every_deployment_cools_down_is_skipped(routing: Fleet) -> None:
    for name in ("z1", "z2", "y1", "y2"):
        routing.fleet.script(name, "429", retry_after="20")
    first = ask(routing.url, chat("frozen"))
    assert served_text(first) == "".join(answer("c-up"))
    later = ask(routing.url, chat("frozen"))
    assert served_text(later) == "".join(answer("c-up"))
    attempts = result(routing.url, later.headers["x-spool-stream-id"])["routing"]["attempts"]
    assert [a["deployment"] for a in attempts] == ["c-up"]
    assert routing.fleet.hits["z1"] == routing.fleet.hits["z2"] == 1
    # With nowhere else to go: a 503 that says why, and no upstream asked.
    refused = ask(routing.url, chat("cold"))
    assert refused.status_code == 502  # the first time, the upstreams' own 429s
    again = ask(routing.url, chat("cold"))
    assert again.status_code == 503, again.text
    assert again.json()["error"]["code"] == "no_deployment_available"
    # When to come back: when the first deployment's cooldown (20 s) ends.
    assert 1 <= int(again.headers["retry-after"]) <= 20
    assert routing.fleet.hits["y1"] == routing.fleet.hits["y2"] == 1


def test_a_context_window_error_goes_to_the_context_window_fallback(routing: Fleet) -> None:
    routing.fleet.script("c-small", "context")
    response = ask(routing.url, chat("long-prompt"))
    assert served_text(response) == "".join(answer("c-large"))
    # The other deployment of the same model has the same window: not tried.
    assert routing.fleet.hits["c-small-2"] == 0
    info = result(routing.url, response.headers["x-spool-stream-id"])
    assert info["model"] == "long-prompt"
    assert info["routing"]["model"] == "long-context"
    assert [a["outcome"] for a in info["routing"]["attempts"]] == ["upstream_error", "ok"]
    assert response.json()["model"] == "long-prompt"  # the public name stays


def test_a_content_policy_refusal_goes_to_the_content_policy_fallback(routing: Fleet) -> None:
    routing.fleet.script("p-strict", "policy")
    response = ask(routing.url, chat("touchy"))
    assert served_text(response) == "".join(answer("p-lenient"))
    assert response.headers["x-spool-deployment"] == "p-lenient"


def test_fallbacks_chain(routing: Fleet) -> None:
    routing.fleet.script("a-down", "503")
    routing.fleet.script("b-down", "429")
    response = ask(routing.url, chat("chain-a"))
    assert served_text(response) == "".join(answer("c-up"))
    attempts = result(routing.url, response.headers["x-spool-stream-id"])["routing"]["attempts"]
    assert [(a["model"], a["deployment"]) for a in attempts] == [
        ("chain-a", "a-down"),
        ("chain-b", "b-down"),
        ("chain-c", "c-up"),
    ]


def test_every_deployment_failing_ends_with_every_attempt_listed(routing: Fleet) -> None:
    routing.fleet.script("a-down", "503")
    routing.fleet.script("b-down", "503")
    routing.fleet.script("c-up", "503")
    try:
        response = ask(routing.url, chat("chain-a"))
    finally:
        routing.fleet.script("c-up")
    assert response.status_code == 502, response.text
    assert response.json()["error"]["code"] == "upstream_error"
    info = result(routing.url, response.headers["x-spool-stream-id"])
    assert info["status"] == "failed"
    deployments = [a["deployment"] for a in info["routing"]["attempts"]]
    # Every round (upstream_max_attempts, 3) goes down the whole chain.
    assert deployments == ["a-down", "b-down", "c-up"] * 3


def test_nothing_falls_back_after_the_first_token(routing: Fleet) -> None:
    routing.fleet.script("cut-mid", "cut")
    fallback_hits = routing.fleet.hits["c-up"]
    headers, events = stream_events(routing.url, chat("cut", stream=True))
    assert chunk_text(events) == "served"  # the first token came
    assert "error" in events[-1]  # then the visible error
    assert routing.fleet.hits["cut-other"] == 0
    assert routing.fleet.hits["c-up"] == fallback_hits
    assert headers["x-spool-deployment"] == "cut-mid"
    info = result(routing.url, headers["x-spool-stream-id"])
    assert info["status"] == "failed"
    assert info["routing"]["deployment"] == "cut-mid"


# -- the auto-router ---------------------------------------------------------------------

TOOL = {
    "type": "function",
    "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}},
}
IMAGE = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="


@pytest.mark.parametrize(
    ("body", "model", "rule"),
    [
        (chat("auto", tools=[TOOL]), "tools-model", "tools"),
        (chat("auto", "word " * 2000), "long-model", "rules[1]"),
        (chat("auto", "how do I write this in Python?"), "code-model", "rules[2]"),
        (
            {
                "model": "auto",
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "what is this"},
                            {"type": "image_url", "image_url": {"url": IMAGE}},
                        ],
                    }
                ],
            },
            "vision-model",
            "rules[3]",
        ),
        (chat("auto", reasoning_effort="high"), "thinking-model", "rules[4]"),
        (chat("auto", "hello there"), "general-model", "default"),
    ],
)
def test_the_auto_router_picks_by_its_rules(
    routing: Fleet, body: dict[str, Any], model: str, rule: str
) -> None:
    response = ask(routing.url, body)
    kind = model.removesuffix("-model")
    assert served_text(response) == "".join(answer(f"{kind}-up"))
    assert response.json()["model"] == "auto"
    info = result(routing.url, response.headers["x-spool-stream-id"])
    assert info["routing"]["model"] == model and info["routing"]["rule"] == rule


def test_the_simple_surface_names_the_chosen_model(routing: Fleet) -> None:
    _, events = read_stream(
        routing.url, "/api/chat", {"model": "auto", "message": "def f(): pass", "stream": True}
    )
    tokens = [e for e in events if "token" in e and not e.get("done")]
    assert tokens and all(e["model"] == "code-model" for e in tokens)


def test_the_openai_sdk_streams_a_routed_model(routing: Fleet) -> None:
    routing.fleet.script("f-down", "503")
    client = OpenAI(base_url=f"{routing.url}/v1", api_key="unused")
    raw = client.chat.completions.with_raw_response.create(
        model="failover", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert raw.headers["x-spool-deployment"] == "f-up"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(answer("f-up"))
    assert {c.model for c in chunks} == {"failover"}


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)
