"""What a browser makes of Spool's HTTP: a page of another origin streams (and resumes)
with CORS on for it, and is refused with CORS off; a native `EventSource` on a finished
stream stops after the end (the `204`) instead of reconnecting forever."""

from __future__ import annotations

import httpx
import pytest
from playwright.sync_api import ConsoleMessage, Error, Page, Response

from shared.client import result_text
from shared.sse import SSEDecoder
from tests.browser.conftest import Site


def open_third_party_page(page: Page, site: Site) -> list[str]:
    console: list[str] = []

    def keep(message: ConsoleMessage) -> None:
        console.append(message.text)

    page.on("console", keep)
    page.goto(site.page_origin + "/")
    page.wait_for_selector("body[data-ready=true]", state="attached")
    return console


def test_a_page_of_an_allowed_origin_streams_and_resumes(page: Page, site: Site) -> None:
    open_third_party_page(page, site)
    outcome = page.evaluate("([url, key]) => window.streamFrom(url, key, 4)", [site.url, site.key])
    # The page read the stream id (an exposed header) and resumed with Last-Event-ID.
    assert outcome["resumes"] == 1
    result = site.result(outcome["id"])
    assert outcome["text"] == result_text(result) != ""


def test_a_page_of_an_origin_not_allowed_is_refused(page: Page, site: Site) -> None:
    console = open_third_party_page(page, site)
    with pytest.raises(Error, match="could not start the stream"):
        page.evaluate(
            "([url, key]) => window.streamFrom(url, key, 0)", [site.cors_off_url, site.key]
        )
    assert any("blocked by CORS policy" in line for line in console), console


def test_event_source_stops_after_the_end_of_a_finished_stream(page: Page, site: Site) -> None:
    bearer = {"Authorization": f"Bearer {site.key}"}
    with httpx.Client(base_url=site.url, headers=bearer, timeout=30) as client:
        created = client.post(
            "/v1/chat/completions",
            json={"model": "demo", "stream": True, "messages": [{"role": "user", "content": "es"}]},
        )
        stream_id = created.headers["x-spool-stream-id"]
        expected = [(e.id, e.data) for e in SSEDecoder().feed(created.content)]
        token = client.post(f"/v1/streams/{stream_id}/follow-token").json()["token"]
    answers: list[Response] = []
    page.on(
        "response", lambda r: answers.append(r) if f"/v1/streams/{stream_id}" in r.url else None
    )
    page.goto(f"{site.url}/playground")
    page.evaluate(
        """(url) => {
          window.seen = { messages: [], opens: 0 };
          const source = new EventSource(url);
          window.source = source;
          source.onopen = () => { window.seen.opens++; };
          source.onmessage = (e) => { window.seen.messages.push([e.lastEventId, e.data]); };
        }""",
        f"/v1/streams/{stream_id}?follow_token={token}",
    )
    # The stream ends, the browser reconnects once with the last id, gets 204, and closes.
    page.wait_for_function("() => window.source.readyState === EventSource.CLOSED", timeout=15_000)
    seen = page.evaluate("window.seen")
    assert [tuple(m) for m in seen["messages"]] == expected
    assert seen["opens"] == 1
    assert [a.status for a in answers] == [200, 204]
    resume = answers[1].request
    assert resume.all_headers()["last-event-id"] == expected[-1][0]
