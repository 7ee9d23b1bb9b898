"""The browser tier: Debian's Chromium, driven by Playwright, against real Spool processes.

A deployment of its own, with keys on as `make run` has them: Redis, one worker, and two
API replicas on one config each, the same but for `cors_origins` (the first allows the
test page's origin, the second allows none); plus a tiny web server on another port, the
"other origin" a third-party page comes from. Without /usr/bin/chromium every test here
fails, saying what to install (`make test-browser`; `.ci/run` installs it). Nothing here
downloads a browser.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from shared.redis.embedded import EmbeddedRedis, free_port
from tests.processes import (
    SpoolProcess,
    create_key,
    start_api,
    start_worker,
    wait_ready,
    write_config,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
SPOOL_JS = Path(__file__).resolve().parents[2] / "api" / "static" / "spool.js"
PAGE_TIMEOUT_MS = 20_000

BROWSER_MODELS = {
    # About 2.5 s a stream: long enough to drop, stop or follow halfway.
    "demo-steady": {"provider": "demo", "tokens_per_second": 25, "max_output_tokens": 60},
    "demo-long": {"provider": "demo", "tokens_per_second": 20, "max_output_tokens": 400},
}
BROWSER_SETTINGS = {"keepalive_interval_s": 1.0, "upstream_allowlist": "127.0.0.1"}

THIRD_PARTY_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>another origin</title></head><body>
<script type="module">
import { Spool, eventText } from "./spool.js";
// A page of another origin that streams from Spool, dropping once after `dropAfter` events.
window.streamFrom = async (baseUrl, apiKey, dropAfter) => {
  const stream = new Spool({ baseUrl, apiKey }).stream("/v1/chat/completions", {
    model: "demo-steady", messages: [{ role: "user", content: "from another origin" }],
  });
  let text = "";
  let count = 0;
  for await (const event of stream) {
    text += eventText(event);
    if (++count === dropAfter) stream.drop();
  }
  return { text, id: stream.id, resumes: stream.resumes };
};
document.body.dataset.ready = "true";
</script></body></html>
"""


class _PageHandler(BaseHTTPRequestHandler):
    """Serves the third-party page and its own copy of spool.js (so that loading the
    module is no cross-origin request: only the calls to Spool are)."""

    def do_GET(self) -> None:
        if self.path == "/":
            body, kind = THIRD_PARTY_PAGE, "text/html; charset=utf-8"
        elif self.path == "/spool.js":
            body, kind = SPOOL_JS.read_bytes(), "text/javascript; charset=utf-8"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Site:
    """The deployment the browser talks to."""

    url: str  # a replica with CORS on for `page_origin`
    cors_off_url: str  # a replica of the same deployment with CORS off
    key: str
    page_origin: str

    def result(self, stream_id: str) -> dict[str, object]:
        answer = httpx.get(
            f"{self.url}/v1/streams/{stream_id}/result",
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return answer.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def page_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _PageHandler)
    thread = threading.Thread(target=server.serve_forever, name="third-party-page", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory, page_server: str) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("browser")
    redis = EmbeddedRedis(workdir / "redis", appendonly=False)
    redis.start()
    cors_on = write_config(
        workdir / "spool.yaml", BROWSER_MODELS, cors_origins=[page_server], **BROWSER_SETTINGS
    )
    cors_off = write_config(workdir / "spool-no-cors.yaml", BROWSER_MODELS, **BROWSER_SETTINGS)
    procs: list[SpoolProcess] = []
    try:
        procs.append(start_worker(redis.url, cors_on, workdir))
        procs.append(start_api(redis.url, cors_on, workdir))
        procs.append(start_api(redis.url, cors_off, workdir))
        wait_ready(procs[1].url)
        key = create_key(cors_on, redis.url, "browser")
        yield Site(procs[1].url, procs[2].url, key, page_server)
    finally:
        for proc in procs:
            proc.stop()
        redis.stop()


@pytest.fixture(scope="session", autouse=True)
def chromium() -> Path:
    """Every test of this tier fails, saying what to install, without the browser."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"the browser tests need Debian's Chromium at {CHROMIUM}: "
            "run `apt-get install chromium` (as root), then `make test-browser`",
            pytrace=False,
        )
    return CHROMIUM


@pytest.fixture(scope="session")
def playwright(chromium: Path) -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="session")
def browser(playwright: Playwright) -> Iterator[Browser]:
    launched = playwright.chromium.launch(
        executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
    )
    yield launched
    launched.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()
    ctx.set_default_timeout(PAGE_TIMEOUT_MS)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()
