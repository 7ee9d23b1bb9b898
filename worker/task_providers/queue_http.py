"""Asynchronous asset upstreams spoken to as submit → poll status → fetch result: fal's
queue, Replicate's predictions, and anything shaped like them. Every path and JSON field
comes from the model entry's `queue_http` section (`shared.settings.QueueHttpConfig`).

Error codes: `upstream_error` (an error status), `upstream_timeout`,
`upstream_connect_error`, `upstream_malformed` (a reply that is not what the config says it
is), `upstream_task_failed` and `upstream_task_cancelled` (the upstream ended the job so).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import math
import mimetypes
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

from shared.backoff import jittered_backoff
from shared.errors import ConfigError, UpstreamError
from shared.redact import redact
from shared.settings import QueueHttpConfig, TaskModelEntry, TaskStatusName
from shared.tasks import TaskSpec
from worker.providers.http import parse_retry_after, transport_error
from worker.task_providers import MediaOutput, ProgressReporter

log = logging.getLogger(__name__)

MAX_REPLY_BYTES = 1024 * 1024
MAX_JOB_ID_CHARS = 512
MAX_OUTPUTS = 100
MAX_URL_CHARS = 8192
MAX_MESSAGE_CHARS = 500
MAX_LOG_LINE_CHARS = 1000
MAX_LOG_LINES_PER_POLL = 50
CANCEL_TIMEOUT_S = 5.0
RETRY_AFTER_MAX_S = 30.0
BACKOFF_MAX_S = 10.0
# Progress the estimate and the upstream's own figure may reach before the job is done:
# only the run's result says 1.0.
MAX_RUNNING_PROGRESS = 0.99
QUEUED_ESTIMATE = 0.05
RUNNING_ESTIMATE = (0.1, 0.9)
ESTIMATE_TAU_S = 60.0
MIN_PROGRESS_STEP = 0.01
DEFAULT_FAILURE = "the upstream task failed"
SECRET_HEADER = re.compile(r"authorization|key|token|secret", re.IGNORECASE)
MEDIA_TYPE = re.compile(r"^[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}$")
DATA_URL = re.compile(r"^data:([^;,]*)(;base64)?,", re.IGNORECASE)


def malformed(what: str) -> UpstreamError:
    return UpstreamError(f"malformed upstream reply: {what}", code="upstream_malformed")


# -- pure helpers ---------------------------------------------------------------------------


def lookup(data: object, path: str) -> object:
    """The value at a dotted `path` (`data.images.0.url`) in parsed JSON, or None where
    any step is missing or of the wrong kind. Numeric steps index lists."""
    current = data
    for step in path.split(".") if path else []:
        if isinstance(current, Mapping):
            current = current.get(step)
        elif isinstance(current, list) and step.isdigit():
            index = int(step)
            current = current[index] if index < len(current) else None
        else:
            return None
        if current is None:
            return None
    return current


def map_status(
    value: object, status_values: Mapping[TaskStatusName, list[str]]
) -> TaskStatusName | None:
    """The canonical status an upstream status string stands for; None when it is not in
    the table. Raises `upstream_malformed` when the value is not a string at all."""
    if not isinstance(value, str):
        raise malformed(f"the status is {type(value).__name__}, not a string")
    for name, spellings in status_values.items():
        if value in spellings:
            return name
    folded = value.casefold()
    for name, spellings in status_values.items():
        if any(folded == s.casefold() for s in spellings):
            return name
    return None


def read_progress(value: object, percent: bool) -> tuple[float | None, bool]:
    """The fraction (0-1) an upstream progress figure stands for, and whether the upstream
    counts in percent. Ints from 1 up and floats above 1 mean percent, and once seen the
    scale sticks: an upstream at "1" of 100 is not done. Anything else is no figure."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None, percent
    number = float(value)
    if not math.isfinite(number):
        return None, percent
    if (isinstance(value, int) and value >= 1) or number > 1:
        percent = True
    fraction = number / 100 if percent else number
    return min(1.0, max(0.0, fraction)), percent


