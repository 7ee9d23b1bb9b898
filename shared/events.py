"""The canonical event model: what workers append to a stream and every wire format renders.

An event travels through Redis as one stream entry with a single field, `e`, holding the
event's JSON. The `type` field discriminates.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "cancelled"]
FIELD = b"e"
# Bounds that keep a hostile upstream's numbers storable: an event outside them is invalid,
# so the provider adapter skips it as malformed.
MAX_TOOL_INDEX = 1023
MAX_TOKENS = 10**12


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Start(_Event):
    """The first event of a stream. `input_tokens` is the prompt's size when the provider
    said it before the first token (Anthropic's message_start does)."""

    type: Literal["start"] = "start"
    model: str
    provider: str
    input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    # Routing (a model group, fallbacks or an auto-router): the deployment that serves the
    # stream, the model it belongs to when that is not `model` (the router's choice or a
    # fallback), the router rule that chose, and every attempt made, this one last.
    deployment: str | None = None
    routed_model: str | None = None
    rule: str | None = None
    attempts: list[dict[str, Any]] | None = None


class TextDelta(_Event):
    """Answer text. `logprobs` holds the upstream's log probabilities of its tokens, in
    OpenAI's form (`[{token, logprob, bytes, top_logprobs}]`), when they were asked for."""

    type: Literal["text"] = "text"
    text: str
    logprobs: list[dict[str, Any]] | None = None


class ReasoningDelta(_Event):
    """Reasoning ("thinking") text. Anthropic signs a thinking block; the signature comes as
    a delta with empty text and must be passed back unchanged, so it is kept."""

    type: Literal["reasoning"] = "reasoning"
    text: str
    signature: str | None = None


class ToolCallDelta(_Event):
    """A fragment of a tool call. The first fragment of a call carries its id and name
    (and `server`, the configured MCP server, for a call the worker runs itself); later
    ones carry the same index and more of the JSON arguments."""

    type: Literal["tool_call"] = "tool_call"
    index: int = Field(ge=0, le=MAX_TOOL_INDEX)
    id: str | None = None
    name: str | None = None
    arguments: str = ""
    signature: str | None = None  # Gemini's thoughtSignature of the call
    server: str | None = None


class ToolResult(_Event):
    """What a server-side tool returned for the call at `index`: the worker ran it on the
    MCP server `server` and hands the result to the model next. It repeats the call's
    name and whole arguments, so a format can show the step from this event alone."""

    type: Literal["tool_result"] = "tool_result"
    index: int = Field(ge=0, le=MAX_TOOL_INDEX)
    id: str
    name: str
    server: str
    arguments: str
    output: str
    is_error: bool = False


class ToolsRunning(_Event):
    """The worker is running the MCP calls the model just made: their arguments are
    whole, and their `ToolResult`s follow."""

    type: Literal["tools_running"] = "tools_running"


class ServerTools(_Event):
    """The tools an MCP server offers the model in this generation, listed before the
    model's first output (`tools`: `{name, description, input_schema}` each)."""

    type: Literal["server_tools"] = "server_tools"
    server: str
    tools: list[dict[str, Any]]


class Usage(_Event):
    """Token counts. `input_tokens` counts all input, `cached_input_tokens` the part of it
    read from the provider's cache; `output_tokens` counts all output, `reasoning_tokens`
    the part of it spent thinking (OpenAI's reckoning; formats that count apart subtract)."""

    type: Literal["usage"] = "usage"
    input_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(default=0, ge=0, le=MAX_TOKENS)
    cached_input_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)
    reasoning_tokens: int | None = Field(default=None, ge=0, le=MAX_TOKENS)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Finish(_Event):
    """The last event of a stream that ended normally (or was cancelled)."""

    type: Literal["finish"] = "finish"
    reason: FinishReason
    usage: Usage | None = None
    # A content policy ended the output (`reason` content_filter): which and why.
    filtered: dict[str, Any] | None = None


class Error(_Event):
    """The last event of a stream that failed."""

    type: Literal["error"] = "error"
    code: str
    message: str
    retryable: bool = False
    retry_after: float | None = None
    status: int | None = None
    # Every attempt made on a routed model, when none of them served.
    attempts: list[dict[str, Any]] | None = None


class TaskProgress(_Event):
    type: Literal["task_progress"] = "task_progress"
    progress: float = Field(ge=0, le=1)
    message: str | None = None


