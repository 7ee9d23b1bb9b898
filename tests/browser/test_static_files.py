"""`/static/*` and `/playground` over HTTP: content types, revalidation, the page's
security headers, CORS for an allowed origin, and no way out of the static folder."""

from __future__ import annotations

import http.client

import httpx
import pytest

from tests.browser.conftest import Site


def test_files_are_served_with_their_types_and_revalidated(site: Site) -> None:
    with httpx.Client(base_url=site.url) as client:
        script = client.get("/static/spool.js")
        assert script.status_code == 200
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        assert script.headers["cache-control"] == "no-cache"
        assert script.headers["x-content-type-options"] == "nosniff"
        assert b"export class Spool" in script.content
        again = client.get("/static/spool.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304 and again.content == b""
        head = client.head("/static/playground/style.css")
        assert head.status_code == 200 and head.content == b""
        assert head.headers["content-type"] == "text/css; charset=utf-8"
        assert int(head.headers["content-length"]) > 0
        for path in ("/playground", "/playground/"):
            page = client.get(path)
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
            assert page.headers["referrer-policy"] == "no-referrer"
            assert b"/static/playground/app.js" in page.content


def test_another_origins_page_may_load_the_client_when_allowed(site: Site) -> None:
    allowed = httpx.get(f"{site.url}/static/spool.js", headers={"Origin": site.page_origin})
    assert allowed.headers["access-control-allow-origin"] == site.page_origin
    refused = httpx.get(
        f"{site.cors_off_url}/static/spool.js", headers={"Origin": site.page_origin}
    )
    assert "access-control-allow-origin" not in refused.headers


@pytest.mark.parametrize(
    "path",
    [
        "/static/../routes/playground.py",
        "/static/..%2Froutes%2Fplayground.py",
        "/static/%2e%2e/app.py",
        "/static/playground/..%2F..%2Fapp.py",
        "/static//etc/passwd",
        "/static/.hidden.js",
        "/static/playground",
        "/static/",
        "/static/nothing.js",
        "/static/spool.js%00.png",
        "/static/playground/index.html/x",
    ],
)
def test_nothing_outside_the_static_files_is_served(site: Site, path: str) -> None:
    # http.client sends the path as written (httpx would resolve the dot segments first).
    connection = http.client.HTTPConnection(site.url.removeprefix("http://"), timeout=10)
    try:
        connection.request("GET", path)
        answer = connection.getresponse()
        body = answer.read()
    finally:
        connection.close()
    assert answer.status == 404, (path, body[:200])
    assert answer.getheader("content-type") == "application/json"
    assert b"def " not in body and b"root:" not in body
