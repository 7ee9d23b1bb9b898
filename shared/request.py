"""The canonical generation request: what every surface's request becomes, and what every
provider adapter turns into its own upstream request."""

from __future__ import annotations

import re
from array import array
from itertools import accumulate
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.errors import InvalidRequest

MAX_JSON_DEPTH = 32
# What an image, clip or document is reckoned to cost before a provider has counted it.
MEDIA_PART_TOKENS = 1000


def json_depth(value: Any, limit: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of a JSON value, counting no further than `limit` + 1."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list) and depth > deepest:
            deepest = depth
            if deepest > limit:
                break
        if isinstance(node, dict):
            stack.extend((child, depth + 1) for child in node.values())
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in node)
    return deepest


# A JSON string, escapes included (the unrolled form: no backtracking per character).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEPS = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")  # +1 and -1 as signed bytes


def json_text_too_deep(text: bytes, limit: int) -> bool:
    """Whether JSON text nests arrays and objects deeper than `limit`, judged on the bytes
    before anything is parsed: strings are blanked out, everything but brackets dropped,
    and the deepest running count of open brackets taken, all in C loops."""
    if text.count(b"{") + text.count(b"[") <= limit:
        return False  # fewer openings than the limit, strings' brackets counted too
    steps = _JSON_STRING.sub(b"", text).translate(None, _NOT_BRACKETS).translate(_STEPS)
    return max(accumulate(array("b", steps)), default=0) > limit


def estimate_input_tokens(characters: int, messages: int) -> int:
    """Input tokens of a prompt by its size: about one per 4 characters, and a few per
    message for its framing. Used where no provider has said (budgets are reserved before
    the upstream counts; a stream cut short may never hear its count)."""
    return characters // 4 + 3 * messages


