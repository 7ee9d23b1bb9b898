"""The built-in demo model: no key, no network, deterministic text at a configured pace.

The same request always yields the same text. Words come from a fixed vocabulary picked by
a PRNG seeded with a hash of the request; a few carry multi-byte UTF-8 so every path that
handles text sees it.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from shared import events as ev
from shared.request import GenerationRequest, Tool
from shared.settings import ModelEntry

VOCABULARY = (
    "stream", "token", "queue", "replica", "worker", "resume", "event", "broker", "chunk",
    "redis", "spool", "thread", "signal", "latency", "cursor", "buffer", "reader", "writer",
    "café", "naïve", "façade", "über", "→", "…", "日本", "✓", "the", "a", "of", "and", "to",
    "every", "each", "never", "always", "quietly", "exactly", "once", "again", "later",
)  # fmt: skip


def _rng(request: GenerationRequest) -> random.Random:
    key = orjson.dumps([request.model, [m.model_dump(exclude_none=True) for m in request.messages]])
    return random.Random(int.from_bytes(hashlib.sha256(key).digest()[:8], "big"))


def demo_tokens(request: GenerationRequest, count: int) -> list[str]:
    rng = _rng(request)
    words: list[str] = []
    for i in range(count):
        word = rng.choice(VOCABULARY)
        if i == 0:
            word = word.capitalize()
        elif rng.random() < 0.12:
            words[-1] += "."
            word = word.capitalize()
        words.append(word if i == 0 else " " + word)
    return words


def _count_input_tokens(request: GenerationRequest) -> int:
    return sum(len(m.content.split()) + 3 for m in request.messages)


def _tool_to_call(request: GenerationRequest) -> Tool | None:
    """The tool the demo calls: the named one, or the first, unless tools are off or the
    conversation just got a tool's result back (then it answers in text)."""
    if not request.tools or request.tool_choice == "none":
        return None
    if request.messages[-1].role == "tool":
        return None
    named = [t for t in request.tools if t.name == request.tool_choice]
    return named[0] if named else request.tools[0]


def _demo_value(schema: dict[str, Any], rng: random.Random, prompt: str) -> Any:
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if kind == "integer":
        return rng.randint(1, 100)
    if kind == "number":
        return round(rng.uniform(1, 100), 2)
    if kind == "boolean":
        return True
    if kind == "array":
        return [_demo_value(schema.get("items") or {"type": "string"}, rng, prompt)]
    if kind == "object":
        return _demo_arguments(schema, rng, prompt)
    return prompt[:40] or rng.choice(VOCABULARY)


def _demo_arguments(schema: dict[str, Any], rng: random.Random, prompt: str) -> dict[str, Any]:
    properties = schema.get("properties") or {}
    return {
        name: _demo_value(sub if isinstance(sub, dict) else {}, rng, prompt)
        for name, sub in properties.items()
    }


def _fragments(text: str, parts: int = 3) -> list[str]:
    size = max(1, -(-len(text) // parts))
    return [text[i : i + size] for i in range(0, len(text), size)]


class DemoProvider:
    """Deterministic text; reasoning first when the request asks for it; a tool call (its
    JSON arguments streamed in fragments, filled in from the tool's schema) when the
    request offers tools."""

    name = "demo"

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        rng = _rng(request)
        events: list[ev.Event] = []
        if request.reasoning and entry.reasoning_tokens:
            thought = demo_tokens(request, entry.reasoning_tokens)
            events += [ev.ReasoningDelta(text=t) for t in thought]
            events.append(ev.ReasoningDelta(text="", signature=f"demo-{rng.getrandbits(64):x}"))
        tool = _tool_to_call(request)
        reason: ev.FinishReason
        if tool is not None:
            prompt = next((m.content for m in reversed(request.messages) if m.role == "user"), "")
            arguments = orjson.dumps(_demo_arguments(tool.parameters, rng, prompt)).decode()
            call_id = f"call_{rng.getrandbits(48):012x}"
            pieces = _fragments(arguments)
            events.append(
                ev.ToolCallDelta(index=0, id=call_id, name=tool.name, arguments=pieces[0])
            )
            events += [ev.ToolCallDelta(index=0, arguments=p) for p in pieces[1:]]
            reason = "tool_calls"
            output_tokens = len(pieces)
        else:
            count = entry.max_output_tokens
            reason = "stop"
            if request.max_tokens is not None and request.max_tokens < count:
                count, reason = request.max_tokens, "length"
            tokens = demo_tokens(request, count)
            events += [ev.TextDelta(text=t) for t in tokens]
            output_tokens = len(tokens)

        loop = asyncio.get_running_loop()
        start = loop.time() + entry.first_token_delay_ms / 1000
        interval = 1 / entry.tokens_per_second if entry.tokens_per_second else 0.0
        for i, event in enumerate(events):
            # Pace against absolute deadlines so the rate does not drift with scheduling.
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield event
        usage = ev.Usage(input_tokens=_count_input_tokens(request), output_tokens=output_tokens)
        yield ev.Finish(reason=reason, usage=usage)
