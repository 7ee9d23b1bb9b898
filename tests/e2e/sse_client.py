"""Reading Spool's SSE responses in tests, through httpx-sse."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson
from httpx_sse import aconnect_sse


@dataclass
class Received:
    status: int
    headers: httpx.Headers
    events: list[tuple[str | None, str]] = field(default_factory=list)  # (id, data)
    body: bytes = b""

    @property
    def last_id(self) -> str | None:
        return self.events[-1][0] if self.events else None

    def chunks(self) -> list[dict[str, Any]]:
        return [orjson.loads(d) for _, d in self.events if d != "[DONE]"]

    def text(self) -> str:
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in self.chunks() if c.get("choices")
        )


async def read_sse(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> Received:
    """Read events until the server ends the stream, or drop the connection after
    `stop_after` events."""
    async with aconnect_sse(client, method, url, json=json, headers=headers or {}) as source:
        received = Received(source.response.status_code, source.response.headers)
        if source.response.status_code != 200:
            received.body = await source.response.aread()
            return received
        if stop_after == 0:
            return received
        async for sse in source.aiter_sse():
            received.events.append((sse.id or None, sse.data))
            if stop_after is not None and len(received.events) >= stop_after:
                break
    return received


def chat_body(model: str = "demo-fast", prompt: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        **extra,
    }
