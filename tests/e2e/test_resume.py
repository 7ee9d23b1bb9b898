"""Resume by Last-Event-ID from another replica, concurrent readers, late readers."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from shared.sse import SSEDecoder
from tests.conftest import Cluster
from tests.e2e.sse_client import Received, chat_body, read_sse

pytestmark = pytest.mark.e2e


async def full_stream(cluster: Cluster, client: httpx.AsyncClient, stream_id: str) -> Received:
    return await read_sse(client, "GET", f"{cluster.url}/v1/streams/{stream_id}")


async def result(url: str, client: httpx.AsyncClient, stream_id: str) -> dict:  # type: ignore[type-arg]
    response = await client.get(f"{url}/v1/streams/{stream_id}/result")
    assert response.status_code == 200
    return response.json()  # type: ignore[no-any-return]


@pytest.mark.parametrize("model", ["demo-fast", "demo-slow"])
async def test_drop_and_resume_on_the_other_replica(cluster: Cluster, model: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        body = chat_body(model, prompt=f"resume test {model}", max_tokens=30)
        if model == "demo-fast":
            body["stream_options"] = {"include_usage": True}
        # A reference reading of one generation, to compare every resumed reading against.
        first = await read_sse(client, "POST", f"{cluster.url}/v1/chat/completions", json=body)
        stream_id = first.headers["x-spool-stream-id"]
        reference = await full_stream(cluster, client, stream_id)
        assert reference.events == first.events
        n = len(reference.events)
        assert n > 5 and reference.events[-1][1] == "[DONE]"
        assert all(i for i, _ in reference.events), "every data event carries an id"

        for k in sorted({1, 2, n // 2, n - 2, n - 1}):
            head = reference.events[:k]
            rest = await read_sse(
                client,
                "GET",
                f"{cluster.other_url}/v1/streams/{stream_id}",
                headers={"Last-Event-ID": head[-1][0]},  # type: ignore[dict-item]
            )
            assert rest.status == 200
            assert head + rest.events == reference.events, f"resume after {k} events"

        done = await result(cluster.other_url, client, stream_id)
        assert done["status"] == "completed"
        assert done["output"]["choices"][0]["message"]["content"] == reference.text()


async def test_drop_mid_generation_and_resume_while_running(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        body = chat_body("demo-slow", prompt="live resume", max_tokens=25)
        for k in (0, 1, 4):
            head = await read_sse(
                client, "POST", f"{cluster.url}/v1/chat/completions", json=body, stop_after=k
            )
            stream_id = head.headers["x-spool-stream-id"]
            headers = {"Last-Event-ID": head.last_id} if head.last_id else {}
            rest = await read_sse(
                client, "GET", f"{cluster.other_url}/v1/streams/{stream_id}", headers=headers
            )
            events = head.events + rest.events
            assert events[-1][1] == "[DONE]"
            ids = [i for i, _ in events]
            assert len(ids) == len(set(ids)), "no event repeated"
            whole = Received(200, rest.headers, events)
            done = await result(cluster.url, client, stream_id)
            assert done["output"]["choices"][0]["message"]["content"] == whole.text()
            assert done["output"]["choices"][0]["finish_reason"] == "length"


async def test_resume_by_query_parameter(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        first = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=chat_body(prompt="query")
        )
        stream_id = first.headers["x-spool-stream-id"]
        last_id = first.events[2][0]
        rest = await read_sse(
            client, "GET", f"{cluster.other_url}/v1/streams/{stream_id}?last_event_id={last_id}"
        )
        assert first.events[:3] + rest.events == first.events


async def test_two_readers_get_identical_events(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        body = chat_body("demo-slow", prompt="two readers", max_tokens=15)
        async with client.stream("POST", f"{cluster.url}/v1/chat/completions", json=body) as resp:
            stream_id = resp.headers["x-spool-stream-id"]
            readers = [
                read_sse(client, "GET", f"{url}/v1/streams/{stream_id}")
                for url in (cluster.url, cluster.other_url, cluster.other_url)
            ]
            original = b"".join([chunk async for chunk in resp.aiter_bytes()])
            results = await asyncio.gather(*readers)
        assert results[0].events == results[1].events == results[2].events
        assert results[0].events[-1][1] == "[DONE]"
        # The creating response carried the same events, byte for byte, plus keep-alives.
        decoder = SSEDecoder()
        creator = [(e.id, e.data) for e in decoder.feed(original)]
        assert creator == results[0].events


async def test_reader_after_completion_replays_everything(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(
            f"{cluster.url}/v1/chat/completions", json={**chat_body(prompt="late"), "stream": False}
        )
        stream_id = response.headers["x-spool-stream-id"]
        replay = await read_sse(client, "GET", f"{cluster.other_url}/v1/streams/{stream_id}")
        assert replay.events[-1][1] == "[DONE]"
        assert replay.text() == response.json()["choices"][0]["message"]["content"]


async def test_keepalive_comments_before_the_first_token(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        body = chat_body("demo-late", prompt="slow start", max_tokens=2)
        async with client.stream("POST", f"{cluster.url}/v1/chat/completions", json=body) as resp:
            assert resp.headers["cache-control"] == "no-cache"
            assert resp.headers["x-accel-buffering"] == "no"
            assert resp.headers["content-type"].startswith("text/event-stream")
            lines = [line async for line in resp.aiter_lines()]
        first_data = next(i for i, line in enumerate(lines) if line.startswith("data:"))
        assert any(line.startswith(":") for line in lines[:first_data])