def estimate_progress(status: TaskStatusName, running_for_s: float) -> float:
    """A gentle guess for upstreams that say nothing: a little while queued, then creeping
    towards (never past) the top of `RUNNING_ESTIMATE` the longer the job runs."""
    if status == "queued":
        return QUEUED_ESTIMATE
    low, high = RUNNING_ESTIMATE
    return low + (high - low) * (1 - math.exp(-max(0.0, running_for_s) / ESTIMATE_TAU_S))


def _clean_line(line: str) -> str:
    # Progress bars redraw a line with carriage returns; only the last drawing is news.
    return line.rsplit("\r", 1)[-1].strip()[:MAX_LOG_LINE_CHARS]


def new_log_lines(value: object, seen: int, final: bool) -> tuple[list[str], int]:
    """The log lines in `value` after the first `seen`, and the new count seen. Logs are
    read as cumulative: a string (whose unterminated last line may still grow, so it waits
    for the end), a list of strings, or a list of objects with a "message"."""
    raw: list[object]
    if isinstance(value, str):
        raw = list(value.split("\n"))
        if not final or raw[-1] == "":
            raw = raw[:-1]
    elif isinstance(value, list):
        raw = [item.get("message") if isinstance(item, dict) else item for item in value]
    else:
        return [], seen
    if len(raw) < seen:  # the upstream started its log over: nothing to tell apart
        return [], len(raw)
    lines = [_clean_line(r) for r in raw[seen:] if isinstance(r, str)]
    lines = [line for line in lines if line]
    return lines[-MAX_LOG_LINES_PER_POLL:], len(raw)


def failure_message(value: object) -> str:
    """The human message in an upstream's error field, whatever its shape."""
    if isinstance(value, dict):
        for key in ("message", "detail", "error"):
            if isinstance(value.get(key), str):
                value = value[key]
                break
    if isinstance(value, str):
        text = value.strip()
    elif value is None or value == [] or value == {}:
        text = ""
    else:
        try:
            text = orjson.dumps(value).decode()
        except TypeError:
            text = ""
    return text[:MAX_MESSAGE_CHARS] or DEFAULT_FAILURE


def _media_type(value: object) -> str | None:
    if not isinstance(value, str):
        return None
    essence = value.partition(";")[0].strip().lower()
    return essence if MEDIA_TYPE.match(essence) else None


