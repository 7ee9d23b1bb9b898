"""A resuming Python client for Spool's streams, on httpx (the same as `/static/spool.js`).

    async with SpoolClient(["http://a:8000", "http://b:8000"], api_key) as spool:
        stream = spool.stream("/v1/chat/completions", {"model": "demo", "messages": [...]})
        async for event in stream:
            print(event.text, end="")

A dropped connection (a network error, a replica that dies, a body cut before the stream's
end) is resumed from the last event id with `Last-Event-ID`, on the next base URL, with
backoff, until the stream ends; `204 No Content` on a resume means nothing is left. The key
travels in `Authorization: Bearer`; a follower without it uses a read-only follow token.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
import orjson

from shared.backoff import jittered_backoff
from shared.errors import SpoolError
from shared.sse import ServerSentEvent, SSEDecoder

STREAM_ID_HEADER = "x-spool-stream-id"
RETRYABLE_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
TASK_END_EVENTS = frozenset({"task.succeeded", "task.failed", "task.cancelled"})
RESPONSES_END_EVENTS = frozenset(
    {"response.completed", "response.failed", "response.incomplete", "error"}
)
ANTHROPIC_EVENTS = frozenset(
    {"message_start", "content_block_start", "content_block_delta", "content_block_stop",
     "message_delta", "message_stop", "ping"}
)  # fmt: skip
_ROUTES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r":(stream)?[gG]enerateContent$"), "gemini"),
    (re.compile(r"/v1/tasks/[^/]+/events$"), "task"),
    (re.compile(r"(^|/)(v1|v2|openai/v1)/(chat/)?completions$"), "openai"),
    (re.compile(r"(^|/)(openai/)?v1/responses(/|$)"), "responses"),
    (re.compile(r"(^|/)(anthropic/)?v1/messages$"), "anthropic"),
    (re.compile(r"(^|/)api/chat$"), "simple"),
)


class Refused(SpoolError):
    """Spool refused the request."""

    code = "refused"

    def __init__(self, message: str, status_code: int, body: Any) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class StreamLost(SpoolError):
    """The stream could not be read to its end."""

    status_code = 503
    code = "stream_lost"


def surface_of_path(path: str) -> str | None:
    """The surface a route speaks, from its path (None when the path does not say)."""
    route = path.split("?", 1)[0]
    return next((surface for pattern, surface in _ROUTES if pattern.search(route)), None)


def _json(data: str) -> Any:
    if not data.startswith(("{", "[")):
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """One event of a stream, as its surface sent it, with the id it resumes after."""

    id: str | None
    event: str
    data: str
    surface: str | None
    stream_id: str
    json: Any = field(default=None, compare=False)

    @property
    def text(self) -> str:
        """The text this event adds to the answer (not reasoning, not tool calls)."""
        body = self.json
        if not isinstance(body, dict):
            return ""
        match self.surface:
            case "openai":
                choice = (body.get("choices") or [{}])[0]
                return str((choice.get("delta") or {}).get("content") or choice.get("text") or "")
            case "anthropic":
                delta = body.get("delta") or {}
                if body.get("type") == "content_block_delta" and delta.get("type") == "text_delta":
                    return str(delta.get("text") or "")
                return ""
            case "gemini":
                return _gemini_text(body)
            case "simple":
                token = body.get("token")
                return token if isinstance(token, str) else ""
            case "responses":
                if body.get("type") == "response.output_text.delta":
                    return str(body.get("delta") or "")
                return ""
        return ""

    @property
    def is_end(self) -> bool:
        """Whether this is the last event of its stream."""
        body = self.json if isinstance(self.json, dict) else {}
        match self.surface:
            case "openai":
                return self.data == "[DONE]"
            case "anthropic":
                return self.event in ("message_stop", "error")
            case "simple":
                return body.get("done") is True
            case "gemini":
                candidates = body.get("candidates") or []
                return bool(body.get("error")) or any(c.get("finishReason") for c in candidates)
            case "task":
                return self.event in TASK_END_EVENTS
            case "responses":
                return self.event in RESPONSES_END_EVENTS
        return (
            self.data == "[DONE]"
            or self.event in TASK_END_EVENTS
            or self.event == "message_stop"
            or body.get("done") is True
        )


def _gemini_text(body: Mapping[str, Any]) -> str:
    candidates = body.get("candidates") or [{}]
    parts = (candidates[0].get("content") or {}).get("parts") or []
    return "".join(
        p["text"] for p in parts if isinstance(p.get("text"), str) and not p.get("thought")
    )


def result_text(result: Mapping[str, Any]) -> str:
    """The answer's text in a `/v1/streams/{id}/result` body, on any surface."""
    output = result.get("output") or {}
    if isinstance(output.get("choices"), list):
        choice = (output["choices"] or [{}])[0]
        return str((choice.get("message") or {}).get("content") or choice.get("text") or "")
    if isinstance(output.get("content"), list):
        return "".join(b.get("text", "") for b in output["content"] if b.get("type") == "text")
    if isinstance(output.get("candidates"), list):
        return _gemini_text(output)
    response = output.get("response")
    return response if isinstance(response, str) else ""


