"""What every run of a job shares, whether it streams a generation or makes an asset: the
fenced writes to the job's stream, retries before anything was written, the race against
cancel and the time limit, and exactly one terminal event at the end."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Callable

from shared import events as ev
from shared.backoff import jittered_backoff
from shared.errors import EventsLost, FenceLost, UpstreamError
from shared.redact import redact
from shared.redis.clients import REDIS_BLIP_ERRORS, with_redis_retry
from shared.settings import Settings
from shared.store import JobRecord, Status, StreamStore
from shared.supervise import cancel_and_wait
from shared.transcript import Transcript
from worker.appender import Appender
from worker.metrics import WorkerMetrics, unused

log = logging.getLogger(__name__)
Terminal = ev.Finish | ev.Error | ev.TaskResult


def backoff_delay(settings: Settings, failures: int, retry_after: float | None) -> float | None:
    """Exponential backoff with full jitter, never shorter than the upstream's Retry-After.
    None when the upstream asks for a longer wait than is worth holding a stream open."""
    if retry_after is not None and retry_after > settings.upstream_retry_after_max_s:
        return None
    delay = jittered_backoff(settings.upstream_backoff_s, settings.upstream_backoff_max_s, failures)
    return max(retry_after or 0.0, delay)


class CancelFlag:
    """A run's cancel flag, set once (a cancel, a lost lease, the abandoned-stream policy):
    its run is told at once, without a task of its own waiting on it."""

    __slots__ = ("_callback", "raised")

    def __init__(self) -> None:
        self.raised = False  # whether it is set: read it, do not write it (`set` does)
        self._callback: Callable[[], object] | None = None

    def set(self) -> None:
        if not self.raised:
            self.raised = True
            if self._callback is not None:
                self._callback()

    def on_set(self, callback: Callable[[], object] | None) -> None:
        """Call `callback` when the flag is set (now, if it is); None stops it."""
        self._callback = callback
        if callback is not None and self.raised:
            callback()


class JobRun:
    """One attempt at one job. Subclasses implement `_attempt` (one try at the upstream,
    returning the terminal event of a success). `secret` (the upstream's key) is redacted
    from every upstream error message. Events go to the stream through the process's
    `Appender`, without waiting for each write; the terminal event waits for them all.
    `metrics` is the worker's (the runtime sets it); failures are logged with their code
    and reason, as fields (`code`, `reason`) of the job's log lines."""

    noun = "job"  # what error messages call it
    timeout_code = "generation_timeout"

    def __init__(
        self,
        store: StreamStore,
        settings: Settings,
        record: JobRecord,
        attempt: str,
        provider_name: str,
        appender: Appender,
        held: int = 0,
        *,
        timeout_s: float,
        secret: str | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.record = record
        self.attempt = attempt
        self.provider_name = provider_name
        self.timeout_s = timeout_s
        self.secret = secret
        self.cancelled = CancelFlag()
        self.transcript = Transcript()
        self.attempting = False  # an upstream attempt is under way (not backing off)
        self.writer = appender.writer(record.id, attempt, held)
        self.metrics: WorkerMetrics = unused()
        self.terminal: Terminal | None = None  # how the job ended, once it has
        self._noted: UpstreamError | None = None  # the upstream error last counted

    @property
    def stream_id(self) -> str:
        return self.record.id

    @property
    def detached(self) -> bool:
        """A job run in the background (a Responses API `background` request) goes on
        whether or not anyone reads it: the abandoned-stream policy passes it by."""
        return bool(self.record.request.get("detached"))

    @property
    def started(self) -> bool:
        """Whether anything was handed to the stream (it will be there, or the run fails)."""
        return self.writer.queued > 0

    async def _write(self, events: list[ev.Event]) -> None:
        """Append `events`, led by Start if nothing was written yet. Start goes out with the
        first real event, so an attempt that dies before producing anything leaves the
        stream empty and the job can simply run again."""
        if not self.started:
            # A prompt size the provider told before the first token rides on Start.
            told = next((e.input_tokens for e in events if isinstance(e, ev.Usage)), None)
            if events:
                self._first_event()
            start = self._start_event(told)
            self.transcript.apply(start)
            events = [start, *events]
        await self.writer.write(events)

    def _start_event(self, input_tokens: int | None) -> ev.Start:
        return ev.Start(
            model=self.record.model, provider=self.provider_name, input_tokens=input_tokens
        )

    def _first_event(self) -> None:
        """The job's first event is being written (once per job)."""

    def _upstream_error(self, exc: UpstreamError) -> ev.Error:
        """The error event a failed upstream ends the stream with."""
        return upstream_error_event(exc)

    def _note_error(self, exc: UpstreamError) -> None:
        """Count a failed upstream attempt, once however many layers see it go by."""
        if exc is self._noted:
            return
        self._noted = exc
        status = str(exc.upstream_status) if exc.upstream_status is not None else "none"
        self.metrics.upstream_errors.labels(self.provider_name, exc.code, status).inc()

    async def _attempt(self) -> Terminal:
        raise NotImplementedError

    async def _pump(self) -> Terminal:
        """Run the upstream. Failures before the first event are retried with backoff;
        after it, a retry would repeat what readers already have, so they end the job."""
        failures = 0
        while True:
            try:
                self.attempting = True
                return await self._attempt()
            except UpstreamError as exc:
                self.attempting = False
                self._note_error(exc)
                failures += 1
                if self.started or not exc.retryable:
                    raise
                if failures >= self.settings.upstream_max_attempts:
                    raise
                delay = backoff_delay(self.settings, failures, exc.retry_after)
                if delay is None:
                    raise
                log.info(
                    "job %s: upstream failed before the first event (%s: %s); retry %d in %.2fs",
                    self.stream_id, exc.code, self._redacted(exc.message), failures, delay,
                    extra={"code": exc.code, "reason": self._redacted(exc.message)},
                )  # fmt: skip
                await asyncio.sleep(delay)

    async def run(self) -> Status:
        loop = asyncio.get_running_loop()
        pump = loop.create_task(self._pump(), name=f"pump:{self.stream_id}")
        # Done when the pump ends, a cancel comes or the time is up, whichever is first.
        race: asyncio.Future[None] = loop.create_future()

        def end(*_: object) -> None:
            if not race.done():
                race.set_result(None)

        pump.add_done_callback(end)
        timer = loop.call_later(self.timeout_s, end)
        self.cancelled.on_set(end)
        try:
            await race
        except asyncio.CancelledError:
            await cancel_and_wait(pump)
            await asyncio.shield(self._hand_back_or_fail())
            raise
        finally:
            timer.cancel()
            self.cancelled.on_set(None)
            pump.remove_done_callback(end)

        if not pump.done():
            # Cut while an attempt was under way: the upstream had the prompt.
            self.transcript.prompt_sent = self.attempting
            await cancel_and_wait(pump)
            if self.cancelled.raised:
                finish = ev.Finish(reason="cancelled", usage=self.transcript.usage)
                return await self.finish(Status.CANCELLED, finish)
            error = ev.Error(code=self.timeout_code, message=f"the {self.noun} took too long")
            return await self.finish(Status.FAILED, error)
        try:
            terminal = pump.result()
        except FenceLost:
            log.warning(
                "job %s: attempt %s was fenced out", self.stream_id, self.attempt,
                extra={"code": "fenced_out", "reason": "another attempt owns the job"},
            )  # fmt: skip
            return Status.FAILED
        except EventsLost as exc:
            error = ev.Error(code=exc.code, message=exc.message, retryable=True)
            return await self.finish(Status.FAILED, error)
        except UpstreamError as exc:
            # Whatever the upstream said, the key it was sent never goes further.
            exc.message = redact(exc.message, [self.secret or ""])
            return await self.finish(Status.FAILED, self._upstream_error(exc))
        except REDIS_BLIP_ERRORS as exc:
            # Redis stayed away longer than redis_retry_s: nothing can be written now. The
            # lease runs out and the reaper ends the job once Redis is back.
            self.metrics.redis_error("job")
            log.error(
                "job %s: redis unreachable; leaving the job to the reaper", self.stream_id,
                extra={"code": "redis_unavailable", "reason": f"{type(exc).__name__}: {exc}"},
            )  # fmt: skip
            return Status.FAILED
        except Exception as exc:
            log.exception(
                "job %s: failed", self.stream_id,
                extra={"code": "internal_error", "reason": f"{type(exc).__name__}: {exc}"},
            )  # fmt: skip
            error = ev.Error(code="internal_error", message=f"the {self.noun} failed inside Spool")
            return await self.finish(Status.FAILED, error)
        return await self.finish(Status.COMPLETED, terminal)

    async def finish(self, status: Status, terminal: Terminal) -> Status:
        self.terminal = terminal
        self.transcript.apply(terminal)
        self._log_end(status, terminal)
        try:
            if not self.started and not isinstance(terminal, ev.Error):
                await self._write([])
            last: list[ev.Event] = []
            with contextlib.suppress(EventsLost):
                # What Redis lost cannot be written again: the terminal goes after it.
                last = await self.writer.close()
            # The events not sent yet go with the terminal one, in the same script.
            await with_redis_retry(
                self.settings,
                lambda: self.store.finish(
                    self.stream_id,
                    self.attempt,
                    status=status,
                    terminal=terminal,
                    transcript=self.transcript,
                    record=self.record,
                    held=self.writer.held,
                    events=last,
                ),
            )
        except FenceLost:
            log.warning(
                "job %s: attempt %s was fenced out at finish", self.stream_id, self.attempt,
                extra={"code": "fenced_out", "reason": "another attempt owns the job"},
            )  # fmt: skip
        return status

    def _redacted(self, message: str) -> str:
        return redact(message, [self.secret or ""])

    def _log_end(self, status: Status, terminal: Terminal) -> None:
        """One line for the job's end: a failure with its code and reason (a warning), a
        finish with its reason and token counts."""
        if isinstance(terminal, ev.Error):
            self.metrics.job_errors.labels(terminal.code).inc()
            reason = self._redacted(terminal.message)
            log.warning(
                "job %s %s: %s: %s", self.stream_id, status.value, terminal.code, reason,
                extra={"status": status.value, "code": terminal.code, "reason": reason},
            )  # fmt: skip
            return
        fields: dict[str, str | int] = {"status": status.value}
        if isinstance(terminal, ev.Finish):
            fields["finish_reason"] = terminal.reason
            usage = self.transcript.usage
            if usage is not None:
                fields["input_tokens"] = usage.input_tokens
                fields["output_tokens"] = usage.output_tokens
        log.info("job %s %s", self.stream_id, status.value, extra=fields)

    async def _hand_back_or_fail(self) -> None:
        """The worker is shutting down: a job that emitted nothing goes back to the queue;
        one that did ends with a visible error rather than hanging its readers."""
        try:
            if not self.started and await self.store.release(self.stream_id, self.attempt):
                return
            error = ev.Error(
                code="worker_shutdown",
                message=f"the worker stopped during the {self.noun}",
                retryable=True,
            )
            await self.finish(Status.FAILED, error)
        except Exception:
            log.exception("job %s: could not end the job on shutdown", self.stream_id)


def upstream_error_event(exc: UpstreamError) -> ev.Error:
    return ev.Error(
        code=exc.code,
        message=exc.message,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
        status=exc.upstream_status,
    )


def new_attempt() -> str:
    return secrets.token_hex(16)
