"""The providers' POST requests, made from headers httpx made before for the same URL,
are the requests httpx itself makes: method, URL, every header in order, body and
extensions, and its Host and Content-Length follow the URL and the body."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from worker.providers.http import post_request

URL = httpx.URL("http://127.0.0.1:8080/v1/chat/completions")
HEADERS = (
    ("User-Agent", "python-httpx/0.29"),
    ("accept", "text/event-stream"),
    ("Content-Type", "application/json"),
    ("Authorization", "Bearer sk-test"),
    ("x-extra", "a b;c=d"),
)
EXTENSIONS = {"timeout": {"connect": 1.0, "read": 2.0, "write": 2.0, "pool": 2.0}}


def httpx_own(url: httpx.URL, params: dict[str, str] | None, headers: tuple[tuple[str, str], ...], body: bytes) -> httpx.Request:  # fmt: skip
    return httpx.Request(
        "POST", url, params=params, headers=list(headers), content=body, extensions=EXTENSIONS
    )


@pytest.mark.parametrize(
    ("url", "params", "headers"),
    [
        (URL, None, HEADERS),
        (httpx.URL("https://api.example.com:8443/v1/messages"), None, HEADERS[:2]),
        (URL, {"alt": "sse"}, HEADERS),  # query parameters: made by httpx
        (URL, None, (*HEADERS, ("Host", "upstream.internal"))),  # a Host of its own
        (URL, None, (*HEADERS, ("Content-Length", "2"))),  # a length of its own: httpx's
        (URL, None, ()),
    ],
)
def test_the_request_is_httpxs_own(
    url: httpx.URL, params: dict[str, str] | None, headers: tuple[tuple[str, str], ...]
) -> None:
    for body in (b"{}", b'{"model":"m","messages":[]}' * 40, b""):
        made = post_request(url, params, headers, body, EXTENSIONS)
        own = httpx_own(url, params, headers, body)
        assert made.method == own.method == "POST"
        assert made.url == own.url
        assert made.headers.raw == own.headers.raw
        assert made.extensions == own.extensions
        assert asyncio.run(made.aread()) == own.content == body


def test_a_header_httpx_refuses_is_refused_the_same_way() -> None:
    headers = (("x-extra", "é"),)  # not ASCII
    with pytest.raises(UnicodeEncodeError):
        httpx_own(URL, None, headers, b"{}")
    with pytest.raises(UnicodeEncodeError):
        post_request(URL, None, headers, b"{}", EXTENSIONS)
