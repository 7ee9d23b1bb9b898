"""Response classes: JSON through orjson, and Server-Sent Event streams with the headers
proxies need to pass them through unbuffered."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.responses import Response, StreamingResponse

STREAM_ID_HEADER = "X-Spool-Stream-Id"


class JSONBody(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class EventStream(StreamingResponse):
    def __init__(self, body: AsyncIterator[bytes], stream_id: str) -> None:
        super().__init__(
            body,
            media_type="text/event-stream",
            headers={
                STREAM_ID_HEADER: stream_id,
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            },
        )
