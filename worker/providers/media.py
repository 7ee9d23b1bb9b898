"""Fetching the media a request names by URL, for providers that take only inline bytes:
through the worker's guarded client (the outbound guard of every upstream call), within
`max_media_bytes`, each URL once per request."""

from __future__ import annotations

import base64
from collections.abc import Callable

import httpx

from shared.errors import UpstreamError
from shared.media import MEDIA_TYPES, normal_type
from shared.request import ContentPart, GenerationRequest

FETCH_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
DEFAULT_MAX_MEDIA_BYTES = 20 * 1024 * 1024


def media_error(message: str) -> UpstreamError:
    return UpstreamError(message, retryable=False, code="media_fetch_failed", upstream_status=400)


class MediaFetcher:
    def __init__(self, client: httpx.AsyncClient, max_bytes: int) -> None:
        self.client = client
        self.max_bytes = max_bytes

    async def fetch(self, part: ContentPart) -> ContentPart:
        """The part with its URL's bytes inline (base64) and their media type."""
        assert part.url is not None
        shown = part.url[:200]
        try:
            # Each hop of a redirect passes the client's outbound guard again.
            async with self.client.stream(
                "GET", part.url, timeout=FETCH_TIMEOUT, follow_redirects=True
            ) as response:
                if response.status_code != 200:
                    raise media_error(
                        f"fetching the {part.type} at {shown} answered {response.status_code}"
                    )
                declared = response.headers.get("content-length")
                if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
                    raise media_error(self._too_big(part, shown))
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_bytes:
                        raise media_error(self._too_big(part, shown))
                header_type = response.headers.get("content-type")
        except httpx.HTTPError as exc:
            raise media_error(
                f"fetching the {part.type} at {shown} failed: {type(exc).__name__}"
            ) from exc
        media_type = part.media_type or (normal_type(header_type) if header_type else None)
        if media_type is None or media_type not in MEDIA_TYPES[part.type]:  # type: ignore[index]
            raise media_error(
                f"the {part.type} at {shown} has media type {media_type!r}, which is not a "
                f"supported {part.type} type"
            )
        data = base64.b64encode(bytes(body)).decode()
        return part.model_copy(update={"url": None, "data": data, "media_type": media_type})

    def _too_big(self, part: ContentPart, shown: str) -> str:
        return f"the {part.type} at {shown} is larger than {self.max_bytes} bytes (max_media_bytes)"

    async def inline(
        self, request: GenerationRequest, needs: Callable[[ContentPart], bool]
    ) -> GenerationRequest:
        """`request` with every URL part for which `needs(part)` holds fetched inline."""
        wanted = [p for m in request.messages for p in m.media if p.url is not None and needs(p)]
        if not wanted:
            return request
        fetched: dict[str, ContentPart] = {}
        for part in wanted:
            if part.url not in fetched:
                fetched[part.url] = await self.fetch(part)  # type: ignore[index]
        messages = []
        for message in request.messages:
            if not any(p.url in fetched for p in message.media):
                messages.append(message)
                continue
            parts = [
                fetched[p.url].model_copy(update={"cache_control": p.cache_control, "name": p.name})
                if p.url in fetched and needs(p)
                else p
                for p in message.parts or []
            ]
            messages.append(message.model_copy(update={"parts": parts}))
        return request.model_copy(update={"messages": messages})
