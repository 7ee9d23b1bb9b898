"""OpenAI chat completions served without the framework's steps answer exactly what the
framework answers: the same errors, status and headers, whichever way a request goes; a
valid request is served directly, anything else goes the framework's way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI

from api.app import create_app
from api.fast_routes import FastRoutes
from api.responses import DeferredStreams
from shared.redis.embedded import EmbeddedRedis
from shared.settings import Settings

CHAT = "/v1/chat/completions"
JSON = {"content-type": "application/json"}
VALID = {"model": "demo", "messages": [{"role": "user", "content": "hi"}], "stream": True}


@contextlib.asynccontextmanager
async def app_on(redis_url: str, fast: bool) -> AsyncIterator[FastAPI]:
    settings = Settings.model_validate(
        {"redis_url": redis_url, "fast_routes": fast, "auth_enabled": False}
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield app


@pytest.fixture
async def apps(redis_server: EmbeddedRedis) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    url = redis_server.url.replace("/0", "/8")
    async with app_on(url, True) as fast, app_on(url, False) as framework:
        yield fast, framework


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What each fast route call did: True when it served the request itself."""
    outcomes: list[bool] = []
    original = FastRoutes.serve

    async def spy(self: FastRoutes, *args: Any) -> bool:
        outcomes.append(await original(self, *args))
        return outcomes[-1]

    monkeypatch.setattr(FastRoutes, "serve", spy)
    return outcomes


async def answer(app: FastAPI, body: bytes, headers: dict[str, str], path: str = CHAT) -> Any:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://spool") as http:
        response = await http.post(path, content=body, headers=headers)
    return response.status_code, response.headers.get("content-type"), response.json()


CASES = [
    ("not json", b"{not json", JSON),
    ("not an object", b"[1, 2]", JSON),
    ("a wrong type", orjson.dumps({**VALID, "stream": "yes"}), JSON),
    ("no messages", orjson.dumps({"model": "demo"}), JSON),
    (
        "a NaN, which only the framework's parser reads",
        b'{"model": "demo", "temperature": NaN}',
        JSON,
    ),
    ("no content type", orjson.dumps(VALID), {"accept": "application/json"}),
    ("a text content type", orjson.dumps(VALID), {**JSON, "content-type": "text/plain"}),
    ("a bad disconnect policy", orjson.dumps(VALID), {**JSON, "x-spool-on-disconnect": "x"}),
]


@pytest.mark.parametrize(("case", "body", "headers"), CASES, ids=[c[0] for c in CASES])
async def test_what_the_fast_way_refuses_the_framework_answers(
    apps: tuple[FastAPI, FastAPI],
    served: list[bool],
    case: str,
    body: bytes,
    headers: dict[str, str],
) -> None:
    fast, framework = apps
    got = await answer(fast, body, headers)
    assert served == [False]  # handed to the framework
    assert got == await answer(framework, body, headers)
    assert got[0] in (400, 415, 422)


async def test_an_endpoints_error_goes_through_the_apps_handler(
    apps: tuple[FastAPI, FastAPI], served: list[bool]
) -> None:
    fast, framework = apps
    body = orjson.dumps({**VALID, "model": "no-such-model"})
    got = await answer(fast, body, JSON)
    assert served == [True]
    assert got == await answer(framework, body, JSON)
    assert got[0] == 404 and got[2]["error"]["code"] == "model_not_found"


async def head_of(app: FastAPI, body: bytes, path: str = CHAT) -> dict[str, Any]:
    """The response head a streamed request gets (the stream is then left)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "",
        "query_string": b"", "server": ("spool", 80), "client": ("127.0.0.1", 5000),
        "headers": [(k.encode(), v.encode()) for k, v in
                    {**JSON, "content-length": str(len(body))}.items()],
    }  # fmt: skip
    head: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and not head.done():
            head.set_result(message)

    # As the server runs it: the stream starts once the application's call is over.
    call = asyncio.create_task(DeferredStreams(app)(scope, receive, send))
    try:
        return await asyncio.wait_for(head, 10)
    finally:
        call.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await call


@pytest.mark.parametrize("path", [CHAT, "/openai/v1/chat/completions", "/v2/chat/completions"])
async def test_a_valid_request_is_served_the_fast_way_with_the_frameworks_head(
    apps: tuple[FastAPI, FastAPI], served: list[bool], path: str
) -> None:
    fast, framework = apps
    ours = await head_of(fast, orjson.dumps(VALID), path)
    assert served == [True]
    theirs = await head_of(framework, orjson.dumps(VALID), path)
    assert ours["status"] == theirs["status"] == 200
    named = {k: v for k, v in ours["headers"] if k != b"x-spool-stream-id"}
    assert named == {k: v for k, v in theirs["headers"] if k != b"x-spool-stream-id"}
    assert (
        dict(ours["headers"])[b"x-spool-stream-id"] != dict(theirs["headers"])[b"x-spool-stream-id"]
    )


async def test_the_fast_way_is_counted_under_its_route(
    apps: tuple[FastAPI, FastAPI], served: list[bool]
) -> None:
    fast, _ = apps
    await answer(fast, orjson.dumps({**VALID, "model": "no-such-model"}), JSON)
    metrics = fast.state.metrics
    count = metrics.requests.labels("POST", CHAT, "404")._value.get()
    assert count == 1
