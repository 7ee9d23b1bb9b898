"""Content policy end to end: real API and worker processes, scripted upstreams and a
moderation endpoint in OpenAI's shape. A blocked input is a 400 in each surface's shape;
output blocked mid-stream ends with each surface's own content-filter finish, keeps the
partial text in /result (marked) and resumes like any stream; a slow or failing
moderation endpoint fails open or closed as configured; decisions are counted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from httpx_sse import connect_sse

from shared.redis.embedded import EmbeddedRedis
from tests.mock_fleet import MockFleet, deployment
from tests.mock_moderation import MockModeration
from tests.processes import (
    SpoolProcess,
    create_key,
    start_api,
    start_worker,
    wait_ready,
    write_config,
)

pytestmark = pytest.mark.e2e

LEAKY = ["Here ", "is ", "the ", "secret", "-42", " you ", "asked ", "for."]
CLEAN = ["All ", "fine ", "here."]


@dataclass
class Guarded:
    api: SpoolProcess
    worker: SpoolProcess
    fleet: MockFleet
    moderation: MockModeration
    key: str  # a key of its own, with no policy
    strict_key: str  # a key whose policy is `strict`

    @property
    def url(self) -> str:
        return self.api.url

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}


@pytest.fixture(scope="module")
def guarded(
    tmp_path_factory: pytest.TempPathFactory, redis_server: EmbeddedRedis
) -> Iterator[Guarded]:
    fleet = MockFleet().start()
    moderation = MockModeration().start()
    fleet.script("leaky", text=LEAKY)
    fleet.script("clean", text=CLEAN)
    fleet.script("rude", text=["You ", "are ", "a ", "badword."])
    moderated = {"moderation_url": moderation.url, "moderation_timeout_s": 0.5}
    policies = {
        "strict": {"blocked_terms": ["forbidden-word"], "patterns": ["(?i)secret-[0-9]+"]},
        "mod-open": {**moderated, "on_error": "open"},
        "mod-closed": {**moderated, "on_error": "closed"},
        "out-closed": {**moderated, "on_error": "closed", "apply_to": ["output"]},
    }
    models = {
        "guarded": {**deployment(fleet, "leaky"), "policy": "strict"},
        "open": deployment(fleet, "leaky"),
        "mod-open": {**deployment(fleet, "clean"), "policy": "mod-open"},
        "mod-closed": {**deployment(fleet, "clean"), "policy": "mod-closed"},
        "mod-rude": {**deployment(fleet, "rude"), "policy": "mod-open"},
        "out-closed": {**deployment(fleet, "clean"), "policy": "out-closed"},
    }
    workdir = tmp_path_factory.mktemp("policy")
    config = write_config(
        workdir / "spool.yaml",
        models,
        policies=policies,
        keepalive_interval_s=0.5,
        upstream_allowlist="127.0.0.1",
    )
    redis_url = redis_server.url.replace("/0", "/10")  # a database no other suite uses
    worker = start_worker(redis_url, config, workdir)
    api = start_api(redis_url, config, workdir)
    try:
        wait_ready(api.url)
        key = create_key(config, redis_url, "plain")
        strict = create_key(config, redis_url, "careful", "--policy", "strict")
        yield Guarded(api, worker, fleet, moderation, key, strict)
    finally:
        api.stop()
        worker.stop()
        fleet.stop()
        moderation.stop()


def chat(model: str, content: str = "hi", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


# Each surface: how to ask for a stream, and where its finish is spelled.
SURFACES: dict[str, tuple[str, Any]] = {
    "chat": ("/v1/chat/completions", lambda m, t: chat(m, t, stream=True)),
    "completions": ("/v1/completions", lambda m, t: {"model": m, "prompt": t, "stream": True}),
    "anthropic": (
        "/v1/messages",
        lambda m, t: {**chat(m, t), "max_tokens": 100, "stream": True},
    ),
    "gemini": (
        "/v1beta/models/{model}:streamGenerateContent?alt=sse",
        lambda m, t: {"contents": [{"role": "user", "parts": [{"text": t}]}]},
    ),
    "simple": ("/api/chat", lambda m, t: {"model": m, "message": t, "stream": True}),
    "responses": ("/v1/responses", lambda m, t: {"model": m, "input": t, "stream": True}),
}


def stream(
    g: Guarded, surface: str, model: str, text: str = "hi"
) -> tuple[httpx.Response, list[tuple[str | None, dict[str, Any]]]]:
    path, body = SURFACES[surface]
    url = g.url + path.format(model=model)
    with (
        httpx.Client(timeout=30) as client,
        connect_sse(client, "POST", url, json=body(model, text), headers=g.headers()) as source,
    ):
        if source.response.status_code != 200:
            source.response.read()
            return source.response, []
        events = [
            (e.id or None, orjson.loads(e.data))
            for e in source.iter_sse()
            if e.data and e.data != "[DONE]"
        ]
        return source.response, events


def text_and_finish(surface: str, events: list[dict[str, Any]]) -> tuple[str, Any]:
    if surface == "chat":
        text = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]
        )
        return text, next(
            e["choices"][0]["finish_reason"]
            for e in events
            if e["choices"] and e["choices"][0]["finish_reason"]
        )
    if surface == "completions":
        text = "".join(e["choices"][0]["text"] for e in events if e["choices"])
        return text, next(
            e["choices"][0]["finish_reason"]
            for e in events
            if e["choices"] and e["choices"][0]["finish_reason"]
        )
    if surface == "anthropic":
        text = "".join(
            e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta"
        )
        return text, next(e["delta"]["stop_reason"] for e in events if e["type"] == "message_delta")
    if surface == "gemini":
        text = "".join(
            p.get("text", "")
            for e in events
            for c in e["candidates"]
            for p in c.get("content", {}).get("parts", [])
        )
        return text, events[-1]["candidates"][0]["finishReason"]
    if surface == "simple":
        return "".join(e.get("token", "") for e in events), events[-1]["finish_reason"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    last = events[-1]
    return text, (last["type"], last["response"]["incomplete_details"]["reason"])


FINISHES = {
    "chat": "content_filter",
    "completions": "content_filter",
    "anthropic": "refusal",
    "gemini": "SAFETY",
    "simple": "content_filter",
    "responses": ("response.incomplete", "content_filter"),
}


@pytest.mark.parametrize("surface", list(SURFACES))
def test_output_blocked_mid_stream_ends_with_each_surfaces_finish(
    guarded: Guarded, surface: str
) -> None:
    response, events = stream(guarded, surface, "guarded")
    assert response.status_code == 200
    text, finish = text_and_finish(surface, [e for _, e in events])
    assert finish == FINISHES[surface]
    # What came before the block stays; nothing after it is sent.
    assert text.startswith("Here is the secret") and "asked" not in text
    stream_id = response.headers["x-spool-stream-id"]
    result = httpx.get(
        f"{guarded.url}/v1/streams/{stream_id}/result", headers=guarded.headers()
    ).json()
    assert result["status"] == "completed"
    assert result["filtered"] == {
        "policy": "strict",
        "reason": "blocked pattern '(?i)secret-[0-9]+'",
        "source": "patterns",
    }


@pytest.mark.parametrize("surface", list(SURFACES))
def test_blocked_input_is_a_400_in_each_surfaces_shape(guarded: Guarded, surface: str) -> None:
    response, _ = stream(guarded, surface, "guarded", "say the Forbidden-Word please")
    assert response.status_code == 400, response.text
    body = response.json()
    assert "content policy 'strict'" in response.text and "forbidden-word" in response.text
    if surface in ("chat", "completions", "responses"):
        assert body["error"]["code"] == "content_policy"
    elif surface == "anthropic":
        assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    elif surface == "gemini":
        assert body["error"]["code"] == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    else:
        assert body["error_code"] == "content_policy"


def test_a_blocked_input_never_reaches_the_upstream(guarded: Guarded) -> None:
    before = guarded.fleet.hits["leaky"]
    response = httpx.post(
        f"{guarded.url}/v1/chat/completions",
        json=chat("guarded", "forbidden-word"),
        headers=guarded.headers(),
    )
    assert response.status_code == 400
    assert guarded.fleet.hits["leaky"] == before


def test_a_filtered_stream_resumes_exactly(guarded: Guarded) -> None:
    response, events = stream(guarded, "chat", "guarded")
    stream_id = response.headers["x-spool-stream-id"]
    with httpx.Client(timeout=30) as client:
        for n in (0, 2, len(events) - 2):
            headers = guarded.headers()
            if n:
                headers["Last-Event-ID"] = str(events[n - 1][0])
            with connect_sse(
                client, "GET", f"{guarded.url}/v1/streams/{stream_id}", headers=headers
            ) as source:
                again = [
                    (e.id or None, orjson.loads(e.data))
                    for e in source.iter_sse()
                    if e.data and e.data != "[DONE]"
                ]
            assert again == events[n:] if n else again == events


def test_a_keys_policy_applies_on_top_of_the_models(guarded: Guarded) -> None:
    body = chat("open", "a forbidden-word here")
    plain = httpx.post(f"{guarded.url}/v1/chat/completions", json=body, headers=guarded.headers())
    assert plain.status_code == 200
    strict = httpx.post(
        f"{guarded.url}/v1/chat/completions", json=body, headers=guarded.headers(guarded.strict_key)
    )
    assert strict.status_code == 400 and strict.json()["error"]["code"] == "content_policy"
    # ... and on the output of a model that has none.
    answered = httpx.post(
        f"{guarded.url}/v1/chat/completions",
        json=chat("open"),
        headers=guarded.headers(guarded.strict_key),
    ).json()
    assert answered["choices"][0]["finish_reason"] == "content_filter"


# -- an external moderation endpoint --------------------------------------------------------


def ask(g: Guarded, model: str, text: str = "hi") -> httpx.Response:
    return httpx.post(
        f"{g.url}/v1/chat/completions", json=chat(model, text), headers=g.headers(), timeout=30
    )


def test_moderation_flags_input_and_output(guarded: Guarded) -> None:
    guarded.moderation.reset("normal")
    flagged = ask(guarded, "mod-open", "you badword")
    assert flagged.status_code == 400 and "harassment" in flagged.text
    rude = ask(guarded, "mod-rude")
    assert rude.status_code == 200
    assert rude.json()["choices"][0]["finish_reason"] == "content_filter"
    result = httpx.get(
        f"{guarded.url}/v1/streams/{rude.headers['x-spool-stream-id']}/result",
        headers=guarded.headers(),
    ).json()
    assert result["filtered"]["source"] == "moderation"
    assert any("badword" in text for text in guarded.moderation.inputs())


@pytest.mark.parametrize("mode", ["slow", "down"])
def test_a_moderation_endpoint_in_trouble_fails_open_or_closed(guarded: Guarded, mode: str) -> None:
    guarded.moderation.reset(mode, delay_s=5)  # slow: past the policy's 0.5 s
    try:
        opened = ask(guarded, "mod-open")
        assert opened.status_code == 200
        assert opened.json()["choices"][0]["message"]["content"] == "".join(CLEAN)
        assert opened.json()["choices"][0]["finish_reason"] == "stop"
        closed = ask(guarded, "mod-closed")
        assert closed.status_code == 503
        assert closed.json()["error"]["code"] == "moderation_unavailable"
        assert closed.headers["retry-after"]
        # On the output, failing closed ends the stream filtered.
        out = ask(guarded, "out-closed")
        assert out.status_code == 200
        assert out.json()["choices"][0]["finish_reason"] == "content_filter"
    finally:
        guarded.moderation.reset("normal")
        guarded.moderation.release()


def test_policy_decisions_are_counted(guarded: Guarded) -> None:
    before = ask(guarded, "guarded", "forbidden-word")
    assert before.status_code == 400
    metrics = httpx.get(f"{guarded.url}/metrics").text
    assert (
        'spool_policy_decisions_total{outcome="blocked",policy="strict",stage="input"}' in metrics
    )
