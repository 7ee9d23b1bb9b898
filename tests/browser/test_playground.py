"""The playground in Chromium: it streams with `spool dev`'s defaults, stops (cancels),
survives a forced drop with exact text, follows on a second page with a follow token, and
shows a task's progress and its output."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import BrowserContext, Page, Request

from shared.client import result_text
from shared.redis.embedded import free_port
from tests.browser.conftest import Site
from tests.processes import wait_ready

REPO = Path(__file__).resolve().parents[2]
# Every value the task's progress bar takes, as the page sets it.
RECORD_PROGRESS = """() => {
  window.progressSeen = [];
  const bar = document.getElementById("task-progress");
  new MutationObserver(() => window.progressSeen.push(bar.value))
    .observe(bar, { attributes: true, attributeFilter: ["value"] });
}"""
PLAYGROUND_SURFACES = ["openai-chat", "openai-completions", "anthropic", "gemini", "simple"]


def open_playground(page: Page, url: str, key: str) -> None:
    page.goto(f"{url}/playground")
    page.wait_for_selector("body[data-ready=true]", state="attached")
    page.fill("#api-key", key)
    page.click("#use-key")
    page.wait_for_selector("#key-status.ok")


def start_stream(page: Page, surface: str, model: str) -> None:
    page.select_option("#surface", surface)
    page.select_option("#model", model)
    page.click("#send")


def wait_for_events(page: Page, count: int) -> None:
    page.wait_for_function(
        f"() => Number(document.getElementById('event-count').textContent) >= {count}"
    )


def wait_until_ended(page: Page) -> None:
    page.wait_for_selector("#stream-state[data-state=ended]")
    page.wait_for_selector("#verdict[data-status]")


def shown(page: Page) -> str:
    return page.text_content("#output") or ""


def logged_ids(page: Page) -> list[str]:
    """The ids of the events the page logged (its lines that are events, not notes)."""
    lines = page.eval_on_selector_all("#log li", "items => items.map(i => i.textContent)")
    return [line.split(" ", 1)[0] for line in lines if not line.startswith("—")]


@pytest.fixture
def spool_dev(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """`spool dev` as `make run` starts it (embedded Redis, keys on, the demo model), in an
    empty directory: its URL and the key it prints."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPOOL_", "REDIS_"))}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "shared.cli", "dev", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        key = None
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"export SPOOL_API_KEY=(\S+)", line)
            if found:
                key = found[1]
                break
        assert key, "spool dev printed no key"
        # Keep reading what it prints, so that it never blocks on a full pipe.
        threading.Thread(target=proc.stdout.read, name="spool-dev-out", daemon=True).start()
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, timeout_s=30)
        yield url, key
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_playground_streams_with_the_make_run_defaults(
    page: Page, spool_dev: tuple[str, str]
) -> None:
    url, key = spool_dev
    open_playground(page, url, key)
    assert "demo" in page.eval_on_selector_all("#model option", "os => os.map(o => o.value)")
    start_stream(page, "openai-chat", "demo")
    wait_until_ended(page)
    assert page.get_attribute("#verdict", "data-status") == "completed"
    assert page.get_attribute("#verdict", "data-match") == "true"
    assert len(shown(page)) > 20
    # The key lives in this tab's sessionStorage and travels in a header, never in a URL.
    assert page.evaluate("sessionStorage.getItem('spool.apiKey')") == key


def test_stop_cancels_the_generation(page: Page, site: Site) -> None:
    open_playground(page, site.url, site.key)
    start_stream(page, "openai-chat", "demo-long")
    wait_for_events(page, 3)
    page.click("#stop")
    wait_until_ended(page)
    stream_id = page.text_content("#stream-id") or ""
    result = site.result(stream_id)
    assert result["status"] == "cancelled"
    assert page.get_attribute("#verdict", "data-status") == "cancelled"
    assert shown(page) == result_text(result)
    assert len(shown(page).split()) < 200  # 400 tokens unless stopped