def _sniff(sse: ServerSentEvent, body: Any) -> str | None:
    """The surface of a followed stream, from one of its events."""
    if sse.event.startswith("task."):
        return "task"
    if sse.event.startswith("response."):
        return "responses"
    if sse.event in ANTHROPIC_EVENTS:
        return "anthropic"
    if sse.data == "[DONE]":
        return "openai"
    if not isinstance(body, dict):
        return None
    if body.get("object") in ("chat.completion.chunk", "text_completion"):
        return "openai"
    if "candidates" in body or "responseId" in body:
        return "gemini"
    return "simple" if "done" in body else None


def _error_message(body: Any, fallback: str) -> str:
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(body)[:500] if body else fallback


@dataclass(slots=True)
class _Plan:
    """What a stream's first request is, and where it resumes."""

    method: str
    path: str = ""
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    tail: Callable[[str], str] = lambda stream_id: f"/v1/streams/{stream_id}"
    cancel: Callable[[str], str] = lambda stream_id: f"/v1/streams/{stream_id}/cancel"
    follow_token: Callable[[str], str] = lambda stream_id: f"/v1/streams/{stream_id}/follow-token"


@dataclass(slots=True)
class _Outcome:
    end: str | None = None  # "end", "nothing_left"
    progress: bool = False
    reason: str = "cut"


