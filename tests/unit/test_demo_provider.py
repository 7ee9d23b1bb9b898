"""Unit tests for worker/providers/demo.py: the deterministic, keyless demo model."""

from __future__ import annotations

import time

from shared import events as ev
from shared.model_table import ModelEntry
from shared.request import GenerationRequest, Message
from worker.providers.demo import VOCABULARY, DemoProvider, demo_tokens


def request(prompt: str = "Tell me about streams", **kw: object) -> GenerationRequest:
    return GenerationRequest.model_validate(
        {"model": "demo", "messages": [{"role": "user", "content": prompt}], **kw}
    )


def entry(**kw: object) -> ModelEntry:
    return ModelEntry.model_validate({"provider": "demo", "tokens_per_second": 0, **kw})


async def collect(req: GenerationRequest, model: ModelEntry) -> list[ev.Event]:
    return [e async for e in DemoProvider().stream(req, model)]


def text_of(events: list[ev.Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, ev.TextDelta))


def deltas(events: list[ev.Event]) -> list[ev.TextDelta]:
    return [e for e in events if isinstance(e, ev.TextDelta)]


def finish(events: list[ev.Event]) -> ev.Finish:
    last = events[-1]
    assert isinstance(last, ev.Finish)
    assert sum(isinstance(e, ev.Finish) for e in events) == 1
    return last


async def test_same_request_same_text() -> None:
    first = await collect(request(), entry())
    second = await collect(request(), entry())
    assert text_of(first) != ""
    assert first == second


async def test_equal_requests_built_separately_give_same_text() -> None:
    a = GenerationRequest(model="demo", messages=[Message(role="user", content="x y z")])
    b = GenerationRequest(model="demo", messages=[Message(role="user", content="x y z")])
    assert text_of(await collect(a, entry())) == text_of(await collect(b, entry()))


async def test_different_prompt_different_text() -> None:
    a = text_of(await collect(request("first prompt"), entry()))
    b = text_of(await collect(request("second prompt"), entry()))
    assert a != b


async def test_different_message_history_different_text() -> None:
    one = request("hi")
    two = GenerationRequest(
        model="demo",
        messages=[Message(role="system", content="be brief"), Message(role="user", content="hi")],
    )
    assert text_of(await collect(one, entry())) != text_of(await collect(two, entry()))


async def test_max_tokens_below_entry_limit_finishes_with_length() -> None:
    events = await collect(request(max_tokens=5), entry(max_output_tokens=48))
    assert len(deltas(events)) == 5
    assert len(events) == 6
    done = finish(events)
    assert done.reason == "length"
    assert done.usage is not None
    assert done.usage.output_tokens == 5


async def test_max_tokens_one() -> None:
    events = await collect(request(max_tokens=1), entry(max_output_tokens=10))
    assert len(deltas(events)) == 1
    assert finish(events).reason == "length"


async def test_no_max_tokens_finishes_with_stop() -> None:
    events = await collect(request(), entry(max_output_tokens=20))
    assert len(deltas(events)) == 20
    done = finish(events)
    assert done.reason == "stop"
    assert done.usage is not None
    assert done.usage.output_tokens == 20


async def test_max_tokens_equal_to_entry_limit_is_stop() -> None:
    events = await collect(request(max_tokens=12), entry(max_output_tokens=12))
    assert len(deltas(events)) == 12
    assert finish(events).reason == "stop"


async def test_max_tokens_above_entry_limit_is_stop() -> None:
    events = await collect(request(max_tokens=500), entry(max_output_tokens=7))
    assert len(deltas(events)) == 7
    done = finish(events)
    assert done.reason == "stop"
    assert done.usage is not None
    assert done.usage.output_tokens == 7


async def test_length_cut_is_a_prefix_of_the_full_answer() -> None:
    full = deltas(await collect(request(), entry(max_output_tokens=30)))
    cut = deltas(await collect(request(max_tokens=10), entry(max_output_tokens=30)))
    assert cut == full[:10]


async def test_input_tokens_count() -> None:
    # Whitespace-separated words plus 3 per message.
    req = GenerationRequest(
        model="demo",
        messages=[
            Message(role="system", content="be brief"),
            Message(role="user", content="one two three"),
        ],
    )
    done = finish(await collect(req, entry(max_output_tokens=3)))
    assert done.usage == ev.Usage(input_tokens=(2 + 3) + (3 + 3), output_tokens=3)


async def test_tokens_match_demo_tokens_and_vocabulary() -> None:
    req = request()
    events = await collect(req, entry(max_output_tokens=40))
    tokens = [e.text for e in deltas(events)]
    assert tokens == demo_tokens(req, 40)
    assert all(t for t in tokens)
    assert not tokens[0].startswith(" ")
    assert all(t.startswith(" ") for t in tokens[1:])
    lowered = {w.lower() for w in VOCABULARY}
    for t in tokens:
        assert t.strip().rstrip(".").lower() in lowered


async def test_only_text_and_finish_events() -> None:
    events = await collect(request(), entry(max_output_tokens=15))
    assert all(isinstance(e, ev.TextDelta) for e in events[:-1])
    assert isinstance(events[-1], ev.Finish)


async def test_tokens_per_second_zero_is_fast() -> None:
    started = time.monotonic()
    events = await collect(request(), entry(tokens_per_second=0, max_output_tokens=2000))
    elapsed = time.monotonic() - started
    assert len(deltas(events)) == 2000
    assert elapsed < 1.0


async def test_tokens_per_second_paces_output() -> None:
    started = time.monotonic()
    events = await collect(request(), entry(tokens_per_second=200, max_output_tokens=10))
    elapsed = time.monotonic() - started
    assert len(deltas(events)) == 10
    # 10 tokens at 200/s: the last one is due 9 * 5 ms = 45 ms after the first.
    assert elapsed >= 0.03


async def test_first_token_delay() -> None:
    started = time.monotonic()
    provider = DemoProvider().stream(request(), entry(first_token_delay_ms=60, max_output_tokens=3))
    first = await anext(provider)
    elapsed = time.monotonic() - started
    assert isinstance(first, ev.TextDelta)
    assert elapsed >= 0.04
    rest = [e async for e in provider]
    assert isinstance(rest[-1], ev.Finish)
