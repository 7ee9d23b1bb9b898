"""Every error case answers with its status and OpenAI's error shape, and changes nothing."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import UPSTREAM_KEY, Cluster
from tests.e2e.sse_client import chat_body, read_sse

pytestmark = pytest.mark.e2e


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code


async def stream_count(cluster: Cluster) -> int:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(cluster.redis.url)
    try:
        return len([k async for k in client.scan_iter("spool:{*}:job")])
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 422),
        (b'{"model": "demo"}', 422),
        (b'{"model": "demo", "messages": []}', 422),
        (b'{"model": 5, "messages": [{"role": "user", "content": "x"}]}', 422),
        (b'{"model": "demo", "messages": [{"role": "wizard", "content": "x"}]}', 422),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 422),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', 422),
        (b'{"model": "demo", "messages": [{"role": "user", "content": "x"}], "n": 2}', 400),
        (b'{"model": "demo", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
         400),
    ],
)  # fmt: skip
async def test_bad_requests(cluster: Cluster, body: bytes, status: int) -> None:
    before = await stream_count(cluster)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{cluster.url}/v1/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
    assert_openai_error(response, status)
    assert await stream_count(cluster) == before, "a rejected request created a stream"


async def test_unknown_model_is_404(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{cluster.url}/v1/chat/completions", json=chat_body("gpt-nothing")
        )
    assert_openai_error(response, 404, "model_not_found")


async def test_body_too_large_is_413(cluster: Cluster) -> None:
    huge = {**chat_body(), "messages": [{"role": "user", "content": "x" * (5 * 1024 * 1024)}]}
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{cluster.url}/v1/chat/completions", json=huge)
        assert_openai_error(response, 413, "request_too_large")

        async def chunked() -> object:
            for _ in range(6):
                yield b"x" * (1024 * 1024)

        response = await client.post(
            f"{cluster.url}/v1/chat/completions",
            content=chunked(),  # type: ignore[arg-type]
            headers={"content-type": "application/json"},
        )
        assert_openai_error(response, 413, "request_too_large")


@pytest.mark.parametrize("path", ["/v1/streams/{id}", "/v1/streams/{id}/result"])
@pytest.mark.parametrize("stream_id", ["f" * 32, "not-an-id", "..%2F..%2Fetc"])
async def test_unknown_streams_are_404(cluster: Cluster, path: str, stream_id: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(cluster.url + path.format(id=stream_id))
    assert_openai_error(response, 404)


async def test_bad_resume_ids(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        first = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body()
        )
        stream_id = first.headers["x-spool-stream-id"]
        other = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body(prompt="2")
        )
        foreign_id = other.events[1][0]
        last = first.last_id or ""
        # The last entry renders two frames (`<id>:0`, then `<id>`), the first entry one.
        invalid = ("garbage", "0-0", "1-1", foreign_id, f"{last}:1", f"{first.events[0][0]}:0")
        ok = await client.get(
            f"{cluster.url}/v1/streams/{stream_id}", headers={"Last-Event-ID": f"{last}:0"}
        )
        # The first event of a response says how soon to reconnect, then the rest.
        assert ok.status_code == 200 and ok.text.startswith("retry: 1000\ndata: [DONE]")
        for bad in invalid:
            response = await client.get(
                f"{cluster.url}/v1/streams/{stream_id}", headers={"Last-Event-ID": bad}
            )
            assert_openai_error(response, 400, "invalid_last_event_id")


async def test_upstream_rate_limit_becomes_an_error_event(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        received = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body("mock-status-429")
        )
        assert received.status == 200
        error = received.chunks()[-1]["error"]
        assert "rate limited" in error["message"]
        assert received.events[-1][1] == "[DONE]"
        stream_id = received.headers["x-spool-stream-id"]
        result = (await client.get(f"{cluster.url}/v1/streams/{stream_id}/result")).json()
        assert result["status"] == "failed"
        assert result["error"]["status"] == 429 and result["error"]["retry_after"] == 7

        response = await client.post(
            f"{cluster.url}/v1/chat/completions",
            json={**chat_body("mock-status-429"), "stream": False},
        )
        assert_openai_error(response, 502, "upstream_error")
        assert response.headers["retry-after"] == "7"


async def test_upstream_failures_end_visibly(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        cut = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body("mock-no-finish")
        )
        assert cut.text() == "cut"
        assert "error" in cut.chunks()[-1] and cut.events[-1][1] == "[DONE]"

        garbage = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body("mock-garbage")
        )
        assert garbage.text() == "before after"
        assert garbage.chunks()[-1]["choices"][0]["finish_reason"] == "stop"


async def test_upstream_key_is_sent_and_never_echoed(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        received = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body("mock-instant")
        )
        stream_id = received.headers["x-spool-stream-id"]
        result = await client.get(f"{cluster.url}/v1/streams/{stream_id}/result")
    seen = cluster.upstream.requests_for("instant")[-1]
    assert seen.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"
    assert seen.body["stream"] is True and seen.body["stream_options"] == {"include_usage": True}
    assert UPSTREAM_KEY not in str(received.events) + result.text


async def test_unknown_route_and_method(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert_openai_error(await client.get(f"{cluster.url}/v1/nothing"), 404)
        assert_openai_error(await client.get(f"{cluster.url}/v1/chat/completions"), 405)


async def test_resuming_from_the_last_event_ends_at_once(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=5) as client:
        first = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body(prompt="end")
        )
        stream_id = first.headers["x-spool-stream-id"]
        rest = await read_sse(
            client,
            "GET",
            f"{cluster.other_url}/v1/streams/{stream_id}",
            headers={"Last-Event-ID": first.last_id or ""},
        )
        # Nothing left: 204, which ends a browser's EventSource instead of a reconnect loop.
        assert rest.status == 204 and rest.events == []


@pytest.mark.parametrize(
    "bad",
    ["99999999999999999999-0", "1-99999999999999999999", "1-1\n", "1" * 65, "5-0:²", "\u0661-0"],
)
async def test_resume_ids_that_redis_would_reject_are_400(cluster: Cluster, bad: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        first = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body(prompt="ids")
        )
        stream_id = first.headers["x-spool-stream-id"]
        response = await client.get(
            f"{cluster.url}/v1/streams/{stream_id}", params={"last_event_id": bad}
        )
    assert_openai_error(response, 400, "invalid_last_event_id")


async def test_values_that_cannot_be_stored_are_rejected(cluster: Cluster) -> None:
    deep: object = {}
    for _ in range(300):
        deep = {"x": deep}
    cases = [
        ({**chat_body(), "max_tokens": 10**23}, 422),
        ({**chat_body(), "seed": -(10**23)}, 422),
        (
            {
                **chat_body(),
                "tools": [{"type": "function", "function": {"name": "f", "parameters": deep}}],
            },
            400,
        ),
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        for body, status in cases:
            response = await client.post(f"{cluster.url}/v1/chat/completions", json=body)
            assert_openai_error(response, status)
