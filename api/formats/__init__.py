"""Wire formats: each module turns canonical events into one API's stream events, and a
transcript into that API's non-streaming response and error shape.

Rendering may need memory of earlier events (Anthropic numbers its content blocks; Gemini
sends a function call only once it is whole), so a format hands out one `Renderer` per
stream. Rendering is deterministic: a resumed tail rebuilds the renderer's state (from
the latest saved snapshot of it, then the events after that up to the resume point) and
gets exactly the frames it sent before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from shared import events as ev
from shared.errors import SpoolError
from shared.store import JobRecord
from shared.transcript import ToolCall, Transcript


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE event before it gets its id: an optional event name and its data, rendered
    to bytes once (JSON as orjson writes it). A format whose events number themselves
    (`sequence_ids`) gives each frame its `id`."""

    data: bytes
    event: str | None = None
    id: str | None = None


class Renderer(Protocol):
    def frames(self, entry_id: str, event: ev.Event) -> list[Frame]:
        """The SSE events for one canonical event (`entry_id` is its Redis id, whose
        millisecond part is when it was written)."""
        ...


class TextSplicer(Protocol):
    """A stateless renderer that renders a plain text delta from its stored text (see
    `ev.plain_text`), without the event being decoded: `text` is the text's UTF-8 bytes,
    which need no escaping in JSON. It returns the whole SSE event, `id:` line included,
    exactly as `frames` and `tail.encode_frames` would make it."""

    def text_event(self, entry_id: str, text: bytes) -> bytes: ...


class StatefulRenderer(Renderer, Protocol):
    """The renderer of a stateful format: its state can be saved to a few bytes and put back
    into a fresh renderer, which then renders exactly what the saved one would."""

    state_tag: str  # names the format and the layout of its state; a new layout, a new tag

    def snapshot(self) -> bytes: ...

    def restore(self, state: bytes) -> None: ...


class WireFormat(Protocol):
    surface: str
    stateful: bool  # whether its renderers remember earlier events (then `StatefulRenderer`)
    sse_ids: bool  # whether events carry `id:` lines (else the id travels in the data)
    # Whether events are numbered from 0 across the whole stream, their number being their
    # id and resume point (then `SequencedFormat`); else ids are Redis entry ids.
    sequence_ids: bool
    keepalive: bytes  # what an idle stream sends to keep proxies from timing it out

    def renderer(self, render: dict[str, Any]) -> Renderer: ...

    def response(self, record: JobRecord, transcript: Transcript) -> dict[str, Any]:
        """The non-streaming response body assembled from a transcript."""
        ...

    def error_body(self, error: SpoolError) -> dict[str, Any]: ...


class SequencedFormat(WireFormat, Protocol):
    """A format whose events carry their own sequence numbers (OpenAI Responses)."""

    def opening(self, render: dict[str, Any]) -> list[Frame]:
        """The frames a stream starts with before any of its events (numbered from 0)."""
        ...


PING = b": ping\n"  # a comment line and no blank line (see shared.sse.format_comment)


def entry_ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


def snapshot_calls(calls: dict[int, ToolCall]) -> bytes:
    """Tool calls a renderer holds until they are whole, as a snapshot of its state:
    `[index, id, name, arguments, signature]` each."""
    return orjson.dumps([[c.index, c.id, c.name, c.arguments, c.signature] for c in calls.values()])


def restore_calls(state: bytes) -> dict[int, ToolCall]:
    return {
        int(index): ToolCall(
            int(index),
            str(call_id),
            str(name),
            str(arguments),
            None if signature is None else str(signature),
        )
        for index, call_id, name, arguments, signature in orjson.loads(state)
    }


def registry() -> dict[str, WireFormat]:
    from api.formats.anthropic import AnthropicFormat
    from api.formats.gemini import GeminiFormat
    from api.formats.openai_chat import OpenAIChatFormat
    from api.formats.openai_completions import OpenAICompletionsFormat
    from api.formats.openai_responses import OpenAIResponsesFormat
    from api.formats.simple import SimpleFormat
    from api.formats.tasks import TaskFormat

    formats: list[WireFormat] = [
        OpenAIChatFormat(),
        OpenAICompletionsFormat(),
        OpenAIResponsesFormat(),
        AnthropicFormat(),
        GeminiFormat(),
        SimpleFormat(),
        TaskFormat(),
    ]
    return {f.surface: f for f in formats}
