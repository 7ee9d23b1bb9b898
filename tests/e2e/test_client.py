"""The Python client (`shared.client`) against real processes: every surface resumes
exactly after drops, across replicas, through the loss of the replica it read from; follow
tokens, cancel, tasks, and a resume with nothing left. Then, on a scripted transport, the
cases real processes do not produce on demand (a tail's own error, `retry:`, a 503)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.client import Refused, SpoolClient, SpoolStream, StreamEvent, StreamLost, result_text
from tests.conftest import E2E_SETTINGS, Cluster, Tenancy, cluster_models
from tests.processes import SpoolProcess, start_api, write_config

pytestmark = pytest.mark.e2e

PROMPT = "tell me about resumable streams"
SURFACES: dict[str, tuple[str, dict[str, Any]]] = {
    "openai-chat": (
        "/v1/chat/completions",
        {"messages": [{"role": "user", "content": PROMPT}]},
    ),
    "openai-completions": ("/v1/completions", {"prompt": PROMPT}),
    "anthropic": (
        "/v1/messages",
        {"max_tokens": 256, "messages": [{"role": "user", "content": PROMPT}]},
    ),
    "gemini": (
        "/v1beta/models/{model}:streamGenerateContent",
        {"contents": [{"role": "user", "parts": [{"text": PROMPT}]}]},
    ),
    "simple": ("/api/chat", {"message": PROMPT}),
}


def start(client: SpoolClient, surface: str, model: str, **extra: Any) -> SpoolStream:
    path, body = SURFACES[surface]
    if "{model}" in path:
        return client.stream(path.format(model=model), {**body, **extra})
    return client.stream(path, {**body, "model": model, **extra})


async def read_all(stream: SpoolStream, drop_after: tuple[int, ...] = ()) -> list[StreamEvent]:
    """Every event of the stream, cutting the connection after each count in `drop_after`."""
    events: list[StreamEvent] = []
    async for event in stream:
        events.append(event)
        if len(events) in drop_after:
            stream.drop()
    return events


def text(events: list[StreamEvent]) -> str:
    return "".join(e.text for e in events)


async def assert_exact(client: SpoolClient, stream: SpoolStream, events: list[StreamEvent]) -> None:
    """What was read across drops is the stream: the same events as one unbroken read, and
    the same text as the assembled result."""
    assert stream.stream_id is not None and stream.ended == "end"
    replay = await read_all(client.follow(stream.stream_id))
    assert [(e.id, e.event, e.data) for e in events] == [(e.id, e.event, e.data) for e in replay]
    assert len({e.id for e in events}) == len(events), "an event was delivered twice"
    result = await client.result(stream.stream_id)
    assert result["status"] == "completed"
    assert text(events) == result_text(result) != ""


@pytest.mark.parametrize("surface", list(SURFACES))
async def test_every_surface_resumes_exactly_after_drops(cluster: Cluster, surface: str) -> None:
    async with SpoolClient([cluster.url, cluster.other_url]) as client:
        stream = start(client, surface, "demo-fast")
        events = await read_all(stream, drop_after=(3, 9))
        assert stream.surface == surface.split("-")[0]
        assert stream.resumes == 2
        # Each resume started after the last event read before its drop, on the other replica.
        assert stream.resumed_from == [events[2].id, events[8].id]
        assert events[-1].is_end
        await assert_exact(client, stream, events)


async def test_a_resume_while_the_generation_is_still_running(cluster: Cluster) -> None:
    async with SpoolClient([cluster.url, cluster.other_url]) as client:
        stream = start(client, "openai-chat", "demo-slow", max_tokens=30)
        events = await read_all(stream, drop_after=(2, 5, 8))
        assert stream.resumes == 3
        await assert_exact(client, stream, events)


@pytest.fixture
def doomed_replica(cluster: Cluster, tmp_path: Path) -> Iterator[SpoolProcess]:
    """A third API replica on the cluster's Redis, for a test to kill."""
    config = write_config(tmp_path / "spool.yaml", cluster_models(cluster.upstream), **E2E_SETTINGS)
    replica = start_api(cluster.redis.url, config, tmp_path)
    yield replica
    replica.stop()


async def test_the_replica_a_stream_is_read_from_is_killed(
    cluster: Cluster, doomed_replica: SpoolProcess
) -> None:
    async with SpoolClient([doomed_replica.url, cluster.url], backoff_s=0.05) as client:
        stream = start(client, "openai-chat", "demo-slow", max_tokens=50)
        events: list[StreamEvent] = []
        async for event in stream:
            events.append(event)
            if len(events) == 5:
                doomed_replica.process.send_signal(signal.SIGKILL)
                doomed_replica.process.wait(10)
        # The resume starts after the last event delivered (one read may hold several).
        assert stream.resumes == 1 and stream.resumed_from[0] in [e.id for e in events[4:]]
        await assert_exact(client, stream, events)


async def test_a_resume_with_nothing_left_ends_without_events(cluster: Cluster) -> None:
    async with SpoolClient(cluster.url) as client:
        stream = start(client, "anthropic", "demo-fast")
        events = await read_all(stream)
        assert stream.stream_id is not None
        after = client.follow(stream.stream_id, last_event_id=events[-1].id)
        assert await read_all(after) == []
        assert after.ended == "nothing_left"
        # A follow from an earlier event gets exactly the rest, its surface told by the events.
        rest = client.follow(stream.stream_id, last_event_id=events[-3].id)
        assert [e.data for e in await read_all(rest)] == [e.data for e in events[-2:]]
        assert rest.surface == "anthropic" and rest.ended == "end"


