"""One run of one generation job: claim it, stream the provider into the job's Redis
Stream, and end it with exactly one terminal event."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from shared import events as ev
from shared.errors import FenceLost, UpstreamError
from shared.request import GenerationRequest
from shared.settings import ModelEntry
from shared.store import JobRecord, Status, StreamStore
from shared.transcript import Transcript
from worker.providers import Provider

log = logging.getLogger(__name__)


class GenerationRun:
    def __init__(
        self,
        store: StreamStore,
        record: JobRecord,
        attempt: str,
        provider: Provider,
        timeout_s: float,
    ) -> None:
        self.store = store
        self.record = record
        self.attempt = attempt
        self.provider = provider
        self.timeout_s = timeout_s
        self.cancelled = asyncio.Event()
        self.transcript = Transcript()
        self._started = False
        self.entry = ModelEntry.model_validate(record.request["entry"])
        self.request = GenerationRequest.model_validate(record.request["request"])

    @property
    def stream_id(self) -> str:
        return self.record.id

    async def _append(self, event: ev.Event) -> None:
        batch: list[ev.Event] = [event]
        if not self._started:
            # Start goes out with the first real event, so an attempt that dies before
            # producing anything leaves the stream empty and the job can simply run again.
            start = ev.Start(model=self.record.model, provider=self.provider.name)
            self.transcript.apply(start)
            batch.insert(0, start)
        await self.store.append(self.stream_id, self.attempt, batch)
        self._started = True

    async def _pump(self) -> ev.Finish:
        stream = self.provider.stream(self.request, self.entry)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if isinstance(event, ev.Finish):
                    return event
                self.transcript.apply(event)
                await self._append(event)
        raise UpstreamError("the provider ended without a finish")

    async def run(self) -> Status:
        pump = asyncio.create_task(self._pump(), name=f"pump:{self.stream_id}")
        cancel_wait = asyncio.create_task(self.cancelled.wait(), name=f"cancel:{self.stream_id}")
        try:
            done, _ = await asyncio.wait(
                {pump, cancel_wait}, timeout=self.timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            await self._stop(pump)
            await asyncio.shield(self._hand_back_or_fail())
            raise
        finally:
            cancel_wait.cancel()

        if pump not in done:
            await self._stop(pump)
            if self.cancelled.is_set():
                usage = self.transcript.usage
                return await self._finish(
                    Status.CANCELLED, ev.Finish(reason="cancelled", usage=usage)
                )
            return await self._finish(
                Status.FAILED,
                ev.Error(code="generation_timeout", message="the generation took too long"),
            )
        try:
            finish = pump.result()
        except FenceLost:
            log.warning(
                "stream %s: attempt %s lost its fence; stopping", self.stream_id, self.attempt
            )
            return Status.FAILED
        except UpstreamError as exc:
            return await self._finish(Status.FAILED, upstream_error_event(exc))
        except Exception:
            log.exception("stream %s: generation failed", self.stream_id)
            error = ev.Error(code="internal_error", message="the generation failed inside Spool")
            return await self._finish(Status.FAILED, error)
        return await self._finish(Status.COMPLETED, finish)

    async def finish_now(self, status: Status, terminal: ev.Finish | ev.Error) -> Status:
        return await self._finish(status, terminal)

    async def _stop(self, pump: asyncio.Task[ev.Finish]) -> None:
        pump.cancel()
        with contextlib.suppress(BaseException):
            await pump

    async def _finish(self, status: Status, terminal: ev.Finish | ev.Error) -> Status:
        self.transcript.apply(terminal)
        try:
            if not self._started:
                await self._append_start_only()
            await self.store.finish(
                self.stream_id,
                self.attempt,
                status=status,
                terminal=terminal,
                transcript=self.transcript,
            )
        except FenceLost:
            log.warning(
                "stream %s: attempt %s lost its fence at finish", self.stream_id, self.attempt
            )
        return status

    async def _append_start_only(self) -> None:
        start = ev.Start(model=self.record.model, provider=self.provider.name)
        self.transcript.apply(start)
        await self.store.append(self.stream_id, self.attempt, [start])
        self._started = True

    async def _hand_back_or_fail(self) -> None:
        """The worker is shutting down: a job that emitted nothing goes back to the queue;
        one that did ends with a visible error rather than hanging its readers."""
        try:
            if not self._started and await self.store.release(self.stream_id, self.attempt):
                return
            error = ev.Error(
                code="worker_shutdown",
                message="the worker stopped during the generation",
                retryable=True,
            )
            await self._finish(Status.FAILED, error)
        except Exception:
            log.exception("stream %s: could not end the stream on shutdown", self.stream_id)


def upstream_error_event(exc: UpstreamError) -> ev.Error:
    return ev.Error(
        code=exc.code,
        message=exc.message,
        retryable=exc.retryable,
        retry_after=exc.retry_after,
        status=exc.upstream_status,
    )


def new_attempt() -> str:
    return uuid.uuid4().hex
