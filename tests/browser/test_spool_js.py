"""`/static/spool.js` in Chromium on a scripted `fetch`: the SSE parser (line ends, split
reads, multi-line data, comments, `retry:`), and the cases real processes do not produce on
demand: a body that errors, a tail's own error event, a 503 and a 204 on resume, a POST
that never reached Spool."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Page

from tests.browser.conftest import Site

# Helpers in the page: `scripted(answers)` is a fetch that answers from a list (a body is a
# list of strings sent as separate reads, `fail` errors the body after them, `throw` fails
# the request) and records each request.
HELPERS = """
window.spool = await import("/static/spool.js");
window.scripted = (answers) => {
  const requests = [];
  const fetch = async (url, init) => {
    requests.push({ url, method: init.method, headers: init.headers ?? {}, body: init.body });
    const answer = answers.shift();
    if (answer.throw) throw new TypeError(answer.throw);
    const encoder = new TextEncoder();
    const pieces = [...(answer.body ?? [])];
    // One piece a read; an error only once they are read (an error drops what is queued).
    const body = new ReadableStream({
      pull(controller) {
        if (pieces.length) controller.enqueue(encoder.encode(pieces.shift()));
        else if (answer.fail) controller.error(new TypeError("network error"));
        else controller.close();
      },
    });
    return new Response(answer.status === 204 ? null : body, {
      status: answer.status ?? 200,
      headers: {
        "Content-Type": answer.type ?? "text/event-stream",
        "X-Spool-Stream-Id": "s1",
      },
    });
  };
  return { fetch, requests };
};
window.readAll = async (stream) => {
  const events = [];
  for await (const e of stream) events.push([e.id, e.event, e.data]);
  return events;
};
"""


def in_page(page: Page, site: Site, body: str, arg: Any = None) -> Any:
    page.goto(f"{site.url}/playground")
    return page.evaluate(f"async (arg) => {{ {HELPERS}\n{body} }}", arg)


def test_the_parser_follows_the_sse_specification(page: Page, site: Site) -> None:
    text = (
        "\ufeff: a comment\r\nevent: named\r\ndata: one\r\ndata:two\r\nid: 7\r\n\r\n"
        "data: after\n\nretry: 1500\nid\ndata: x\r\rdata: é日本\n\ndata: unfinished"
    )
    got = in_page(
        page,
        site,
        """
        const bytes = new TextEncoder().encode(arg);
        const run = (cuts) => {
          const parser = new spool.SSEParser();
          const out = [];
          let at = 0;
          for (const cut of [...cuts, bytes.length]) {
            out.push(...parser.push(bytes.slice(at, cut)));
            at = cut;
          }
          out.push(...parser.end());
          return { events: out.map((e) => [e.event, e.data, e.ownId, e.lastEventId]),
                   retry: parser.retry };
        };
        const whole = run([]);
        // Every way of cutting the bytes in two (CRLF, UTF-8 and all) parses the same.
        const splits = [];
        for (let i = 1; i < bytes.length; i++) splits.push(JSON.stringify(run([i])));
        return { whole, same: splits.every((s) => s === JSON.stringify(whole)) };
        """,
        text,
    )
    assert got["same"]
    assert got["whole"]["retry"] == 1500
    assert got["whole"]["events"] == [
        ["named", "one\ntwo", "7", "7"],
        ["message", "after", None, "7"],
        ["message", "x", "", ""],  # an empty id line forgets the last id
        ["message", "é日本", None, ""],
    ]  # "unfinished" never got its blank line: dropped


def test_drops_resume_in_turn_on_each_replica_with_the_last_id(page: Page, site: Site) -> None:
    chunk = 'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"%s"}}]}\n'
    answers = [
        {"body": ["retry: 20\n", chunk % "a", "id: 1-0\n\n"], "fail": True},
        # The replica lost its storage: an error and [DONE] without ids, then the end.
        {"body": [chunk % "b" + "id: 2-0\n\n", 'data: {"error": {}}\n\ndata: [DONE]\n\n']},
        {"status": 503, "type": "application/json", "body": ['{"error": {"message": "busy"}}']},
        {"throw": "Failed to fetch"},
        {"body": [chunk % "c" + "id: 3-0\n\n", "data: [DONE]\nid: 3-0:1\n\n"]},
    ]
    got = in_page(
        page,
        site,
        """
        const { fetch, requests } = scripted(arg);
        const client = new spool.Spool({
          baseUrls: ["http://a", "http://b/"], apiKey: "sk-test", fetch,
        });
        const drops = [];
        const opens = [];
        const stream = client.stream("/v1/chat/completions", { model: "m", messages: [] }, {
          onDrop: (d) => drops.push(d.reason),
          onOpen: (o) => opens.push([o.baseUrl, o.resumedFrom]),
        });
        const events = await readAll(stream);
        const summary = await stream.done;
        return { events, drops, opens, summary, retryMs: stream.retryMs, requests,
                 text: "" };
        """,
        answers,
    )
    assert [e[0] for e in got["events"]] == ["1-0", "2-0", "3-0", "3-0:1"]
    assert got["retryMs"] == 20
    assert got["summary"]["how"] == "end" and got["summary"]["resumes"] == 2
    first, *resumes = got["requests"]
    assert first["method"] == "POST" and first["url"] == "http://a/v1/chat/completions"
    assert first["headers"]["Authorization"] == "Bearer sk-test"
    assert '"stream":true' in first["body"]
    assert [(r["method"], r["url"]) for r in resumes] == [
        ("GET", "http://b/v1/streams/s1"),
        ("GET", "http://a/v1/streams/s1"),
        ("GET", "http://b/v1/streams/s1"),
        ("GET", "http://a/v1/streams/s1"),
    ]
    assert [r["headers"]["Last-Event-ID"] for r in resumes] == ["1-0", "2-0", "2-0", "2-0"]
    assert all("sk-test" not in r["url"] for r in got["requests"])
    assert got["drops"][0] == "network error: network error"
    assert got["drops"][1].startswith("the replica ended the tail")
    assert got["drops"][2].startswith("resume refused: 503 busy")
    assert got["opens"] == [["http://a", None], ["http://b", "1-0"], ["http://a", "2-0"]]


def test_follow_ends_on_204_and_each_surface_knows_its_end(page: Page, site: Site) -> None:
    got = in_page(
        page,
        site,
        """
        const follow = (answers, options = {}) => {
          const { fetch, requests } = scripted(answers);
          const stream = new spool.Spool({ fetch }).follow("s1", options);
          return readAll(stream).then(async (events) => ({
            events, summary: await stream.done, surface: stream.surface, requests,
          }));
        };
        const done = await follow([{ status: 204 }], { followToken: "ft_x", lastEventId: "9-0" });
        const gemini = await follow([
          { body: ['data: {"candidates":[{"content":{"parts":[{"text":"hi"}]}}],'
                   + '"responseId":"5-0"}\\n\\n'] },
          { body: ['data: {"candidates":[{"finishReason":"STOP","content":{"parts":[]}}],'
                   + '"responseId":"6-0"}\\n\\n', 'data: {"never": "read"}\\n\\n'] },
        ]);
        const anthropic = await follow([{ body: [
          'event: message_start\\ndata: {"type":"message_start"}\\nid: 1-0:0\\n\\n',
          'event: message_stop\\ndata: {"type":"message_stop"}\\nid: 1-0\\n\\n',
        ] }]);
        const simple = await follow([{ body: [
          'data: {"token":"x","done":false}\\nid: 1-0\\n\\n',
          'data: {"done":true,"finish_reason":"stop"}\\nid: 2-0\\n\\n',
        ] }]);
        return { done, gemini, anthropic, simple };
        """,
    )
    done = got["done"]
    assert done["events"] == [] and done["summary"]["how"] == "nothing-left"
    (request,) = done["requests"]
    assert request["url"] == "/v1/streams/s1?follow_token=ft_x"
    assert (
        request["headers"]["Last-Event-ID"] == "9-0" and "Authorization" not in request["headers"]
    )
    gemini = got["gemini"]
    assert gemini["surface"] == "gemini" and [e[0] for e in gemini["events"]] == ["5-0", "6-0"]
    assert gemini["requests"][1]["headers"]["Last-Event-ID"] == "5-0"  # its id: responseId
    assert got["anthropic"]["surface"] == "anthropic"
    assert [e[1] for e in got["anthropic"]["events"]] == ["message_start", "message_stop"]
    assert got["simple"]["surface"] == "simple" and len(got["simple"]["events"]) == 2
    assert all(g["summary"]["how"] == "end" for g in (gemini, got["anthropic"], got["simple"]))


def test_what_cannot_be_resumed_fails_the_stream(page: Page, site: Site) -> None:
    got = in_page(
        page,
        site,
        """
        const attempt = async (answers, retry) => {
          const { fetch, requests } = scripted(answers);
          const stream = new spool.Spool({ fetch, retry }).stream("/api/chat", { message: "m" });
          try {
            await readAll(stream);
            return { ok: true };
          } catch (error) {
            return { message: error.message, status: error.status, requests: requests.length };
          }
        };
        const first = { body: ['data: {"token":"x","done":false}\\nid: 1-0\\n\\n'] };
        return {
          unreached: await attempt([{ throw: "Failed to fetch" }]),
          refused: await attempt([{ status: 401, type: "application/json",
                                    body: ['{"error": {"message": "no key"}}'] }]),
          expired: await attempt([first, { status: 410, type: "application/json",
                                           body: ['{"error": {"message": "expired"}}'] }]),
          lost: await attempt([first, ...Array(4).fill({ throw: "Failed to fetch" })],
                              { baseMs: 1, maxAttempts: 3 }),
        };
        """,
    )
    assert got["unreached"]["message"] == "could not start the stream: Failed to fetch"
    assert got["unreached"]["requests"] == 1  # a POST is never sent twice
    assert got["refused"]["status"] == 401 and "no key" in got["refused"]["message"]
    assert got["expired"]["status"] == 410 and "expired" in got["expired"]["message"]
    assert "could not be resumed after 3 attempts" in got["lost"]["message"]
    assert got["lost"]["requests"] == 4
