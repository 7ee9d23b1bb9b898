"""A webhook receiver for tests: records every delivery, and answers each path with the
statuses a test planned for it (then 204)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from shared.redis.embedded import free_port
from tests.threaded_server import ThreadedServer


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    answered: int
    at: float


class WebhookReceiver:
    def __init__(self) -> None:
        self.port = free_port()
        self.deliveries: list[Delivery] = []
        self.plans: dict[str, list[int]] = defaultdict(list)
        self._lock = threading.Lock()
        self._server: ThreadedServer | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def plan(self, path: str, *statuses: int) -> None:
        """Answer the next deliveries to `path` with `statuses`, in order."""
        self.plans[path].extend(statuses)

    def received(self, path: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.path == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 20.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.received(path)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{path}: {len(self.received(path))} deliveries, wanted {count}")

    async def _handle(self, request: Request) -> Response:
        path = request.path_params["path"]
        body = await request.body()
        with self._lock:
            status = self.plans[path].pop(0) if self.plans[path] else 204
            self.deliveries.append(Delivery(path, dict(request.headers), body, status, time.time()))
        return Response(status_code=status)

    def start(self) -> WebhookReceiver:
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["POST"])])
        self._server = ThreadedServer(app, self.port, "webhook-receiver")
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
