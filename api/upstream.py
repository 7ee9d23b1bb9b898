"""The calls the API makes upstream itself (embeddings, token counts): one JSON POST over
the guarded client, its failures as the errors clients get, the key never in a message."""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from shared.errors import UpstreamError
from shared.model_table import ModelEntry
from shared.redact import upstream_message

MAX_UPSTREAM_BYTES = 256 * 1024 * 1024


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""

    status_code = 504
    code = "upstream_timeout"


def malformed(what: str, answer: str) -> UpstreamError:
    return UpstreamError(f"the upstream's {what} answer is malformed: {answer}")


async def post_json(
    http: httpx.AsyncClient,
    url: str,
    body: dict[str, Any],
    headers: dict[str, str],
    entry: ModelEntry,
    what: str,
) -> dict[str, Any]:
    """POST `body` and return the JSON object answered; 502 for an error status or an
    answer that is not a JSON object, 504 for a timeout. `what` names the answer in
    messages (`embeddings`)."""
    timeout = httpx.Timeout(entry.idle_timeout_s, connect=entry.connect_timeout_s)
    headers = {"Content-Type": "application/json", **headers, **entry.extra_headers}
    try:
        async with http.stream(
            "POST", url, content=orjson.dumps(body), headers=headers, timeout=timeout
        ) as response:
            payload = bytearray()
            async for chunk in response.aiter_bytes():
                payload += chunk
                if len(payload) > MAX_UPSTREAM_BYTES:
                    raise malformed(what, f"it is larger than {MAX_UPSTREAM_BYTES} bytes")
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(
            f"the upstream did not answer within {entry.idle_timeout_s:g}s"
        ) from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(
            f"the upstream could not be reached: {type(exc).__name__}",
            code="upstream_connect_error",
        ) from exc
    if response.status_code >= 400:
        raise UpstreamError(
            f"the upstream answered {response.status_code}: "
            f"{upstream_message(bytes(payload), headers)}",
            upstream_status=response.status_code,
        )
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise malformed(what, "it is not JSON") from None
    if not isinstance(data, dict):
        raise malformed(what, "it is not a JSON object")
    return data
