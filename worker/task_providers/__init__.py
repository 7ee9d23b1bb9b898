"""Task provider adapters: each runs one asset task against one kind of upstream and hands
back its outputs. The task run (`worker/task_run.py`) stores the outputs, writes the events
and handles cancellation, timeouts and failures around it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Protocol

from shared.settings import TaskModelEntry
from shared.tasks import TaskSpec


@dataclass(frozen=True, slots=True)
class MediaOutput:
    """One output: its bytes (to store); a function that writes it into the file the run
    stores it in, a piece at a time (for outputs made on the worker, so a large one is never
    whole in memory; the run calls it in a worker thread); or the URL where the upstream hosts
    it (which the run fetches into the artifact store, or passes through, as the model entry
    says)."""

    media_type: str | None
    data: bytes | None = None
    url: str | None = None
    write: Callable[[IO[bytes]], None] | None = None
    width: int | None = None
    height: int | None = None
    duration_s: float | None = None
    frames: int | None = None


class ProgressReporter(Protocol):
    async def progress(self, fraction: float, message: str | None = None) -> None:
        """Record progress (0 to 1, never going back) and an optional log line."""
        ...


class TaskProvider(Protocol):
    """Runs one task to its end. Returns the outputs; raises `UpstreamError` when the
    upstream fails or reports failure. Cancelling the call (CancelledError) must also cancel
    the upstream job where the upstream can."""

    name: str

    async def run(
        self, spec: TaskSpec, entry: TaskModelEntry, report: ProgressReporter
    ) -> list[MediaOutput]: ...
