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

import orjson

from shared import events as ev
from shared.request import GenerationRequest
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


class DemoProvider:
    name = "demo"

    async def stream(
        self, request: GenerationRequest, entry: ModelEntry
    ) -> AsyncGenerator[ev.Event, None]:
        count = entry.max_output_tokens
        reason: ev.FinishReason = "stop"
        if request.max_tokens is not None and request.max_tokens < count:
            count, reason = request.max_tokens, "length"
        tokens = demo_tokens(request, count)

        loop = asyncio.get_running_loop()
        start = loop.time() + entry.first_token_delay_ms / 1000
        interval = 1 / entry.tokens_per_second if entry.tokens_per_second else 0.0
        for i, token in enumerate(tokens):
            # Pace against absolute deadlines so the rate does not drift with scheduling.
            delay = start + i * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield ev.TextDelta(text=token)
        usage = ev.Usage(input_tokens=_count_input_tokens(request), output_tokens=len(tokens))
        yield ev.Finish(reason=reason, usage=usage)
