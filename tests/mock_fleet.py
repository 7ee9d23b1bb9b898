"""Several OpenAI-compatible deployments on one test server, each scripted to succeed or
fail its own way (429 with Retry-After, 503, context window, content policy, a slow
first token, a cut after the first token), for the routing tests.

Deployment `name` answers at `<base>/d/<name>/v1`; its answers say who it is
(`served by <name>`), and the fleet counts the requests each one got.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from shared.redis.embedded import free_port
from tests.mock_upstream import text_stream
from tests.threaded_server import ThreadedServer

CONTEXT_MESSAGE = (
    "This model's maximum context length is 8192 tokens. However, your messages resulted "
    "in 9000 tokens. Please reduce the length of the messages."
)
POLICY_MESSAGE = (
    "The response was filtered due to the prompt triggering the content management policy."
)


@dataclass
class Script:
    mode: str = "ok"  # ok | 429 | 503 | context | policy | cut
    retry_after: str | None = None
    first_token_delay_s: float = 0.0
    fail_times: int | None = None  # fail this many requests, then answer (None: always)
    text: list[str] | None = None  # what it answers, in these pieces (else `answer(name)`)


def answer(name: str) -> list[str]:
    return ["served", " by", f" {name}"]


class MockFleet:
    def __init__(self) -> None:
        self.port = free_port()
        self.scripts: dict[str, Script] = {}
        self.hits: Counter[str] = Counter()
        self.lock = threading.Lock()
        self._server: ThreadedServer | None = None

    def base_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/d/{name}/v1"

    def script(self, name: str, mode: str = "ok", **fields: Any) -> None:
        self.scripts[name] = Script(mode=mode, **fields)

    def reset(self) -> None:
        with self.lock:
            self.scripts.clear()
            self.hits.clear()

    async def handle(self, request: Request) -> Response:
        name = request.path_params["name"]
        body = orjson.loads(await request.body())
        with self.lock:
            self.hits[name] += 1
            hits = self.hits[name]
        script = self.scripts.get(name, Script())
        failing = script.fail_times is None or hits <= script.fail_times
        model = str(body.get("model", name))
        if failing and script.mode == "429":
            headers = {"Retry-After": script.retry_after} if script.retry_after else {}
            return JSONResponse(
                {"error": {"message": "rate limited", "type": "rate_limit_error"}},
                status_code=429,
                headers=headers,
            )
        if failing and script.mode == "503":
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if failing and script.mode == "context":
            error = {"message": CONTEXT_MESSAGE, "code": "context_length_exceeded"}
            return JSONResponse({"error": error}, status_code=400)
        if failing and script.mode == "policy":
            error = {"message": POLICY_MESSAGE, "code": "content_filter"}
            return JSONResponse({"error": error}, status_code=400)
        cut = failing and script.mode == "cut"
        return StreamingResponse(
            self._stream(script.text or answer(name), model, script.first_token_delay_s, cut),
            media_type="text/event-stream",
        )

    async def _stream(
        self, pieces: list[str], model: str, delay_s: float, cut: bool
    ) -> AsyncIterator[bytes]:
        frames = text_stream(model, pieces)
        if delay_s:
            await asyncio.sleep(delay_s)
        if cut:
            # The first token, then the connection drops: too late to move elsewhere.
            yield frames[0] + frames[1]
            raise ConnectionResetError("cut after the first token")
        for frame in frames:
            yield frame

    def start(self) -> MockFleet:
        app = Starlette(
            routes=[Route("/d/{name}/v1/chat/completions", self.handle, methods=["POST"])]
        )
        self._server = ThreadedServer(app, self.port, "mock-fleet")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()


def deployment(fleet: MockFleet, name: str, **fields: Any) -> dict[str, Any]:
    """A deployment entry of a model group pointing at `name` in the fleet."""
    return {
        "provider": "openai",
        "base_url": fleet.base_url(name),
        "model": "m",
        "name": name,
        "connect_timeout_s": 2,
        "idle_timeout_s": 10,
        **fields,
    }
