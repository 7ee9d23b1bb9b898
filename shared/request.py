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
    """A tool call the assistant made earlier in the conversation."""

    model_config = ConfigDict(extra="forbid")

    id: str
    name: str
    arguments: str = "{}"  # JSON text, as OpenAI carries it


class Tool(BaseModel):
    """A function the model may call: its name, description and JSON Schema parameters."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})


class Message(BaseModel):
    """One turn. Assistant turns may carry `tool_calls`; a `tool` turn is the result of the
    call named by `tool_call_id` (and `name`, which Gemini needs)."""

    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None


ToolChoice = Literal["auto", "none", "required"] | str
""""auto", "none", "required" (some tool), or the name of the one tool to call."""


class GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: list[str] = Field(default_factory=list)
    seed: int | None = None
    user: str | None = None
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    reasoning: bool = False  # ask for reasoning / thinking output where the model has it
    reasoning_budget: int | None = Field(default=None, ge=1)

    def estimated_input_tokens(self) -> int:
        """What the prompt costs, before any provider has counted it (see
        `estimate_input_tokens`)."""
        return estimate_input_tokens(sum(len(m.content) for m in self.messages), len(self.messages))

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
