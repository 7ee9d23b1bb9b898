"""What a browser needs of Spool, checked at the HTTP level: CORS for the allowed origins
only (preflights, and headers on every answer, streams and refusals alike), and `204 No
Content` for a resume with nothing left, which is what ends an `EventSource`'s
reconnecting."""

from __future__ import annotations

import httpx

from shared.sse import SSEDecoder
from tests.conftest import Cluster

ALLOWED = "http://app.example"


def chat(stream: bool = True) -> dict[str, object]:
    return {"model": "demo-fast", "stream": stream, "messages": [{"role": "user", "content": "hi"}]}


def test_a_preflight_from_an_allowed_origin_is_answered(cluster: Cluster) -> None:
    answer = httpx.options(
        f"{cluster.url}/v1/chat/completions",
        headers={
            "Origin": ALLOWED,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type, last-event-id",
        },
    )
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in answer.headers["access-control-allow-methods"]
    allowed = answer.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "last-event-id" in allowed


def test_a_stream_and_a_refusal_carry_the_headers_a_page_needs(cluster: Cluster) -> None:
    with httpx.Client(timeout=30) as client:
        with client.stream(
            "POST", f"{cluster.url}/v1/chat/completions", json=chat(), headers={"Origin": ALLOWED}
        ) as streamed:
            assert streamed.headers["access-control-allow-origin"] == ALLOWED
            exposed = streamed.headers["access-control-expose-headers"].lower()
            assert "x-spool-stream-id" in exposed
            stream_id = streamed.headers["x-spool-stream-id"]
            streamed.read()
        follow = client.get(
            f"{cluster.other_url}/v1/streams/{stream_id}", headers={"Origin": ALLOWED}
        )
        assert follow.headers["access-control-allow-origin"] == ALLOWED
        refused = client.post(
            f"{cluster.url}/v1/chat/completions",
            content=b"{",
            headers={"Origin": ALLOWED, "Content-Type": "application/json"},
        )
        assert refused.status_code == 400
        assert refused.headers["access-control-allow-origin"] == ALLOWED


def test_other_origins_get_no_cors_headers(cluster: Cluster) -> None:
    other = "http://elsewhere.example"
    preflight = httpx.options(
        f"{cluster.url}/v1/chat/completions",
        headers={"Origin": other, "Access-Control-Request-Method": "POST"},
    )
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers
    answer = httpx.post(
        f"{cluster.url}/v1/chat/completions", json=chat(False), headers={"Origin": other}
    )
    assert answer.status_code == 200
    assert "access-control-allow-origin" not in answer.headers


def test_a_resume_with_nothing_left_is_204(cluster: Cluster) -> None:
    with httpx.Client(timeout=30) as client:
        created = client.post(f"{cluster.url}/v1/chat/completions", json=chat())
        events = list(SSEDecoder().feed(created.content))
        last_id = events[-1].id
        assert last_id
        stream_id = created.headers["x-spool-stream-id"]
        url = f"{cluster.other_url}/v1/streams/{stream_id}"
        done = client.get(url, headers={"Last-Event-ID": last_id})
        assert done.status_code == 204 and done.content == b""
        # Resuming from an earlier event still gets the rest.
        rest = client.get(url, headers={"Last-Event-ID": events[-2].id})
        assert rest.status_code == 200
        assert [e.data for e in SSEDecoder().feed(rest.content)] == ["[DONE]"]


def test_streams_tell_a_browser_to_reconnect_promptly(cluster: Cluster) -> None:
    with httpx.Client(timeout=30) as client:
        created = client.post(f"{cluster.url}/v1/chat/completions", json=chat())
        # Keep-alives (comment lines) may come first on a busy machine.
        first = created.content.replace(b": ping\n", b"").split(b"\n\n")[0]
        # In the first event's own block (a block with no data would be an empty event).
        assert first.startswith(b"retry: 1000\n") and b"\ndata: " in first
        assert created.content.count(b"retry:") == 1
        events = list(SSEDecoder().feed(created.content))
        stream_id = created.headers["x-spool-stream-id"]
        resumed = client.get(
            f"{cluster.other_url}/v1/streams/{stream_id}",
            headers={"Last-Event-ID": events[2].id or ""},
        )
        assert resumed.content.replace(b": ping\n", b"").startswith(b"retry: 1000\n")
        # Gemini's stream speaks no SSE field but data (google-genai reads any other line
        # as JSON): no retry there.
        gemini = client.post(
            f"{cluster.url}/v1beta/models/demo-fast:streamGenerateContent?alt=sse",
            json={"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
        )
        assert gemini.status_code == 200 and b"retry:" not in gemini.content
