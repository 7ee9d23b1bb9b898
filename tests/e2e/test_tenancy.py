"""Keys, ownership, limits, budgets and hostile input, through real HTTP against API
processes with authentication on (the default)."""

from __future__ import annotations

import json
import threading
import time

import anthropic
import httpx
import openai
import pytest

from tests.conftest import TENANCY_SETTINGS as SETTINGS
from tests.conftest import UPSTREAM_KEY, Tenancy
from tests.mock_upstream import MockUpstream

pytestmark = pytest.mark.e2e


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def chat(model: str = "demo-fast", **extra: object) -> dict[str, object]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


def test_no_or_bad_key_is_401_in_each_surface_shape(tenancy: Tenancy) -> None:
    cases = [
        ("/v1/chat/completions", chat(), lambda b: b["error"]["code"] == "invalid_api_key"),
        (
            "/v1/messages",
            {**chat(), "max_tokens": 5},
            lambda b: b["type"] == "error" and b["error"]["type"] == "authentication_error",
        ),
        (
            "/v1beta/models/demo:generateContent",
            {"contents": [{"parts": [{"text": "x"}]}]},
            lambda b: b["error"]["status"] == "UNAUTHENTICATED",
        ),
        ("/api/chat", {"message": "x"}, lambda b: b["error_code"] == "invalid_api_key"),
    ]
    for path, body, shape in cases:
        for headers in ({}, bearer("sk-spool-not-a-key")):
            response = httpx.post(tenancy.url + path, json=body, headers=headers)
            assert response.status_code == 401, (path, response.text)
            assert shape(response.json()), (path, response.text)
    assert httpx.get(f"{tenancy.url}/v1/models").status_code == 401
    assert httpx.get(f"{tenancy.url}/healthz").status_code == 200


