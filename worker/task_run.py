"""One run of one asset task: the provider makes the outputs while its progress goes into
the task's stream; the outputs go into the artifact store (or pass through as the
upstream's URLs), and a `TaskResult` ends the stream."""

from __future__ import annotations

import math

import httpx

from shared import events as ev
from shared.artifacts import ArtifactStore, OutputTooLarge
from shared.errors import UpstreamError
from shared.settings import Settings, TaskModelEntry
from shared.store import JobRecord, StreamStore
from shared.tasks import TaskOutput, TaskSpec, output_path
from worker.appender import Appender
from worker.job_run import JobRun
from worker.task_providers import MediaOutput, TaskProvider


class TaskRun(JobRun):
    noun = "task"
    timeout_code = "task_timeout"

    def __init__(
        self,
        store: StreamStore,
        settings: Settings,
        record: JobRecord,
        attempt: str,
        provider: TaskProvider,
        artifacts: ArtifactStore,
        http: httpx.AsyncClient,
        appender: Appender,
        held: int = 0,
    ) -> None:
        entry = TaskModelEntry.model_validate(record.request["entry"])
        super().__init__(
            store,
            settings,
            record,
            attempt,
            provider.name,
            appender,
            held,
            timeout_s=settings.task_timeout_s,
            secret=entry.api_key(),
        )
        self.provider = provider
        self.artifacts = artifacts
        self.http = http
        self.spec = TaskSpec.model_validate(record.request["task"])
        self.entry = entry
        self.progress_so_far = 0.0

    async def progress(self, fraction: float, message: str | None = None) -> None:
        """The provider's progress report (see `ProgressReporter`). Progress never goes back
        and stays below 1 until the outputs are stored."""
        if not math.isfinite(fraction):
            fraction = self.progress_so_far
        fraction = min(max(fraction, self.progress_so_far), 0.99)
        if fraction == self.progress_so_far and not message and self.started:
            return
        self.progress_so_far = fraction
        text = message[:2000] if message else None
        await self._write([ev.TaskProgress(progress=round(fraction, 4), message=text)])

    async def _attempt(self) -> ev.TaskResult:
        outputs = await self.provider.run(self.spec, self.entry, self)
        if not outputs:
            raise UpstreamError("the provider produced no output", code="upstream_malformed")
        try:
            stored = [await self._keep(index, output) for index, output in enumerate(outputs)]
        except OutputTooLarge as exc:
            raise UpstreamError(exc.message, code=exc.code) from exc
        return ev.TaskResult(outputs=[o.model_dump(exclude_none=True) for o in stored])

    async def _keep(self, index: int, output: MediaOutput) -> TaskOutput:
        """Store one output (or pass its upstream URL through) and describe it."""
        media_type = output.media_type
        if output.data is not None:
            name = self.artifacts.name(index, media_type)
            size = await self.artifacts.write_bytes(self.stream_id, name, output.data)
        elif output.write is not None:
            name = self.artifacts.name(index, media_type)
            size = await self.artifacts.write_with(self.stream_id, name, output.write)
        elif output.url is not None and not self.entry.store_outputs:
            return self._describe(index, output, output.url, media_type, None, stored=False)
        elif output.url is not None:
            media_type, name, size = await self._fetch(index, output.url, media_type)
        else:
            raise UpstreamError("an output has neither data nor a URL", code="upstream_malformed")
        url = self._public_url(index, name)
        return self._describe(index, output, url, media_type, size, stored=True)

    def _public_url(self, index: int, name: str) -> str:
        if self.settings.artifacts_base_url:
            return f"{self.settings.artifacts_base_url.rstrip('/')}/{self.stream_id}/{name}"
        return output_path(self.stream_id, index, self.settings.public_base_url)

    @staticmethod
    def _describe(
        index: int,
        output: MediaOutput,
        url: str,
        media_type: str | None,
        size: int | None,
        *,
        stored: bool,
    ) -> TaskOutput:
        return TaskOutput(
            index=index,
            url=url,
            media_type=media_type or "application/octet-stream",
            size=size,
            width=output.width,
            height=output.height,
            duration_s=output.duration_s,
            frames=output.frames,
            stored=stored,
        )

    async def _fetch(self, index: int, url: str, media_type: str | None) -> tuple[str, str, int]:
        """Download an upstream-hosted output into the artifact store, streaming it to disk
        (bounded by `max_output_bytes`)."""
        timeout = httpx.Timeout(self.entry.request_timeout_s, connect=self.entry.connect_timeout_s)
        # Media is compressed already. Asking for it as it is keeps every chunk the size it
        # arrives in: a transfer-compressed chunk could inflate to many times that in memory.
        headers = {"Accept-Encoding": "identity"}
        try:
            async with self.http.stream("GET", url, timeout=timeout, headers=headers) as response:
                if response.status_code != 200:
                    raise UpstreamError(
                        f"fetching output {index} answered HTTP {response.status_code}",
                        upstream_status=response.status_code,
                        retryable=response.status_code >= 500,
                        code="upstream_output_unavailable",
                    )
                media_type = media_type or response.headers.get("content-type")
                name = self.artifacts.name(index, media_type)
                size = await self.artifacts.write_stream(
                    self.stream_id, name, response.aiter_bytes()
                )
        except httpx.HTTPError as exc:
            raise UpstreamError(
                f"fetching output {index} failed: {type(exc).__name__}",
                retryable=True,
                code="upstream_output_unavailable",
            ) from exc
        return media_type or "application/octet-stream", name, size