class SpoolStream:
    """One stream being read: iterate it (once) for its events. After the loop, `ended`
    says how it ended: "end" (its last event) or "nothing_left" (a resume answered 204)."""

    def __init__(
        self,
        client: SpoolClient,
        plan: _Plan,
        *,
        stream_id: str | None = None,
        surface: str | None = None,
        follow_token: str | None = None,
        last_event_id: str | None = None,
    ) -> None:
        self.client = client
        self.plan = plan
        self.stream_id = stream_id
        self.surface = surface
        self.follow_token_value = follow_token
        self.last_event_id = last_event_id
        self.resumes = 0  # connections after the first
        self.resumed_from: list[str | None] = []  # the id each resume started after
        self.events = 0
        self.ended: str | None = None
        self._retry_s: float | None = None  # from the server's `retry:` field
        self._base = 0
        self._drop = False
        self._started = False

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        if self._started:
            raise RuntimeError("a stream is read once (follow it again to read it again)")
        self._started = True
        return self._run()

    def drop(self) -> None:
        """Cut the connection before the next event, as a network failure would; the stream
        resumes by itself from the last event id."""
        self._drop = True

    async def _run(self) -> AsyncIterator[StreamEvent]:
        client = self.client
        failures = 0
        first = True
        reason = ""
        while True:
            if not first:
                failures += 1
                if failures > client.max_attempts:
                    raise StreamLost(
                        f"stream {self.stream_id} could not be resumed after "
                        f"{client.max_attempts} attempts ({reason})"
                    )
                base = self._retry_s if self._retry_s is not None else client.backoff_s
                self._base = (self._base + 1) % len(client.base_urls)
                await asyncio.sleep(jittered_backoff(base, client.max_backoff_s, failures))
            outcome = _Outcome()
            async with contextlib.aclosing(self._connect(first, outcome)) as events:
                async for event in events:
                    yield event
            first = False
            if outcome.end is not None:
                self.ended = outcome.end
                return
            if outcome.progress:
                failures = 0
            reason = outcome.reason

    async def _connect(self, first: bool, outcome: _Outcome) -> AsyncGenerator[StreamEvent, None]:
        """One request (the first, or a resume) and the events it brings."""
        client = self.client
        base = client.base_urls[self._base]
        resuming = not first or self.plan.method == "GET"
        headers = {"Accept": "text/event-stream", **client.auth_headers(self.follow_token_value)}
        params = {"follow_token": self.follow_token_value} if self.follow_token_value else None
        if resuming:
            if self.stream_id is None:
                raise StreamLost("no stream id to resume")
            url = base + self.plan.tail(self.stream_id)
            if self.last_event_id:
                headers["Last-Event-ID"] = self.last_event_id
            request = client.http.build_request("GET", url, headers=headers, params=params)
        else:
            headers.update(self.plan.headers)
            request = client.http.build_request(
                "POST", base + self.plan.path, json=self.plan.body, headers=headers
            )
        try:
            response = await client.http.send(request, stream=True)
        except httpx.TransportError as exc:
            if not resuming:
                # No stream id yet: nothing to resume, and a second POST would generate twice.
                raise StreamLost(f"could not start the stream: {exc!r}") from exc
            outcome.reason = f"network error: {exc!r}"
            return
        try:
            if self.stream_id is None:
                self.stream_id = response.headers.get(STREAM_ID_HEADER)
            if response.status_code == 204:
                outcome.end = "nothing_left"
                return
            if response.status_code != 200:
                await response.aread()
                body = _json(response.text) or response.text
                message = f"{response.status_code}: {_error_message(body, response.reason_phrase)}"
                if resuming and response.status_code in RETRYABLE_STATUSES:
                    outcome.reason = message
                    return
                raise Refused(message, response.status_code, body)
            kind = response.headers.get("content-type", "")
            if not kind.startswith("text/event-stream"):
                raise Refused(f"expected an event stream, got {kind!r}", 200, None)
            if self.stream_id is None:
                raise StreamLost(f"the response has no {STREAM_ID_HEADER} header")
            if not first:
                self.resumes += 1
                self.resumed_from.append(self.last_event_id)
            async with contextlib.aclosing(self._read(response, outcome)) as events:
                async for event in events:
                    yield event
                    if self._drop:
                        self._drop = False
                        outcome.reason = "dropped by the application"
                        return
        except httpx.TransportError as exc:
            outcome.reason = f"network error: {exc!r}"
        finally:
            await response.aclose()

    async def _read(
        self, response: httpx.Response, outcome: _Outcome
    ) -> AsyncGenerator[StreamEvent, None]:
        decoder = SSEDecoder()
        previous: str | None = None
        tail_error: str | None = None
        assert self.stream_id is not None
        async for chunk in response.aiter_bytes():
            for sse in decoder.feed(chunk):
                if sse.retry is not None:
                    self._retry_s = sse.retry / 1000
                body = _json(sse.data)
                if self.surface is None:
                    self.surface = _sniff(sse, body)
                # Spool gives each event of a stream an id of its own: an event whose id is
                # none or the one before's has no id line, and is this connection's own error
                # (the replica lost its storage), not the stream's. Resume instead.
                own_id = sse.id if sse.id is not None and sse.id != previous else None
                previous = sse.id
                if own_id is None and self.surface not in (None, "gemini"):
                    tail_error = tail_error or sse.data
                    continue
                event_id = own_id
                if event_id is None and isinstance(body, dict):
                    response_id = body.get("responseId")
                    event_id = response_id if isinstance(response_id, str) else None
                if event_id is not None:
                    self.last_event_id = event_id or None
                outcome.progress = True
                event = StreamEvent(
                    self.last_event_id, sse.event, sse.data, self.surface, self.stream_id, body
                )
                self.events += 1
                yield event
                if event.is_end:
                    outcome.end = "end"
                    return
        for _ in decoder.close():
            pass  # a final event without its blank line is incomplete: not delivered
        outcome.reason = f"the replica ended the tail: {tail_error}" if tail_error else "cut"

    async def cancel(self) -> Any:
        """Cancel the generation (the owner's key only); the stream then ends with a
        cancelled finish, which iterating it still reads."""
        return await self.client.request("POST", self.plan.cancel(self._id()))

    async def follow_token(self) -> Any:
        """A read-only follow token for this stream: `{token, url, expires_at}`."""
        return await self.client.request("POST", self.plan.follow_token(self._id()))

    async def result(self) -> Any:
        """The stream's status and assembled output (`/v1/streams/{id}/result`); for a
        task, the task (`/v1/tasks/{id}`)."""
        if self.surface == "task":
            return await self.client.task(self._id(), follow_token=self.follow_token_value)
        return await self.client.result(self._id(), follow_token=self.follow_token_value)

    def _id(self) -> str:
        if self.stream_id is None:
            raise StreamLost("the stream has not started yet")
        return self.stream_id