def json_text(value: Any, what: str) -> str:
    """`value` as JSON text, or a 400 when it cannot be: integers past 64 bits, lone
    surrogates, or nesting deeper than `MAX_JSON_DEPTH`."""
    if json_depth(value) > MAX_JSON_DEPTH:
        raise InvalidRequest(f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidRequest(f"{what} cannot be represented as JSON: {exc}") from exc


def parse_json_object(text: str) -> dict[str, Any] | None:
    """Tool-call arguments as an object, for the APIs that carry them parsed; None when
    they are not a JSON object or are nested too deeply to pass on."""
    try:
        value = orjson.loads(text or "{}")
    except orjson.JSONDecodeError:
        return None
    if not isinstance(value, dict) or json_depth(value) > MAX_JSON_DEPTH:
        return None
    return value


class ToolCall(BaseModel):
    """A tool call the assistant made earlier in the conversation. `signature` is Gemini's
    `thoughtSignature` for the call, which must come back with it in later turns."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI carries it
    signature: str | None = None


class Tool(BaseModel):
    """A function the model may call: its name, description and JSON Schema parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    cache_control: dict[str, Any] | None = None  # Anthropic's prompt-caching marker


PartType = Literal["text", "image", "audio", "document"]


class ContentPart(BaseModel):
    """One piece of a message: text, or an image, audio clip or document given inline
    (base64 `data` with its `media_type`) or by `url` (http or https; the worker fetches it
    for providers that take only inline bytes). See `shared.media` for the checks."""

    model_config = ConfigDict(extra="forbid")

    type: PartType
    text: str | None = None
    media_type: str | None = None  # image/png, audio/wav, application/pdf, text/plain …
    data: str | None = None  # base64
    url: str | None = None
    name: str | None = None  # a document's file name
    detail: Literal["auto", "low", "high"] | None = None  # OpenAI's image detail
    cache_control: dict[str, Any] | None = None  # Anthropic's prompt-caching marker


class Thinking(BaseModel):
    """Reasoning from an earlier assistant turn, passed back as the provider signed it:
    Anthropic's thinking blocks (`signature`) and redacted blocks (`redacted`, the opaque
    data), Gemini's thought parts (`signature` is the part's `thoughtSignature`)."""

    model_config = ConfigDict(extra="forbid")

    text: str = ""
    signature: str | None = None
    redacted: str | None = None


class Message(BaseModel):
    """One turn. Assistant turns may carry `tool_calls` and earlier `thinking`; a `tool`
    turn is the result of the call named by `tool_call_id` (and `name`, which Gemini
    needs). `content` is always the turn's text; `parts`, when set, is the whole content in
    order (text, images, audio, documents), of which `content` is the text."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    parts: list[ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    thinking: list[Thinking] | None = None
    is_error: bool | None = None  # a tool result that reports a failure

    @property
    def media(self) -> list[ContentPart]:
        return [p for p in self.parts or [] if p.type != "text"]

    def content_parts(self) -> list[ContentPart]:
        """The content as parts, whether it came as parts or as plain text."""
        if self.parts is not None:
            return self.parts
        return [ContentPart(type="text", text=self.content)] if self.content else []


def message(role: Any, parts: list[ContentPart], **fields: Any) -> Message:
    """A message from its parts: plain text stays plain, anything else keeps its parts."""
    text = "".join(p.text or "" for p in parts if p.type == "text")
    plain = all(p.type == "text" and p.cache_control is None for p in parts)
    return Message(role=role, content=text, parts=None if plain else parts, **fields)


ToolChoice = Literal["auto", "none", "required"] | str
""""auto", "none", "required" (some tool), or the name of the one tool to call."""


class ResponseFormat(BaseModel):
    """The shape of the answer: free text, any JSON object, or JSON valid against a schema
    (`strict` asks the provider to guarantee it where it can)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


Protocol = Literal["openai", "responses", "anthropic", "gemini"]


class McpSelection(BaseModel):
    """A configured MCP server a request asks the worker to offer the model (Responses
    `mcp` tools, Anthropic `mcp_servers`), and which of its tools (None: all it allows)."""

    model_config = ConfigDict(extra="forbid")

    server: str = Field(min_length=1, max_length=128)
    allowed_tools: list[str] | None = None


class GenerationRequest(BaseModel):
    """What the client asked for, whichever API it spoke. Fields a provider cannot honour
    are judged before the job is queued (`shared.fidelity`); `extra` holds the request's
    fields Spool does not model, in the wire form of `protocol` (the surface's API), sent
    verbatim to a provider of that protocol."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=1)
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning: bool = False  # ask for reasoning / thinking output where the model has it
    reasoning_budget: int | None = Field(default=None, ge=1)
    reasoning_effort: Literal["minimal", "low", "medium", "high"] | None = None
    safety_settings: list[dict[str, Any]] | None = None  # Gemini's, as sent
    mcp: list[McpSelection] = Field(default_factory=list)
    protocol: Protocol | None = None
    extra: dict[str, Any] = Field(default_factory=dict)
    drop_params: bool = False

    def estimated_input_tokens(self) -> int:
        """What the prompt costs, before any provider has counted it (see
        `estimate_input_tokens`)."""
        media = sum(len(m.media) for m in self.messages)
        characters = sum(len(m.content) for m in self.messages)
        return estimate_input_tokens(characters, len(self.messages)) + MEDIA_PART_TOKENS * media

    @property
    def has_media_urls(self) -> bool:
        return any(p.url is not None for m in self.messages for p in m.media)

    def worst_case_tokens(self) -> int | None:
        """The most the request can cost: its input and `max_tokens`; None when unbounded."""
        if self.max_tokens is None:
            return None
        return self.estimated_input_tokens() + self.max_tokens

    @classmethod
    def build(cls, **fields: Any) -> GenerationRequest:
        """The canonical request a surface translated, or a 400 saying what is missing
        (say, a conversation whose every turn was empty)."""
        try:
            return cls(**fields)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'request'}: {e['msg']}"
                for e in exc.errors()[:5]
            )
            raise InvalidRequest(f"the request has nothing to generate from: {problems}") from exc

    @property
    def system_prompt(self) -> str:
        return "\n\n".join(m.content for m in self.messages if m.role == "system")

    @property
    def turns(self) -> list[Message]:
        """The conversation without system messages (which some APIs carry apart)."""
        return [m for m in self.messages if m.role != "system"]
