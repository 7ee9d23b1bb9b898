"""Wire formats: each module turns canonical events into one API's stream events, and a
transcript into that API's non-streaming response and error shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from shared import events as ev
from shared.errors import SpoolError
from shared.store import JobRecord
from shared.transcript import Transcript


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE event before it gets its id: an optional event name and its data."""

    data: str
    event: str | None = None


class WireFormat(Protocol):
    surface: str

    def frames(self, event: ev.Event, render: dict[str, Any]) -> list[Frame]:
        """The SSE events for one canonical event. Must be deterministic: resume re-renders."""
        ...

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        """The non-streaming response body assembled from a transcript."""
        ...

    def error_body(self, error: SpoolError) -> dict[str, Any]: ...


def registry() -> dict[str, WireFormat]:
    from api.formats.openai_chat import OpenAIChatFormat

    formats: list[WireFormat] = [OpenAIChatFormat()]
    return {f.surface: f for f in formats}
