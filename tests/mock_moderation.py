"""A moderation endpoint in the OpenAI moderations shape for tests: flags inputs holding a
configured word, and can be switched to answer slowly, fail, or answer nonsense. It runs in
a thread of the test process and records what it was asked."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Literal

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from shared.redis.embedded import free_port
from tests.threaded_server import ThreadedServer

Mode = Literal["normal", "slow", "down", "malformed"]
CATEGORIES = ("harassment", "hate", "self-harm", "sexual", "violence")


@dataclass(frozen=True)
class ModerationCall:
    inputs: list[str]
    model: str | None
    authorization: str | None


class MockModeration:
    """`POST /v1/moderations`. Modes: `normal`; `slow` (answers after `delay_s`, or when
    stopped); `down` (HTTP 500); `malformed` (200 with a body that is no moderations result).
    `flags` maps a word (matched case-insensitively anywhere in an input) to the category it
    flags."""

    def __init__(self, flags: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.flags = flags if flags is not None else {"badword": "harassment"}
        self.mode: Mode = "normal"
        self.delay_s = 10.0
        self.calls: list[ModerationCall] = []
        self._lock = threading.Condition()
        self._server: ThreadedServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: set[asyncio.Event] = set()  # slow answers not yet given

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/moderations"

    @property
    def requests(self) -> int:
        with self._lock:
            return len(self.calls)

    def inputs(self) -> list[str]:
        """Every input text received, in order."""
        with self._lock:
            return [text for call in self.calls for text in call.inputs]

    def wait_for_calls(self, count: int, timeout_s: float = 10.0) -> list[ModerationCall]:
        """Block until `count` requests have arrived (they are recorded before answering)."""
        with self._lock:
            if not self._lock.wait_for(lambda: len(self.calls) >= count, timeout_s):
                raise AssertionError(f"{len(self.calls)} moderation requests, wanted {count}")
            return list(self.calls)

    def reset(self, mode: Mode = "normal", delay_s: float = 10.0) -> None:
        """Answer every slow request still waiting, forget the calls, and switch modes."""
        self.release()
        with self._lock:
            self.calls.clear()
        self.mode = mode
        self.delay_s = delay_s

    def release(self) -> None:
        """Answer the slow requests waiting now (not those that come later)."""
        with self._lock:
            waiting = list(self._waiting)
        if self._loop is not None:
            for release in waiting:
                self._loop.call_soon_threadsafe(release.set)

    def _result(self, text: str) -> dict[str, Any]:
        hit = {category for word, category in self.flags.items() if word.lower() in text.lower()}
        return {
            "flagged": bool(hit),
            "categories": {name: name in hit for name in sorted({*CATEGORIES, *hit})},
            "category_scores": {
                name: 0.97 if name in hit else 0.001 for name in sorted({*CATEGORIES, *hit})
            },
        }

    async def _moderations(self, request: Request) -> Response:
        body = await request.json()
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else list(raw)
        with self._lock:
            self.calls.append(
                ModerationCall(inputs, body.get("model"), request.headers.get("authorization"))
            )
            self._lock.notify_all()
        mode = self.mode
        if mode == "slow":
            self._loop = asyncio.get_running_loop()
            release = asyncio.Event()
            with self._lock:
                self._waiting.add(release)
            try:
                await asyncio.wait_for(release.wait(), self.delay_s)
            except TimeoutError:
                pass
            finally:
                with self._lock:
                    self._waiting.discard(release)
        if mode == "down":
            return JSONResponse({"error": {"message": "moderation is down"}}, status_code=500)
        if mode == "malformed":
            return JSONResponse({"id": "modr-mock", "verdict": "fine"})
        return JSONResponse(
            {
                "id": "modr-mock",
                "model": body.get("model") or "omni-moderation-latest",
                "results": [self._result(text) for text in inputs],
            }
        )

    def start(self) -> MockModeration:
        app = Starlette(routes=[Route("/v1/moderations", self._moderations, methods=["POST"])])
        self._server = ThreadedServer(app, self.port, "mock-moderation")
        self._server.start()
        return self

    def stop(self) -> None:
        self.release()
        if self._server is not None:
            self._server.stop()