class SpoolClient:
    """A client of one Spool deployment: one or more base URLs (replicas a stream resumes
    on, in turn) and an API key (or none, to follow with tokens)."""

    def __init__(
        self,
        base_urls: str | Sequence[str],
        api_key: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        max_attempts: int = 10,
        backoff_s: float = 0.25,
        max_backoff_s: float = 5.0,
        idle_timeout_s: float = 60.0,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("name at least one base URL")
        self.base_urls = [u.rstrip("/") for u in urls]
        self.api_key = api_key
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        # A connection silent this long (not even a keep-alive) counts as dropped.
        timeout = httpx.Timeout(30.0, read=idle_timeout_s)
        self._owned = http is None
        self.http = http or httpx.AsyncClient(timeout=timeout)

    async def __aenter__(self) -> SpoolClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._owned:
            await self.http.aclose()

    def auth_headers(self, follow_token: str | None = None) -> dict[str, str]:
        if self.api_key and not follow_token:
            return {"Authorization": f"Bearer {self.api_key}"}
        return {}

    def stream(
        self,
        path: str,
        body: Mapping[str, Any],
        *,
        surface: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> SpoolStream:
        """Start a generation on a streaming route (`/v1/chat/completions`,
        `/v1/completions`, `/v1/messages`, `/v1beta/models/{m}:streamGenerateContent`,
        `/api/chat`) and read it, resuming after drops. `stream: true` (Gemini: `alt=sse`)
        is added when missing."""
        surface = surface or surface_of_path(path)
        payload = dict(body)
        if surface == "gemini":
            if not re.search(r"[?&]alt=", path):
                path += ("&" if "?" in path else "?") + "alt=sse"
        else:
            payload.setdefault("stream", True)
        plan = _Plan("POST", path, payload, headers or {})
        return SpoolStream(self, plan, surface=surface)

    def follow(
        self,
        stream_id: str,
        *,
        follow_token: str | None = None,
        last_event_id: str | None = None,
        surface: str | None = None,
    ) -> SpoolStream:
        """Follow a stream from its start (or after `last_event_id`), with this client's
        key or a follow token."""
        return SpoolStream(
            self,
            _Plan("GET"),
            stream_id=stream_id,
            surface=surface,
            follow_token=follow_token,
            last_event_id=last_event_id,
        )

    def follow_task(
        self, task_id: str, *, follow_token: str | None = None, last_event_id: str | None = None
    ) -> SpoolStream:
        """Follow a task's progress events (`GET /v1/tasks/{id}/events`)."""
        plan = _Plan(
            "GET",
            tail=lambda i: f"/v1/tasks/{i}/events",
            cancel=lambda i: f"/v1/tasks/{i}/cancel",
            follow_token=lambda i: f"/v1/tasks/{i}/follow-token",
        )
        return SpoolStream(
            self,
            plan,
            stream_id=task_id,
            surface="task",
            follow_token=follow_token,
            last_event_id=last_event_id,
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        follow_token: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """A JSON request; a refusal raises `Refused`. A network error tries the next
        replica when the request never reached Spool, or is safe to repeat (a GET, a
        cancel, one with an `Idempotency-Key`)."""
        params = {"follow_token": follow_token} if follow_token else None
        sent = {**self.auth_headers(follow_token), **(headers or {})}
        repeatable = method == "GET" or path.endswith("/cancel") or "Idempotency-Key" in sent
        failure: Exception | None = None
        for base in self.base_urls:
            try:
                response = await self.http.request(
                    method, base + path, json=json, params=params, headers=sent
                )
            except httpx.TransportError as exc:
                failure = exc
                if repeatable or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
                    continue
                raise StreamLost(f"{method} {path}: {exc!r}") from exc
            body = _json(response.text) if response.content else None
            if response.is_error:
                message = _error_message(body or response.text, response.reason_phrase)
                raise Refused(
                    f"{method} {path}: {response.status_code} {message}",
                    response.status_code,
                    body,
                )
            return body
        raise StreamLost(f"{method} {path}: no replica answered ({failure!r})")

    async def cancel(self, stream_id: str) -> Any:
        return await self.request("POST", f"/v1/streams/{stream_id}/cancel")

    async def follow_token(self, stream_id: str) -> Any:
        return await self.request("POST", f"/v1/streams/{stream_id}/follow-token")

    async def result(self, stream_id: str, *, follow_token: str | None = None) -> Any:
        return await self.request(
            "GET", f"/v1/streams/{stream_id}/result", follow_token=follow_token
        )

    async def models(self) -> Any:
        return await self.request("GET", "/v1/models")

    async def create_task(
        self, spec: Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> Any:
        """Submit an asset task; its `Idempotency-Key` makes a retry on another replica
        safe."""
        key = idempotency_key or uuid.uuid4().hex
        return await self.request(
            "POST", "/v1/tasks", json=dict(spec), headers={"Idempotency-Key": key}
        )

    async def task(self, task_id: str, *, follow_token: str | None = None) -> Any:
        return await self.request("GET", f"/v1/tasks/{task_id}", follow_token=follow_token)

    async def cancel_task(self, task_id: str) -> Any:
        return await self.request("POST", f"/v1/tasks/{task_id}/cancel")