@pytest.mark.parametrize("surface", PLAYGROUND_SURFACES)
def test_a_dropped_connection_resumes_with_the_exact_text(
    page: Page, site: Site, surface: str
) -> None:
    resumes: list[Request] = []
    page.on("request", lambda r: resumes.append(r) if "/v1/streams/" in r.url else None)
    open_playground(page, site.url, site.key)
    start_stream(page, surface, "demo-steady")
    wait_for_events(page, 5)
    page.click("#drop")
    wait_until_ended(page)
    status = page.locator("#resume-status")
    assert status.get_attribute("data-resumes") == "1"
    resumed_from = status.get_attribute("data-resumed-from")
    assert resumed_from and f"Resumed from id {resumed_from}" in (status.text_content() or "")
    # The resume was a GET of the stream after the last id the page had.
    (resume,) = [r for r in resumes if r.method == "GET" and not r.url.endswith("/result")]
    assert resume.all_headers()["last-event-id"] == resumed_from
    assert "authorization" in resume.all_headers() and "key" not in resume.url
    ids = logged_ids(page)
    assert resumed_from in ids and len(ids) == len(set(ids)), "an event was shown twice"
    result = site.result(page.text_content("#stream-id") or "")
    assert result["status"] == "completed"
    assert shown(page) == result_text(result) != ""
    assert page.get_attribute("#verdict", "data-match") == "true"


def test_a_follow_link_follows_the_stream_on_a_second_page(
    page: Page, site: Site, context: BrowserContext
) -> None:
    open_playground(page, site.url, site.key)
    start_stream(page, "anthropic", "demo-steady")
    wait_for_events(page, 3)
    page.click("#follow-link")
    link = page.wait_for_selector("#follow-href:not([hidden])")
    assert link is not None
    href = link.get_attribute("href") or ""
    assert re.search(r"/playground#follow=[0-9a-f]{32}&token=ft_", href)
    # A second tab, in a browser profile of its own: no key anywhere, only the token.
    follower_context = context.browser.new_context() if context.browser else context
    follower = follower_context.new_page()
    sent: list[Request] = []
    follower.on("request", lambda r: sent.append(r))
    follower.goto(href)
    follower.wait_for_selector("#follow-panel:not([hidden])")
    wait_until_ended(follower)
    wait_until_ended(page)
    result = site.result(page.text_content("#stream-id") or "")
    assert shown(follower) == shown(page) == result_text(result) != ""
    assert follower.get_attribute("#verdict", "data-match") == "true"
    api_calls = [r for r in sent if "/v1/" in r.url]
    assert api_calls and all("authorization" not in r.all_headers() for r in api_calls)
    assert all("follow_token=ft_" in r.url for r in api_calls)
    follower_context.close()


@pytest.mark.parametrize(
    ("kind", "element", "ready"),
    [
        ("image", "img", "e => e.complete && e.naturalWidth === 512"),
        ("audio", "audio", "e => e.readyState >= 1 && Math.abs(e.duration - 1) < 0.01"),
        ("video", "img", "e => e.complete && e.naturalWidth === 256"),
    ],
)
def test_a_task_shows_its_progress_and_its_output(
    page: Page, site: Site, kind: str, element: str, ready: str
) -> None:
    open_playground(page, site.url, site.key)
    page.select_option("#task-kind", kind)
    page.fill("#task-duration", "1")
    page.evaluate(RECORD_PROGRESS)
    page.click("#task-run")
    page.wait_for_selector("#task-status[data-status=succeeded]")
    # The bar moved step by step while the task ran, and ended full.
    seen = page.evaluate("window.progressSeen")
    assert seen[-1] == 1 and seen == sorted(seen)
    assert len([p for p in seen if 0 < p < 1]) >= 5
    shown_output = page.wait_for_selector(f"#task-output {element}")
    assert shown_output is not None
    page.wait_for_function(f"() => ({ready})(document.querySelector('#task-output {element}'))")
    assert (shown_output.get_attribute("src") or "").startswith("blob:")