def _dimension(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value if 0 < value <= 65_535 else None


def _url_output(
    url: object, media_type: str | None, width: int | None = None, height: int | None = None
) -> MediaOutput:
    if not isinstance(url, str) or not url:
        raise malformed("an output has no URL string")
    data_url = DATA_URL.match(url[:300])
    if data_url:
        # Inline outputs (fal's sync mode) are already here: hand over the bytes.
        payload = url[data_url.end() :]
        try:
            data = (
                base64.b64decode(payload, validate=True) if data_url.group(2) else payload.encode()
            )
        except (binascii.Error, ValueError):
            raise malformed("an output's data URL is not valid base64") from None
        media_type = media_type or _media_type(data_url.group(1))
        return MediaOutput(media_type=media_type, data=data, width=width, height=height)
    parts = urlsplit(url)
    if (
        len(url) > MAX_URL_CHARS
        or parts.scheme.lower() not in ("http", "https")
        or not parts.netloc
    ):
        raise malformed("an output URL is not an http(s) URL")
    if media_type is None:
        media_type = mimetypes.guess_type(parts.path)[0]
    return MediaOutput(media_type=media_type, url=url, width=width, height=height)


def parse_outputs(value: object, cfg: QueueHttpConfig) -> list[MediaOutput]:
    """The outputs in the value of `outputs_field`: a URL, a list of URLs, or object(s)
    holding the URL at `output_url_field` (with a media type at `output_type_field`)."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if len(items) > MAX_OUTPUTS:
        raise malformed(f"more than {MAX_OUTPUTS} outputs")
    outputs = []
    for item in items:
        if isinstance(item, str):
            outputs.append(_url_output(item, None))
        elif isinstance(item, dict):
            media_type = (
                _media_type(lookup(item, cfg.output_type_field)) if cfg.output_type_field else None
            )
            outputs.append(
                _url_output(
                    lookup(item, cfg.output_url_field),
                    media_type,
                    _dimension(item.get("width")),
                    _dimension(item.get("height")),
                )
            )
        else:
            raise malformed(f"an output is {type(item).__name__}, not a URL or an object")
    return outputs


def fill_path(path: str, *, model: str, job_id: str | None = None) -> str:
    # Replaced rather than `str.format`ted, so other braces in a configured path are inert.
    # The model keeps its slashes (`fal-ai/flux/dev`); the upstream's id may not add any.
    filled = path.replace("{model}", quote(model, safe="/"))
    if job_id is not None:
        filled = filled.replace("{id}", quote(job_id, safe=""))
    return filled if filled.startswith("/") else "/" + filled


# -- the provider ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    headers: httpx.Headers
    body: bytes


@dataclass(slots=True)
class _Call:
    """What one run needs to speak to its upstream."""

    base_url: str
    model: str
    headers: dict[str, str]
    secrets: list[str]
    timeout: httpx.Timeout

    def url(self, path: str, job_id: str | None = None) -> str:
        return self.base_url + fill_path(path, model=self.model, job_id=job_id)

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)


@dataclass(slots=True)
class _Tracker:
    """Turns what each status reply says into progress reports, never going back."""

    report: ProgressReporter
    call: _Call
    fraction: float = 0.0
    reported: float = 0.0
    percent: bool = False
    upstream_counts: bool = False  # the upstream gave a figure: stop estimating
    running_since: float | None = None
    logs_seen: int = 0
    unknown_statuses: set[str] = field(default_factory=set)

    async def observe(
        self, cfg: QueueHttpConfig, status: TaskStatusName, data: object, final: bool
    ) -> None:
        now = asyncio.get_running_loop().time()
        if status == "running" and self.running_since is None:
            self.running_since = now
        target: float | None = None
        if cfg.progress_field:
            target, self.percent = read_progress(lookup(data, cfg.progress_field), self.percent)
            self.upstream_counts = self.upstream_counts or target is not None
        if target is None and not self.upstream_counts and status in ("queued", "running"):
            target = estimate_progress(status, now - (self.running_since or now))
        if target is not None:
            self.fraction = max(self.fraction, min(target, MAX_RUNNING_PROGRESS))
        lines: list[str] = []
        if cfg.logs_field:
            lines, self.logs_seen = new_log_lines(
                lookup(data, cfg.logs_field), self.logs_seen, final
            )
        for line in lines:
            await self.report.progress(self.fraction, self.call.redact(line))
        if lines:
            self.reported = self.fraction
        elif self.fraction - self.reported >= MIN_PROGRESS_STEP:
            await self.report.progress(self.fraction)
            self.reported = self.fraction


class QueueHttpProvider:
    name = "queue_http"

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        poll_attempts: int = 5,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.http = http
        # Transient failures in a row a poll rides out, and the first backoff between them.
        self.poll_attempts = poll_attempts
        self.retry_backoff_s = retry_backoff_s
        # Cancel requests still in flight after their run was cancelled again: held so
        # they are not collected mid-request.
        self._cancels: set[asyncio.Task[None]] = set()

    async def run(
        self, spec: TaskSpec, entry: TaskModelEntry, report: ProgressReporter
    ) -> list[MediaOutput]:
        cfg = entry.queue_http
        if cfg is None or not entry.base_url:
            raise ConfigError("a queue_http task model needs base_url and a queue_http section")
        call = self._call(entry, cfg, entry.model or spec.model)
        # Cancelled before the submit's reply, there is no job id to cancel with: the
        # upstream job, if it was made, runs to its end unwatched.
        job_id = await self._submit(call, cfg, spec)
        tracker = _Tracker(report=report, call=call)
        finished = False
        try:
            data, status = await self._poll(call, cfg, job_id, tracker)
            finished = True
            if status == "failed":
                message = call.redact(failure_message(lookup(data, cfg.error_field)))
                raise UpstreamError(message, code="upstream_task_failed")
            if status == "cancelled":
                raise UpstreamError(
                    "the upstream cancelled the task", code="upstream_task_cancelled"
                )
            if cfg.result_path:
                data = await self._get_json(call, call.url(cfg.result_path, job_id))
            outputs = parse_outputs(lookup(data, cfg.outputs_field), cfg)
            if not outputs:
                raise malformed(f"the finished task has no outputs at {cfg.outputs_field!r}")
            return outputs
        except asyncio.CancelledError:
            await self._abandon(call, cfg, job_id)
            raise
        except Exception:
            if not finished:  # we gave up on a job that may still be running (and billing)
                await self._abandon(call, cfg, job_id)
            raise

    # -- steps -------------------------------------------------------------------------------

    @staticmethod
    def _call(entry: TaskModelEntry, cfg: QueueHttpConfig, model: str) -> _Call:
        headers = {"Accept": "application/json"}
        key = entry.api_key()
        secrets: list[str] = []
        if key:
            value = f"{cfg.auth_scheme} {key}" if cfg.auth_scheme else key
            headers[cfg.auth_header] = value
            secrets += [key, value]
        headers.update(entry.extra_headers)
        secrets += [v for k, v in entry.extra_headers.items() if SECRET_HEADER.search(k)]
        return _Call(
            base_url=(entry.base_url or "").rstrip("/"),
            model=model,
            headers=headers,
            secrets=secrets,
            timeout=httpx.Timeout(entry.request_timeout_s, connect=entry.connect_timeout_s),
        )

    async def _submit(self, call: _Call, cfg: QueueHttpConfig, spec: TaskSpec) -> str:
        payload: dict[str, Any] = spec.input.model_dump(mode="json", exclude_none=True)
        body = {cfg.input_wrapper: payload} if cfg.input_wrapper else dict(payload)
        # The operator's extra_body wins over the client's input: it may pin settings.
        body.update(cfg.extra_body)
        reply = await self._send(call, "POST", call.url(cfg.submit_path), body=body)
        self._check(call, reply)
        job_id = lookup(_json(reply.body), cfg.id_field)
        if isinstance(job_id, int) and not isinstance(job_id, bool):
            job_id = str(job_id)
        if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_CHARS:
            raise malformed(f"the submit reply has no job id at {cfg.id_field!r}")
        log.debug("submitted a %s task upstream as %s", spec.kind, job_id)
        return job_id

    async def _poll(
        self, call: _Call, cfg: QueueHttpConfig, job_id: str, tracker: _Tracker
    ) -> tuple[object, TaskStatusName]:
        """Poll until the job ends; its last status reply and how it ended."""
        url = call.url(cfg.status_path, job_id)
        while True:
            data = await self._get_json(call, url)
            value = lookup(data, cfg.status_field)
            if value is None:
                raise malformed(f"the status reply has no {cfg.status_field!r}")
            status = map_status(value, cfg.status_values)
            if status is None:
                assert isinstance(value, str)  # map_status refuses anything else
                if value not in tracker.unknown_statuses and len(tracker.unknown_statuses) < 20:
                    tracker.unknown_statuses.add(value)
                    log.warning("upstream job %s: unknown status %r, taken as running",
                                job_id, value[:100])  # fmt: skip
                status = "running"
            final = status in ("succeeded", "failed", "cancelled")
            await tracker.observe(cfg, status, data, final)
            if final:
                return data, status
            await asyncio.sleep(cfg.poll_interval_s)

    async def _get_json(self, call: _Call, url: str) -> object:
        """GET a JSON object, riding out a few transient failures (429, 5xx, connection
        trouble) with backoff: the job runs on upstream meanwhile."""
        failures = 0
        while True:
            try:
                reply = await self._send(call, "GET", url)
                self._check(call, reply)
                return _json(reply.body)
            except UpstreamError as exc:
                failures += 1
                if not exc.retryable or failures >= self.poll_attempts:
                    raise
                delay = self._backoff(failures, exc.retry_after)
                log.info("upstream poll failed (%s); retry %d in %.2fs",
                         exc.message, failures, delay)  # fmt: skip
                await asyncio.sleep(delay)

    def _backoff(self, failures: int, retry_after: float | None) -> float:
        delay = jittered_backoff(self.retry_backoff_s, BACKOFF_MAX_S, failures)
        return max(delay, min(retry_after or 0.0, RETRY_AFTER_MAX_S))

    async def _abandon(self, call: _Call, cfg: QueueHttpConfig, job_id: str) -> None:
        """Ask the upstream to cancel the job, best effort and briefly. Shielded, so a run
        cancelled again while waiting leaves at once and the request still goes out."""
        if not cfg.cancel_path:
            return
        url = call.url(cfg.cancel_path, job_id)
        task = asyncio.create_task(self._send_cancel(call, cfg.cancel_method, url, job_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)
        await asyncio.shield(task)

    async def _send_cancel(self, call: _Call, method: str, url: str, job_id: str) -> None:
        try:
            async with asyncio.timeout(CANCEL_TIMEOUT_S):
                reply = await self._send(call, method, url, body=None)
            if reply.status >= 400:
                log.warning("upstream job %s: cancel answered %d", job_id, reply.status)
        except Exception as exc:  # a failed cancel must not hide why the run ended
            log.warning("upstream job %s: cancel failed: %s", job_id,
                        call.redact(str(exc)) or type(exc).__name__)  # fmt: skip

    # -- transport ---------------------------------------------------------------------------

    async def _send(
        self, call: _Call, method: str, url: str, *, body: dict[str, Any] | None = None
    ) -> _Reply:
        """One request, its reply read up to `MAX_REPLY_BYTES`."""
        headers = dict(call.headers)
        content = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            content = orjson.dumps(body)
        try:
            async with self.http.stream(
                method, url, content=content, headers=headers, timeout=call.timeout
            ) as response:
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > MAX_REPLY_BYTES:
                    raise malformed(f"the reply is larger than {MAX_REPLY_BYTES} bytes")
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > MAX_REPLY_BYTES:
                        raise malformed(f"the reply is larger than {MAX_REPLY_BYTES} bytes")
                    chunks.append(chunk)
                return _Reply(response.status_code, response.headers, b"".join(chunks))
        except httpx.HTTPError as exc:
            silent = f"the upstream did not answer within {call.timeout.read:g}s"
            raise transport_error(exc, call.timeout.connect or 0.0, silent) from exc
        except httpx.InvalidURL as exc:
            raise UpstreamError(
                f"the upstream URL is invalid: {call.redact(str(exc))}", code="upstream_error"
            ) from exc

    @staticmethod
    def _check(call: _Call, reply: _Reply) -> None:
        if 200 <= reply.status < 300:
            return
        # Upstreams sometimes quote the key they were sent; never pass it on.
        message = call.redact(_error_text(reply.body))[:MAX_MESSAGE_CHARS]
        raise UpstreamError(
            f"upstream answered {reply.status}: {message}",
            upstream_status=reply.status,
            retry_after=parse_retry_after(reply.headers.get("retry-after")),
            # Only these say "later may work"; other 4xx would fail the same way again.
            retryable=reply.status in (408, 425, 429) or reply.status >= 500,
            code="upstream_error",
        )


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise malformed("the reply is not JSON") from None
    if not isinstance(data, dict):
        raise malformed(f"the reply is a JSON {type(data).__name__}, not an object")
    return data


def _error_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body[:MAX_MESSAGE_CHARS].decode("utf-8", "replace").strip() or "no body"
    if isinstance(data, dict):
        for key in ("error", "detail", "message"):
            if data.get(key):
                return failure_message(data[key])
    return "upstream returned an error"
