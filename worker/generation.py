"""One run of one generation job: stream the provider into the job's Redis Stream and end
it with exactly one terminal event."""

from __future__ import annotations

import asyncio
import contextlib

from shared import events as ev
from shared.errors import UpstreamError
from shared.request import GenerationRequest
from shared.settings import ModelEntry, Settings
from shared.store import JobRecord, StreamStore
from worker.appender import Appender
from worker.job_run import JobRun
from worker.providers import Provider


class GenerationRun(JobRun):
    noun = "generation"

    def __init__(
        self,
        store: StreamStore,
        settings: Settings,
        record: JobRecord,
        attempt: str,
        provider: Provider,
        appender: Appender,
        held: int = 0,
    ) -> None:
        entry = ModelEntry.model_validate(record.request["entry"])
        super().__init__(
            store,
            settings,
            record,
            attempt,
            provider.name,
            appender,
            held,
            timeout_s=settings.job_timeout_s,
            secret=entry.api_key(),
        )
        self.provider = provider
        self.entry = entry
        self.request = GenerationRequest.model_validate(record.request["request"])

    async def _attempt(self) -> ev.Finish:
        stream = self.provider.stream(self.request, self.entry)
        async with contextlib.aclosing(stream) as events:
            async for event in events:
                if self.cancelled.is_set():
                    raise asyncio.CancelledError  # see `cancel_and_wait`
                if isinstance(event, ev.Finish):
                    return event
                self.transcript.apply(event)
                await self._write([event])
        raise UpstreamError("the provider ended without a finish", code="upstream_incomplete")