async def test_cancel_ends_the_stream_with_a_cancelled_finish(cluster: Cluster) -> None:
    async with SpoolClient(cluster.url) as client:
        stream = start(client, "simple", "demo-slow")
        events: list[StreamEvent] = []
        async for event in stream:
            events.append(event)
            if len(events) == 3:
                cancelled = await stream.cancel()
                assert cancelled["cancel_requested"] is True
        assert events[-1].json["finish_reason"] == "cancelled"
        result = await stream.result()
        assert result["status"] == "cancelled"
        assert text(events) == result_text(result)
        assert len(events) < 100  # demo-slow has 400 tokens: the cancel stopped it


async def test_a_follower_with_a_token_reads_the_stream_but_cannot_cancel(
    tenancy: Tenancy,
) -> None:
    _, key = tenancy.new_key("client-follow")
    urls = [api.url for api in tenancy.apis]
    async with SpoolClient(urls, key) as owner, SpoolClient(urls[::-1]) as follower:
        stream = start(owner, "gemini", "demo-slow", generationConfig={"maxOutputTokens": 30})
        events: list[StreamEvent] = []
        async for event in stream:
            events.append(event)
            if len(events) == 2:
                minted = await stream.follow_token()
                assert minted["token"].startswith("ft_")
                watching = follower.follow(stream.stream_id or "", follow_token=minted["token"])
                # The second device reads along while the generation goes on.
                reading = asyncio.create_task(read_all(watching, drop_after=(4,)))
        followed = await reading
        assert [e.data for e in followed] == [e.data for e in events]
        assert watching.resumes == 1 and watching.surface == "gemini"
        result = await watching.result()
        assert text(followed) == result_text(result)
        with pytest.raises(Refused) as refused:
            await watching.cancel()
        assert refused.value.status_code == 401
        # Without the token the follower is nobody.
        with pytest.raises(Refused) as nobody:
            await read_all(follower.follow(stream.stream_id or ""))
        assert nobody.value.status_code == 401


async def test_a_task_is_followed_through_a_drop_to_its_output(cluster: Cluster) -> None:
    async with SpoolClient([cluster.url, cluster.other_url]) as client:
        task = await client.create_task(
            {"kind": "image", "model": "demo", "input": {"prompt": "harbour", "duration_s": 1}}
        )
        follow = client.follow_task(task["id"])
        events = await read_all(follow, drop_after=(3,))
        progress = [e.json["progress"] for e in events if e.event == "task.progress"]
        assert follow.resumes == 1
        assert progress == sorted(progress) and len(progress) == len(set(progress)) >= 5
        assert events[-1].event == "task.succeeded" and events[-1].is_end
        assert (await follow.result())["status"] == "succeeded"
        (output,) = events[-1].json["outputs"]
        assert output["media_type"] == "image/png"
        image = await client.http.get(cluster.url + output["url"])
        assert image.content.startswith(b"\x89PNG")


# -- on a scripted transport --------------------------------------------------------------


def sse(*events: str) -> bytes:
    return "".join(events).encode()


class Script:
    """Answers requests in order from a list; records each request."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def event_stream(body: bytes, status: int = 200) -> httpx.Response:
    return httpx.Response(
        status,
        content=body,
        headers={"content-type": "text/event-stream", "x-spool-stream-id": "s1"},
    )


async def scripted(script: Script, path: str = "/v1/chat/completions") -> list[StreamEvent]:
    http = httpx.AsyncClient(transport=httpx.MockTransport(script))
    async with SpoolClient(["http://a", "http://b"], "sk-test", http=http, backoff_s=0.001) as c:
        events = await read_all(c.stream(path, {"model": "m", "messages": []}))
    await http.aclose()
    return events


async def test_a_tails_own_error_is_not_the_streams_end() -> None:
    chunk = 'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"%s"}}]}\n'
    script = Script(
        event_stream(sse("retry: 40\n", chunk % "a", "id: 1-0\n\n")),
        # The replica lost its Redis: an error and [DONE] without ids, then the body ends.
        event_stream(
            sse(chunk % "b", "id: 2-0\n\n", 'data: {"error": {}}\n\n', "data: [DONE]\n\n")
        ),
        event_stream(b"", status=503),
        event_stream(sse(chunk % "c", "id: 3-0\n\n", "data: [DONE]\nid: 3-0:1\n\n")),
    )
    events = await scripted(script)
    assert text(events) == "abc" and [e.id for e in events] == ["1-0", "2-0", "3-0", "3-0:1"]
    first, *resumes = script.requests
    assert first.method == "POST" and first.headers["authorization"] == "Bearer sk-test"
    assert b'"stream":true' in first.content
    assert [(r.method, r.url.host, r.url.path) for r in resumes] == [
        ("GET", "b", "/v1/streams/s1"),
        ("GET", "a", "/v1/streams/s1"),
        ("GET", "b", "/v1/streams/s1"),
    ]
    assert [r.headers["last-event-id"] for r in resumes] == ["1-0", "2-0", "2-0"]
    assert all("key" not in str(r.url) for r in script.requests)


async def test_a_stream_that_cannot_start_or_resume_says_so() -> None:
    with pytest.raises(StreamLost, match="could not start"):
        await scripted(Script(httpx.ConnectError("refused")))
    refusal = httpx.Response(400, json={"error": {"message": "bad model"}})
    with pytest.raises(Refused, match="bad model") as refused:
        await scripted(Script(refusal))
    assert refused.value.status_code == 400
    expired = httpx.Response(410, json={"error": {"message": "expired"}})
    with pytest.raises(Refused, match="expired"):
        await scripted(Script(event_stream(b'data: {"choices":[]}\nid: 1-0\n\n'), expired))
    lost = [event_stream(b'data: {"choices":[]}\nid: 1-0\n\n')] + [httpx.ReadError("gone")] * 11
    with pytest.raises(StreamLost, match="after 10 attempts"):
        await scripted(Script(*lost))