def test_each_surface_accepts_the_key_as_its_clients_send_it(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("sdk-user")
    oa = openai.OpenAI(base_url=f"{tenancy.url}/v1", api_key=secret, max_retries=0)
    assert oa.chat.completions.create(
        model="demo-fast", messages=[{"role": "user", "content": "x"}]
    )
    an = anthropic.Anthropic(base_url=tenancy.url, api_key=secret, max_retries=0)
    assert an.messages.create(
        model="demo-fast", max_tokens=5, messages=[{"role": "user", "content": "x"}]
    ).content
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    url = f"{tenancy.url}/v1beta/models/demo-fast:generateContent"
    by_header = httpx.post(url, json=body, headers={"x-goog-api-key": secret})
    by_query = httpx.post(url, json=body, params={"key": secret})
    assert by_header.status_code == by_query.status_code == 200


def test_revoked_keys_stop_working(tenancy: Tenancy) -> None:
    key_id, secret = tenancy.new_key("short-lived")
    url = f"{tenancy.url}/v1/chat/completions"
    assert httpx.post(url, json=chat(), headers=bearer(secret)).status_code == 200
    listing = tenancy.spool("keys", "list")
    assert key_id in listing and secret not in listing
    assert "revoked" in tenancy.spool("keys", "revoke", key_id)
    assert httpx.post(url, json=chat(), headers=bearer(secret)).status_code == 401


def test_streams_belong_to_their_key(tenancy: Tenancy) -> None:
    _, alice = tenancy.new_key("alice")
    _, mallory = tenancy.new_key("mallory")
    created = httpx.post(
        f"{tenancy.url}/v1/chat/completions", json=chat(stream=True), headers=bearer(alice)
    )
    stream_id = created.headers["x-spool-stream-id"]
    base = f"{tenancy.apis[1].url}/v1/streams/{stream_id}"
    for method, path in (
        ("GET", ""),
        ("GET", "/result"),
        ("POST", "/cancel"),
        ("POST", "/follow-token"),
    ):
        theirs = httpx.request(method, base + path, headers=bearer(mallory))
        assert theirs.status_code == 404, (path, theirs.text)
        assert theirs.json()["error"]["code"] == "stream_not_found"
    assert httpx.get(base + "/result", headers=bearer(alice)).status_code == 200
    # An unknown id and someone else's id answer alike, message aside.
    unknown = httpx.get(f"{tenancy.url}/v1/streams/{'e' * 32}/result", headers=bearer(mallory))
    foreign = httpx.get(base + "/result", headers=bearer(mallory))
    assert unknown.status_code == foreign.status_code == 404
    assert unknown.json()["error"]["code"] == foreign.json()["error"]["code"]


def test_follow_tokens_are_read_only_and_for_one_stream(tenancy: Tenancy) -> None:
    _, owner = tenancy.new_key("owner")
    url = f"{tenancy.url}/v1/chat/completions"
    first = httpx.post(url, json=chat(stream=True), headers=bearer(owner))
    other = httpx.post(url, json=chat(stream=True), headers=bearer(owner))
    stream_id = first.headers["x-spool-stream-id"]
    minted = httpx.post(f"{tenancy.url}/v1/streams/{stream_id}/follow-token", headers=bearer(owner))
    token = minted.json()["token"]
    streams = f"{tenancy.apis[1].url}/v1/streams"
    follow = httpx.get(f"{streams}/{stream_id}", params={"follow_token": token})
    assert follow.status_code == 200 and follow.text == first.text
    result = httpx.get(f"{streams}/{stream_id}/result", params={"follow_token": token})
    assert result.status_code == 200
    cancel = httpx.post(f"{streams}/{stream_id}/cancel", params={"follow_token": token})
    assert cancel.status_code == 401
    other_id = other.headers["x-spool-stream-id"]
    assert httpx.get(f"{streams}/{other_id}", params={"follow_token": token}).status_code == 404
    forged = httpx.get(f"{streams}/{stream_id}", params={"follow_token": "ft_forged"})
    assert forged.status_code == 404


def test_follow_tokens_are_few_per_stream_and_end_with_their_key(tenancy: Tenancy) -> None:
    owner_id, owner = tenancy.new_key("minter")
    created = httpx.post(
        f"{tenancy.url}/v1/chat/completions", json=chat(stream=True), headers=bearer(owner)
    )
    stream_id = created.headers["x-spool-stream-id"]
    mint = f"{tenancy.url}/v1/streams/{stream_id}/follow-token"
    tokens = [httpx.post(mint, headers=bearer(owner)) for _ in range(3)]  # max_follow_tokens
    assert all(t.status_code == 200 for t in tokens)
    refused = httpx.post(mint, headers=bearer(owner))
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "follow_tokens_exhausted"
    # A token lasts as long as its stream is kept (a day, by default).
    assert tokens[0].json()["expires_at"] - time.time() > 23 * 3600
    follow = f"{tenancy.apis[1].url}/v1/streams/{stream_id}"
    token = tokens[0].json()["token"]
    assert httpx.get(follow, params={"follow_token": token}).status_code == 200
    tenancy.spool("keys", "revoke", owner_id)
    assert httpx.get(follow, params={"follow_token": token}).status_code == 404


def test_a_follow_token_can_be_short_lived(tenancy: Tenancy) -> None:
    _, owner = tenancy.new_key("brief")
    created = httpx.post(
        f"{tenancy.url}/v1/chat/completions", json=chat(stream=True), headers=bearer(owner)
    )
    stream_id = created.headers["x-spool-stream-id"]
    mint = f"{tenancy.url}/v1/streams/{stream_id}/follow-token"
    brief = httpx.post(mint, json={"ttl_s": 1}, headers=bearer(owner))
    assert brief.status_code == 200
    assert brief.json()["expires_at"] - time.time() <= 1.5
    follow = f"{tenancy.apis[1].url}/v1/streams/{stream_id}"
    token = brief.json()["token"]
    assert httpx.get(follow, params={"follow_token": token}).status_code == 200
    deadline = time.monotonic() + 10
    while httpx.get(follow, params={"follow_token": token}).status_code == 200:
        assert time.monotonic() < deadline, "the token outlived its ttl_s"
        time.sleep(0.2)
    assert httpx.get(follow, params={"follow_token": token}).status_code == 404
    for bad in ({"ttl_s": 0}, {"ttl_s": "soon"}, {"lifetime": 5}):
        refused = httpx.post(mint, json=bad, headers=bearer(owner))
        assert refused.status_code in (400, 422), refused.text


def test_minting_follow_tokens_counts_against_the_keys_minute(tenancy: Tenancy) -> None:
    _, owner = tenancy.new_key("hasty-minter", "--rpm", "3")
    url = f"{tenancy.url}/v1/chat/completions"
    streams = [
        httpx.post(url, json=chat(stream=True), headers=bearer(owner)).headers["x-spool-stream-id"]
        for _ in range(2)
    ]
    # Two streams and one token use the minute's three requests; the next token waits.
    mint = f"{tenancy.url}/v1/streams/{{}}/follow-token"
    assert httpx.post(mint.format(streams[0]), headers=bearer(owner)).status_code == 200
    refused = httpx.post(mint.format(streams[1]), headers=bearer(owner))
    assert refused.status_code == 429 and 1 <= int(refused.headers["retry-after"]) <= 60


def test_two_keys_racing_their_rate_limits_across_two_replicas(tenancy: Tenancy) -> None:
    keys = [tenancy.new_key(f"racer-{n}", "--rpm", "5")[1] for n in range(2)]
    results: dict[str, list[int]] = {k: [] for k in keys}
    retry_after: list[str] = []

    def fire(secret: str, n: int) -> None:
        response = httpx.post(
            f"{tenancy.apis[n % 2].url}/v1/chat/completions",
            json=chat(max_tokens=2),
            headers=bearer(secret),
            timeout=30,
        )
        results[secret].append(response.status_code)
        if response.status_code == 429:
            assert response.json()["error"]["code"] == "rate_limit_exceeded"
            retry_after.append(response.headers["retry-after"])

    threads = [threading.Thread(target=fire, args=(k, n)) for k in keys for n in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for key in keys:
        assert sorted(results[key]) == [200] * 5 + [429] * 4, results[key]
    assert all(1 <= int(r) <= 60 for r in retry_after)


def open_stream(tenancy: Tenancy, secret: str) -> tuple[int, str | None]:
    """Start a slow stream and leave it running; (status, stream id)."""
    with httpx.stream(
        "POST",
        f"{tenancy.url}/v1/chat/completions",
        json=chat("demo-slow", stream=True),
        headers=bearer(secret),
    ) as response:
        return response.status_code, response.headers.get("x-spool-stream-id")


def test_concurrency_per_key_and_per_deployment(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("two-at-a-time", "--concurrency", "2")
    ids = []
    for _ in range(2):
        status, stream_id = open_stream(tenancy, secret)
        assert status == 200 and stream_id
        ids.append(stream_id)
    third = httpx.post(
        f"{tenancy.apis[1].url}/v1/chat/completions", json=chat("demo-slow"), headers=bearer(secret)
    )
    assert third.status_code == 429 and third.headers["retry-after"] == "1"
    httpx.post(f"{tenancy.url}/v1/streams/{ids[0]}/cancel", headers=bearer(secret))
    # Usually within milliseconds; a worker that missed the cancel message sees the flag
    # at its next lease renewal, and this machine may be busy with other suites.
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        again = httpx.post(
            f"{tenancy.url}/v1/chat/completions", json=chat(), headers=bearer(secret)
        )
        if again.status_code == 200:
            break
        time.sleep(0.1)
    assert again.status_code == 200, "the cancelled stream gave its slot back"
    httpx.post(f"{tenancy.url}/v1/streams/{ids[1]}/cancel", headers=bearer(secret))
    # Its slot is given back when its worker has ended it, which the cap below counts on.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ended = httpx.get(f"{tenancy.url}/v1/streams/{ids[1]}/result", headers=bearer(secret))
        if ended.json()["status"] == "cancelled":
            break
        time.sleep(0.05)

    # The deployment-wide cap holds across keys.
    opened, refused = [], 0
    # The keys first: on a busy machine, making 13 of them takes longer than a stream.
    crowds = [tenancy.new_key(f"crowd-{n}")[1] for n in range(13)]
    for crowd in crowds:
        status, stream_id = open_stream(tenancy, crowd)
        if status == 200:
            opened.append((crowd, stream_id))
        else:
            assert status == 429
            refused += 1
    assert len(opened) == SETTINGS["max_concurrent_generations"] and refused == 1
    for crowd, stream_id in opened:
        httpx.post(f"{tenancy.url}/v1/streams/{stream_id}/cancel", headers=bearer(crowd))


def test_a_key_that_hits_its_budget_gets_402_before_any_upstream_call(
    tenancy: Tenancy, mock_upstream: MockUpstream
) -> None:
    _, secret = tenancy.new_key("frugal", "--budget-tokens", "60")
    answers = [
        httpx.post(f"{tenancy.url}/v1/chat/completions", json=chat(), headers=bearer(secret))
        for _ in range(2)
    ]
    assert [a.status_code for a in answers] == [200, 200]
    # demo-fast answers 40 tokens; the second answer was cut to what the budget had left.
    first, second = (a.json() for a in answers)
    assert first["usage"]["completion_tokens"] == 40
    assert second["choices"][0]["finish_reason"] == "length"
    assert second["usage"]["completion_tokens"] < 40
    usage = httpx.get(f"{tenancy.url}/v1/usage", headers=bearer(secret)).json()
    spent = first["usage"]["total_tokens"] + second["usage"]["total_tokens"]
    assert usage["used_tokens"] == spent and usage["budget_tokens"] == 60
    # Over by no more than the error in one request's input estimate (the prompt "hi").
    assert 60 <= spent <= 60 + first["usage"]["prompt_tokens"]
    assert usage["reserved_tokens"] == 0
    assert usage["models"] == [
        {
            "model": "demo-fast",
            "input_tokens": spent - 40 - second["usage"]["completion_tokens"],
            "output_tokens": 40 + second["usage"]["completion_tokens"],
            "requests": 2,
        }
    ]
    seen_before = len(mock_upstream.seen)
    refused = httpx.post(
        f"{tenancy.url}/v1/chat/completions", json=chat("mock-instant"), headers=bearer(secret)
    )
    assert refused.status_code == 402
    assert refused.json()["error"]["code"] == "budget_exhausted"
    assert "budget" in refused.json()["error"]["message"]
    assert len(mock_upstream.seen) == seen_before, "no upstream call was made"


def test_input_limits(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("limits")
    h = bearer(secret)
    url = f"{tenancy.url}/v1/chat/completions"
    many = [{"role": "user", "content": "x"}] * 51
    assert httpx.post(url, json={**chat(), "messages": many}, headers=h).status_code == 400
    long = [{"role": "user", "content": "x" * 10_001}]
    assert httpx.post(url, json={**chat(), "messages": long}, headers=h).status_code == 400
    tools = [{"type": "function", "function": {"name": f"t{n}"}} for n in range(9)]
    assert httpx.post(url, json={**chat(), "tools": tools}, headers=h).status_code == 400
    deep: object = "x"
    for _ in range(41):
        deep = [deep]
    nested = httpx.post(url, json={**chat(), "metadata": deep}, headers=h)
    assert nested.status_code == 400 and "nested" in nested.json()["error"]["message"]
    huge_header = httpx.post(url, json=chat(), headers={**h, "X-Filler": "y" * 9000})
    assert huge_header.status_code == 431
    anthropic_long = httpx.post(
        f"{tenancy.url}/v1/messages",
        headers=h,
        json={
            "model": "demo-fast",
            "max_tokens": 5,
            "messages": [{"role": "user", "content": "x" * 10_001}],
        },
    )
    assert anthropic_long.status_code == 400 and anthropic_long.json()["type"] == "error"


def test_internal_upstreams_are_refused_unless_allow_listed(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("ssrf")
    refused = httpx.post(
        f"{tenancy.url}/v1/chat/completions", json=chat("internal"), headers=bearer(secret)
    )
    assert refused.status_code == 502
    assert refused.json()["error"]["code"] == "upstream_forbidden"


def test_secrets_never_leave(tenancy: Tenancy) -> None:
    key_id, secret = tenancy.new_key("secretive")
    echoed = httpx.post(
        f"{tenancy.url}/v1/chat/completions", json=chat("echo-key"), headers=bearer(secret)
    )
    assert echoed.status_code == 502
    assert UPSTREAM_KEY not in echoed.text and "[redacted]" in echoed.text
    stream_id = echoed.headers["x-spool-stream-id"]
    result = httpx.get(f"{tenancy.url}/v1/streams/{stream_id}/result", headers=bearer(secret))
    replay = httpx.get(f"{tenancy.url}/v1/streams/{stream_id}", headers=bearer(secret))
    gemini = httpx.post(
        f"{tenancy.url}/v1beta/models/demo-fast:generateContent",
        params={"key": secret},
        json={"contents": [{"parts": [{"text": "x"}]}]},
    )
    assert gemini.status_code == 200
    time.sleep(0.5)  # let the access log lines land
    for text in (result.text, replay.text, *(p.log() for p in [*tenancy.apis, tenancy.worker])):
        assert secret not in text and UPSTREAM_KEY not in text
    assert key_id in tenancy.spool("keys", "list")


def test_streams_that_end_early_are_still_charged(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("early-leaver", "--budget-tokens", "8")
    url = f"{tenancy.url}/v1/chat/completions"
    with httpx.stream(
        "POST", url, json=chat("demo-slow", stream=True), headers=bearer(secret)
    ) as r:
        stream_id = r.headers["x-spool-stream-id"]
        streamed = 0  # content chunks, not keep-alives: tokens really went out
        for line in r.iter_lines():
            streamed += line.startswith("data: {") and '"content":"' in line
            if streamed >= 9:
                break
    httpx.post(f"{tenancy.url}/v1/streams/{stream_id}/cancel", headers=bearer(secret))
    deadline = time.monotonic() + 5
    used = 0
    while time.monotonic() < deadline and not used:
        used = httpx.get(f"{tenancy.url}/v1/usage", headers=bearer(secret)).json()["used_tokens"]
        time.sleep(0.05)
    assert used >= 8, "the cancelled stream's tokens were charged"
    assert httpx.post(url, json=chat(), headers=bearer(secret)).status_code == 402


def test_provider_keys_are_redacted_from_mid_stream_errors(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("midstream")
    streamed = httpx.post(
        f"{tenancy.url}/v1/chat/completions",
        json=chat("echo-key-midstream", stream=True),
        headers=bearer(secret),
    )
    stream_id = streamed.headers["x-spool-stream-id"]
    result = httpx.get(f"{tenancy.url}/v1/streams/{stream_id}/result", headers=bearer(secret))
    for text in (streamed.text, result.text):
        assert "[redacted]" in text and UPSTREAM_KEY not in text


def test_a_follower_cannot_cancel_by_disconnecting(tenancy: Tenancy) -> None:
    _, owner = tenancy.new_key("followed")
    _, stranger = tenancy.new_key("stranger")
    url = f"{tenancy.url}/v1/chat/completions"
    with httpx.stream("POST", url, json=chat("demo-slow", stream=True), headers=bearer(owner)) as r:
        stream_id = r.headers["x-spool-stream-id"]
    token = httpx.post(
        f"{tenancy.url}/v1/streams/{stream_id}/follow-token", headers=bearer(owner)
    ).json()["token"]
    with httpx.stream(
        "GET",
        f"{tenancy.url}/v1/streams/{stream_id}",
        params={"follow_token": token},
        headers={**bearer(stranger), "X-Spool-On-Disconnect": "cancel"},
    ) as r:
        assert r.status_code == 200
        next(r.iter_lines())
    time.sleep(1)
    result = httpx.get(f"{tenancy.url}/v1/streams/{stream_id}/result", headers=bearer(owner))
    assert result.json()["status"] == "running"
    httpx.post(f"{tenancy.url}/v1/streams/{stream_id}/cancel", headers=bearer(owner))


def test_depth_limit_holds_after_leading_white_space(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("sneaky")
    deep: object = "x"
    for _ in range(300):
        deep = {"a": deep}
    body = {
        "contents": [
            {"role": "user", "parts": [{"functionResponse": {"name": "f", "response": deep}}]}
        ]
    }
    for prefix in (b" ", b"\n\t", b"\xef\xbb\xbf"):
        response = httpx.post(
            f"{tenancy.url}/v1beta/models/demo-fast:generateContent",
            content=prefix + json.dumps(body).encode(),
            headers={**bearer(secret), "content-type": "application/json"},
        )
        assert response.status_code == 400, (prefix, response.text)
        assert response.json()["error"]["status"] == "INVALID_ARGUMENT"


def test_spool_keys_stay_out_of_access_logs_however_encoded(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("encoded")
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    path = f"{tenancy.url}/v1beta/models/demo-fast:generateContent"
    assert httpx.post(f"{path}?k%65y={secret}", json=body).status_code == 200
    httpx.post(f"{path}?alt=sse;key={secret}", json=body)
    time.sleep(0.5)
    for api in tenancy.apis:
        assert secret not in api.log()


def test_an_expired_stream_is_410_for_its_owner_only(tenancy: Tenancy) -> None:
    import redis as sync_redis

    _, owner = tenancy.new_key("expiring")
    _, stranger = tenancy.new_key("prober")
    created = httpx.post(f"{tenancy.url}/v1/chat/completions", json=chat(), headers=bearer(owner))
    stream_id = created.headers["x-spool-stream-id"]
    client = sync_redis.Redis.from_url(tenancy.redis_url)
    client.delete(f"spool:{{{stream_id}}}:job", f"spool:{{{stream_id}}}:events")  # retention
    result = f"{tenancy.url}/v1/streams/{stream_id}/result"
    assert httpx.get(result, headers=bearer(owner)).status_code == 410
    assert httpx.get(result, headers=bearer(stranger)).status_code == 404
    assert httpx.get(result, params={"follow_token": "ft_x"}).status_code == 404


def test_metrics_count_requests_without_ids_or_secrets(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("metered", "--rpm", "1")
    url = f"{tenancy.url}/v1/chat/completions"
    created = httpx.post(url, json=chat(stream=True), headers=bearer(secret))
    assert httpx.post(url, json=chat(), headers=bearer(secret)).status_code == 429
    text = httpx.get(f"{tenancy.url}/metrics").text
    assert (
        'spool_http_requests_total{method="POST",route="/v1/chat/completions",status="200"}' in text
    )
    assert 'spool_admissions_refused_total{reason="limit"}' in text
    assert 'spool_generations_started_total{surface="openai.chat"}' in text
    assert "spool_open_stream_tails" in text
    assert secret not in text and created.headers["x-spool-stream-id"] not in text


def test_a_key_limited_to_models_sees_and_uses_only_those(tenancy: Tenancy) -> None:
    key_id, secret = tenancy.new_key("demo-only", "--models", "demo")
    assert f"{key_id}  demo-only  active  models=demo" in tenancy.spool("keys", "list")
    listed = httpx.get(f"{tenancy.url}/v1/models", headers=bearer(secret)).json()
    assert [m["id"] for m in listed["data"]] == ["demo"]
    hidden = httpx.get(f"{tenancy.url}/v1/models/demo-fast", headers=bearer(secret))
    assert hidden.status_code == 404
    url = f"{tenancy.url}/v1/chat/completions"
    allowed = httpx.post(url, json=chat("demo", max_tokens=2), headers=bearer(secret))
    assert allowed.status_code == 200
    # Another configured model, a pass-through name the deployment allows (demo/*), one it
    # does not, and an unknown one: all the same 404, so nothing about the table leaks.
    messages = set()
    for model in ("demo-fast", "demo/fast", "openai/gpt-4o-mini", "nope"):
        refused = httpx.post(url, json=chat(model), headers=bearer(secret))
        assert refused.status_code == 404, (model, refused.text)
        assert refused.json()["error"]["code"] == "model_not_found"
        messages.add(refused.json()["error"]["message"].replace(repr(model), "<model>"))
    assert messages == {"the model <model> does not exist or this key may not use it"}
    body = {"contents": [{"parts": [{"text": "x"}]}]}
    for path, payload, shape in (
        ("/v1/completions", {"model": "demo-fast", "prompt": "x"},
         lambda b: b["error"]["code"] == "model_not_found"),
        ("/v1/messages", {**chat("demo-fast"), "max_tokens": 5},
         lambda b: b["error"]["type"] == "not_found_error"),
        ("/v1beta/models/demo-fast:generateContent", body,
         lambda b: b["error"]["status"] == "NOT_FOUND"),
        ("/api/chat", {"message": "x", "model": "demo-fast"},
         lambda b: b["error_code"] == "model_not_found"),
    ):  # fmt: skip
        refused = httpx.post(tenancy.url + path, json=payload, headers=bearer(secret))
        assert refused.status_code == 404 and shape(refused.json()), (path, refused.text)
    # Task models too: a key for demo-fast only may not start a demo task.
    _, fast_only = tenancy.new_key("fast-only", "--models", "demo-f*")
    task = {"kind": "image", "model": "demo", "input": {"prompt": "x"}}
    refused = httpx.post(f"{tenancy.url}/v1/tasks", json=task, headers=bearer(fast_only))
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"


def test_provider_names_pass_through_only_when_allowed(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("any-model")
    url = f"{tenancy.url}/v1/chat/completions"
    refused = httpx.post(url, json=chat("openai/gpt-4o-mini"), headers=bearer(secret))
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "model_not_found"
    assert "pass-through" in refused.json()["error"]["message"]
    # demo/* is allowed by default.
    allowed = httpx.post(url, json=chat("demo/x", max_tokens=2), headers=bearer(secret))
    assert allowed.status_code == 200


def test_a_key_in_the_query_string_counts_only_on_geminis_routes(tenancy: Tenancy) -> None:
    _, secret = tenancy.new_key("in-the-url")
    created = httpx.post(
        f"{tenancy.url}/v1/chat/completions", json=chat(stream=True), headers=bearer(secret)
    )
    stream_id = created.headers["x-spool-stream-id"]
    for path in (f"/v1/streams/{stream_id}", f"/v1/streams/{stream_id}/result", "/v1/models"):
        assert httpx.get(tenancy.url + path, params={"key": secret}).status_code == 401
    gemini = httpx.post(
        f"{tenancy.url}/v1beta/models/demo-fast:generateContent",
        params={"key": secret},
        json={"contents": [{"parts": [{"text": "x"}]}]},
    )
    assert gemini.status_code == 200
