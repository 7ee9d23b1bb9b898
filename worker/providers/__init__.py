"""Upstream provider adapters: each turns one upstream's stream into canonical events."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from shared import events as ev
from shared.model_table import ModelEntry
from shared.request import GenerationRequest


class Provider(Protocol):
    """Streams one generation. Yields content events and ends with exactly one `Finish`;
    raises `UpstreamError` when the upstream fails. Cancelling the iteration must close
    the upstream request."""

    name: str

    def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]: ...
