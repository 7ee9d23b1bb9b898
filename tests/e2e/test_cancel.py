"""Cancel from any replica: the stream ends with a cancelled finish and the upstream stops."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from shared.sse import SSEDecoder
from tests.conftest import Cluster
from tests.e2e.sse_client import chat_body, read_sse

pytestmark = pytest.mark.e2e


async def test_cancel_mid_stream_from_another_replica(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        body = chat_body("demo-slow", prompt="cancel me")
        head = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=body, stop_after=4
        )
        stream_id = head.headers["x-spool-stream-id"]
        cancel = await client.post(f"{cluster.other_url}/v1/streams/{stream_id}/cancel")
        assert cancel.status_code == 200 and cancel.json()["cancel_requested"] is True
        rest = await read_sse(
            client, "GET", f"{cluster.url}/v1/streams/{stream_id}",
            headers={"Last-Event-ID": head.last_id or ""},
        )  # fmt: skip
        chunks = rest.chunks()
        assert rest.events[-1][1] == "[DONE]"
        assert chunks[-1]["choices"][0]["finish_reason"] == "cancelled"
        produced = len(head.events) + len(rest.events)
        assert produced < 100, "the demo model would have produced 400 tokens"

        result = (await client.get(f"{cluster.url}/v1/streams/{stream_id}/result")).json()
        assert result["status"] == "cancelled"
        # Idempotent, and the worker wrote nothing after the finish.
        again = await client.post(f"{cluster.url}/v1/streams/{stream_id}/cancel")
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        await asyncio.sleep(0.3)
        replay = await read_sse(client, "GET", f"{cluster.url}/v1/streams/{stream_id}")
        assert replay.events == head.events + rest.events


async def test_cancel_closes_the_upstream_request(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        body = chat_body("mock-slow", prompt="upstream cancel")
        head = await read_sse(
            client, "POST", f"{cluster.url}/v1/chat/completions", json=body, stop_after=3
        )
        stream_id = head.headers["x-spool-stream-id"]
        seen = cluster.upstream.requests_for("slow")[-1]
        assert seen.closed_early_at is None
        asked = time.monotonic()
        await client.post(f"{cluster.url}/v1/streams/{stream_id}/cancel")
        closed = await asyncio.to_thread(seen.closed_early.wait, 5)
        assert closed and seen.closed_early_at is not None, "the upstream request was never closed"
        print(f"cancel → upstream closed in {(seen.closed_early_at - asked) * 1000:.1f} ms")
        result = (await client.get(f"{cluster.url}/v1/streams/{stream_id}/result")).json()
        assert result["status"] == "cancelled"
        assert result["output"]["choices"][0]["finish_reason"] == "cancelled"


async def test_cancel_racing_the_start_ends_with_one_cancelled_finish(cluster: Cluster) -> None:
    """A cancel sent right after submitting races the worker's claim; whichever side wins,
    the stream ends with exactly one cancelled finish and [DONE]."""
    async with httpx.AsyncClient(timeout=30) as client:
        async with client.stream(
            "POST", f"{cluster.url}/v1/chat/completions", json=chat_body("demo-slow", prompt="q")
        ) as resp:
            stream_id = resp.headers["x-spool-stream-id"]
            await client.post(f"{cluster.other_url}/v1/streams/{stream_id}/cancel")
            body = b"".join([c async for c in resp.aiter_bytes()])
        events = [e.data for e in SSEDecoder().feed(body)]
        assert sum('"finish_reason":"cancelled"' in d for d in events) == 1
        assert events[-1] == "[DONE]"


async def test_cancel_unknown_stream_is_404(cluster: Cluster) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{cluster.url}/v1/streams/{'f' * 32}/cancel")
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "stream_not_found"
