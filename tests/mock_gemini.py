"""A scriptable Gemini API upstream: `POST /v1beta/models/{model}:streamGenerateContent` and
`:generateContent`, as the Gemini API frames them.

Mount `handle_generate` on the route "/v1beta/models/{target}". The model in the path picks
the behaviour (see `SCRIPTS`); every request is recorded in `upstream.seen`.

Streaming with `alt=sse` writes `data: <json>\\r\\n\\r\\n` per `GenerateContentResponse`
(Gemini ends lines with CRLF) and no `[DONE]`; without `alt=sse` it writes one JSON array.
Errors use Gemini's shape: `{"error": {"code", "message", "status"}}`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from tests.mock_upstream import MockUpstream, Seen, trickle

MODEL_VERSION = "gemini-mock-001"
TEXT_PIECES = ["héllo ", "wörld ", "日本語 ", "✓"]
TEXT = "".join(TEXT_PIECES)
TEXT_USAGE = {"promptTokenCount": 9, "candidatesTokenCount": 6, "totalTokenCount": 15}
TOOL_CALLS = [("get_weather", {"city": "Paris"}), ("get_time", {"tz": "CET"})]
THOUGHT = "The user greets me; I should greet back."
THINKING_ANSWER = "Hello!"
THINKING_USAGE = {
    "promptTokenCount": 5,
    "candidatesTokenCount": 2,
    "thoughtsTokenCount": 11,
    "totalTokenCount": 18,
}
OVERLOADED = {"code": 503, "message": "The model is overloaded.", "status": "UNAVAILABLE"}
EXHAUSTED = {"code": 429, "message": "Resource has been exhausted", "status": "RESOURCE_EXHAUSTED"}


def response(
    parts: list[dict[str, Any]],
    finish: str | None = None,
    usage: dict[str, int] | None = None,
) -> dict[str, Any]:
    """One `GenerateContentResponse` with a single candidate."""
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish is not None:
        candidate["finishReason"] = finish
    out: dict[str, Any] = {"candidates": [candidate]}
    # Gemini sends usage with every chunk; the prompt count is known from the start.
    out["usageMetadata"] = usage or {"promptTokenCount": 9, "totalTokenCount": 9}
    out["modelVersion"] = MODEL_VERSION
    out["responseId"] = "mock-response-1"
    return out


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\r\n\r\n"


def _text_responses() -> list[dict[str, Any]]:
    out = [response([{"text": piece}]) for piece in TEXT_PIECES[:-1]]
    out.append(response([{"text": TEXT_PIECES[-1]}], "STOP", TEXT_USAGE))
    return out


def _tool_responses() -> list[dict[str, Any]]:
    calls = [{"functionCall": {"name": name, "args": args}} for name, args in TOOL_CALLS]
    usage = {"promptTokenCount": 20, "candidatesTokenCount": 12, "totalTokenCount": 32}
    return [
        response([{"text": "Let me check."}]),
        response(calls, "STOP", usage),
    ]


def _thinking_responses() -> list[dict[str, Any]]:
    return [
        response([{"text": THOUGHT, "thought": True}], usage={"promptTokenCount": 5}),
        response([{"text": THINKING_ANSWER}], "STOP", THINKING_USAGE),
    ]


def _json_responses() -> list[dict[str, Any]]:
    from tests.mock_upstream import JSON_ANSWER

    out = [response([{"text": piece}]) for piece in JSON_ANSWER[:-1]]
    out.append(response([{"text": JSON_ANSWER[-1]}], "STOP", TEXT_USAGE))
    return out


def _max_tokens_responses() -> list[dict[str, Any]]:
    usage = {"promptTokenCount": 9, "candidatesTokenCount": 4, "totalTokenCount": 13}
    return [response([{"text": "cut "}]), response([{"text": "short"}], "MAX_TOKENS", usage)]


def _error_midstream_responses() -> list[dict[str, Any]]:
    return [response([{"text": "partial"}]), {"error": OVERLOADED}]


SCRIPTS = {
    "gemini-text": _text_responses,
    "gemini-split": _text_responses,
    "gemini-tools": _tool_responses,
    "gemini-json": _json_responses,
    "gemini-thinking": _thinking_responses,
    "gemini-max-tokens": _max_tokens_responses,
    "gemini-error-midstream": _error_midstream_responses,
}


def combine(responses: list[dict[str, Any]]) -> dict[str, Any]:
    """The one response `:generateContent` gives for what the stream sends in pieces:
    adjacent text parts of the same kind joined, the last finish reason and usage."""
    parts: list[dict[str, Any]] = []
    finish: str | None = None
    usage: dict[str, int] | None = None
    for item in responses:
        candidate = item["candidates"][0]
        for part in candidate["content"]["parts"]:
            last = parts[-1] if parts else None
            if (
                last is not None
                and "text" in part
                and "text" in last
                and part.get("thought") == last.get("thought")
            ):
                parts[-1] = {**last, "text": last["text"] + part["text"]}
            else:
                parts.append(dict(part))
        finish = candidate.get("finishReason", finish)
        usage = item.get("usageMetadata", usage)
    return response(parts, finish, usage)


def _error(error: dict[str, Any]) -> Response:
    return JSONResponse({"error": error}, status_code=int(error["code"]))


async def _split(frames: list[bytes]) -> AsyncIterator[bytes]:
    """The stream written 1, 2, 3, 1, 2, 3 … bytes per write, splitting every line and
    most multi-byte characters."""
    async for piece in trickle(b"".join(frames)):
        yield piece


async def _frames(frames: list[bytes]) -> AsyncIterator[bytes]:
    for frame in frames:
        yield frame


async def handle_generate(upstream: MockUpstream, request: Request) -> Response:
    """Starlette handler for POST "/v1beta/models/{target}", where target is
    "<model>:streamGenerateContent" or "<model>:generateContent"."""
    model, _, method = str(request.path_params["target"]).rpartition(":")
    raw = await request.body()
    try:
        body = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        body = {}
    upstream.seen.append(Seen(model=model, body=body, headers=dict(request.headers)))
    if method not in ("streamGenerateContent", "generateContent"):
        return _error(
            {
                "code": 404,
                "message": f"Method {method!r} is not found for models/{model}.",
                "status": "NOT_FOUND",
            }
        )
    if model == "gemini-429":
        return _error(EXHAUSTED)
    script = SCRIPTS.get(model)
    if script is None:
        return _error(
            {
                "code": 404,
                "message": f"models/{model} is not found for API version v1beta, or is not "
                f"supported for {method}. Call ListModels to see the list of available "
                "models and their supported methods.",
                "status": "NOT_FOUND",
            }
        )
    responses = script()
    if method == "generateContent":
        failures = [r["error"] for r in responses if "error" in r]
        if failures:
            return _error(failures[0])
        return JSONResponse(combine(responses))
    if request.query_params.get("alt") != "sse":
        # Without alt=sse Gemini streams one JSON array of responses.
        array = b"[" + b",\r\n".join(orjson.dumps(r) for r in responses) + b"]"
        return StreamingResponse(_frames([array]), media_type="application/json")
    frames = [sse(r) for r in responses]
    stream = _split(frames) if model == "gemini-split" else _frames(frames)
    return StreamingResponse(stream, media_type="text/event-stream")