class TaskResult(_Event):
    type: Literal["task_result"] = "task_result"
    outputs: list[dict[str, object]] = Field(default_factory=list)


Event = Annotated[
    Start
    | TextDelta
    | ReasoningDelta
    | ToolCallDelta
    | ToolResult
    | ToolsRunning
    | ServerTools
    | Usage
    | Finish
    | Error
    | TaskProgress
    | TaskResult,
    Field(discriminator="type"),
]
TERMINAL_TYPES = frozenset({"finish", "error", "task_result"})
_validate_text = TextDelta.__pydantic_validator__.validate_python


_TEXT_DELTAS: dict[str, TextDelta] = {}
TEXT_DELTAS_KEPT = 8192  # distinct short texts (tokens) whose events are kept for reuse
TEXT_DELTA_KEPT_CHARS = 32


def text_delta(text: str) -> TextDelta:
    """`TextDelta(text=text)`, validated the same. Providers make one per token, and the
    same tokens come again and again: the events of short texts are kept and handed out
    again (events are frozen), up to `TEXT_DELTAS_KEPT` of them (their JSON too, see
    `encode`)."""
    if type(text) is not str:  # refused, or made, as the model does it
        made: TextDelta = _validate_text({"text": text})
        return made
    kept = _TEXT_DELTAS.get(text)
    if kept is None:
        kept = _validate_text({"text": text})
        _keep(_TEXT_DELTAS, text, kept)
    return kept


def _keep(kept: dict[str, Any], text: str, value: Any) -> None:
    """Keep `value` for a short `text`, forgetting everything once the dict is full."""
    if len(text) <= TEXT_DELTA_KEPT_CHARS:
        if len(kept) >= TEXT_DELTAS_KEPT:
            kept.clear()
        kept[text] = value


_adapter: TypeAdapter[Event] = TypeAdapter(Event)


def is_terminal(event: Event) -> bool:
    return event.type in TERMINAL_TYPES


def encode(event: Event) -> bytes:
    # Text deltas are nearly every event of a stream: their JSON is written directly
    # (the same bytes as the general path's, in a fifth of the time).
    if type(event) is TextDelta and event.logprobs is None:
        text = event.text
        encoded = _ENCODED_TEXTS.get(text)
        if encoded is None:
            encoded = orjson.dumps({"type": "text", "text": text})
            _keep(_ENCODED_TEXTS, text, encoded)
        return encoded
    return orjson.dumps(event.model_dump(mode="json", exclude_none=True))


_ENCODED_TEXTS: dict[str, bytes] = {}  # the JSON of the text deltas of short texts


def decode(raw: bytes | str) -> Event:
    return _adapter.validate_json(raw)


_PLAIN_TEXT_HEAD = b'{"type":"text","text":"'
_PLAIN_TEXT_TAIL = b'"}'
_NEEDS_ESCAPE_CHARS = rb'"\\\x00-\x1f'  # what a JSON string cannot hold as it is
_HEAD_LEN, _TAIL_LEN = len(_PLAIN_TEXT_HEAD), len(_PLAIN_TEXT_TAIL)
# A plain text delta whole, in one match (cheaper than testing its parts one by one).
_PLAIN_TEXT = re.compile(
    re.escape(_PLAIN_TEXT_HEAD) + b"[^" + _NEEDS_ESCAPE_CHARS + b"]*" + re.escape(_PLAIN_TEXT_TAIL)
)


def plain_text(raw: bytes) -> bytes | None:
    """The text of a stored event that is a plain text delta (as `encode` writes one) and
    whose JSON string needs no unescaping: its UTF-8 bytes, which are also its JSON string's
    contents (to be spliced into a wire format's JSON as they are). None for any other event
    (a text with a quote, a backslash or a control character, which JSON escapes, included).
    The API's readers render these without decoding them: what the workers wrote is
    trusted to be UTF-8, as `encode` writes it."""
    return stored_text(raw) if is_plain_text(raw) else None


def is_plain_text(raw: bytes) -> bool:
    """Whether `plain_text` takes `raw` (without making its text)."""
    return match_plain_text(raw) is not None


match_plain_text = _PLAIN_TEXT.fullmatch
"""`is_plain_text` as a match or None, without a Python call: for loops over many."""


def stored_text(raw: bytes) -> bytes:
    """The text of an event `plain_text` accepted (without checking it again)."""
    return raw[_HEAD_LEN:-_TAIL_LEN]
