"""The Responses API through faults, read with the official `openai` SDK: a dropped client
resumes on another replica by sequence number, a worker lost mid-response fails the
response with `worker_lost`, and an API replica lost mid-stream costs the client nothing."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseCreatedEvent,
    ResponseFailedEvent,
    ResponseStreamEvent,
)

from tests.faults.conftest import LEASE_S, FaultCluster, measure

pytestmark = [pytest.mark.faults, pytest.mark.timeout(60)]

SLOW = "fault-slow"  # 60 tokens at 20 a second: three seconds of output


def sdk(url: str) -> openai.OpenAI:
    # The read timeout bounds every wait: a stream that stops sending fails the test.
    return openai.OpenAI(base_url=f"{url}/v1", api_key="spool", max_retries=0, timeout=15)


def stream_id(response_id: str) -> str:
    return response_id.removeprefix("resp_")


def response_id_of(events: list[ResponseStreamEvent]) -> str:
    created = events[0]
    assert isinstance(created, ResponseCreatedEvent), created.type
    return created.response.id


def take(events: Iterator[ResponseStreamEvent], count: int) -> list[ResponseStreamEvent]:
    """The next events: at least `count`, and at least one text delta among them (the
    model has started writing)."""
    taken: list[ResponseStreamEvent] = []
    for event in events:
        taken.append(event)
        deltas = sum(e.type == "response.output_text.delta" for e in taken)
        if len(taken) >= count and deltas >= 1:
            break
    return taken


def read_on(events: Iterator[ResponseStreamEvent], into: list[ResponseStreamEvent]) -> bool:
    """Read to the end of the stream into `into`; whether the connection broke first."""
    try:
        for event in events:
            into.append(event)
    except openai.APIConnectionError:
        return True
    return False


def dumped(events: Iterable[ResponseStreamEvent]) -> list[dict[str, Any]]:
    return [e.model_dump() for e in events]


def assert_contiguous(events: list[ResponseStreamEvent]) -> None:
    numbers = [e.sequence_number for e in events]
    assert numbers == list(range(len(events))), numbers


def full_replay(url: str, response_id: str) -> list[ResponseStreamEvent]:
    return list(sdk(url).responses.retrieve(response_id, stream=True))


def test_background_stream_resumes_on_another_replica(healthy: FaultCluster) -> None:
    first, second = healthy.urls[0], healthy.urls[1]
    stream = sdk(first).responses.create(
        model=SLOW, input="resume me elsewhere", background=True, stream=True
    )
    seen = take(iter(stream), 8)
    stream.close()  # the client drops
    response_id = response_id_of(seen)
    last = seen[-1].sequence_number
    assert sdk(second).responses.retrieve(response_id).status == "in_progress"

    resumed_at = time.monotonic()
    rest = list(sdk(second).responses.retrieve(response_id, stream=True, starting_after=last))
    measure(f"responses: resumed after #{last} on another replica, {len(rest)} events to the end "
            f"in {time.monotonic() - resumed_at:.2f}s")  # fmt: skip
    assert rest[0].sequence_number == last + 1
    assert isinstance(rest[-1], ResponseCompletedEvent)
    assert_contiguous(seen + rest)
    assert dumped(seen + rest) == dumped(full_replay(first, response_id))
    assert dumped(full_replay(second, response_id)) == dumped(seen + rest)


def test_worker_killed_mid_response_fails_it_with_worker_lost(healthy: FaultCluster) -> None:
    stream = sdk(healthy.urls[0]).responses.create(model=SLOW, input="lose my worker", stream=True)
    events = iter(stream)
    seen = take(events, 6)
    response_id = response_id_of(seen)
    victim = healthy.worker_running(stream_id(response_id))
    killed_at = time.monotonic()
    healthy.kill(victim)
    seen += list(events)
    ended_after = time.monotonic() - killed_at
    assert ended_after < LEASE_S + 5, f"ended {ended_after:.2f}s after the kill"
    assert_contiguous(seen)
    failed = seen[-1]
    assert isinstance(failed, ResponseFailedEvent), failed.type
    error = failed.response.error
    assert error is not None and str(error.code) == "worker_lost", error
    measure(f"responses: response.failed (worker_lost) {ended_after:.2f}s after the kill")

    stored = sdk(healthy.urls[1]).responses.retrieve(response_id)
    assert stored.status == "failed"
    assert stored.error is not None
    assert stored.error.model_dump() == error.model_dump()
    assert stored.output_text == failed.response.output_text != ""


def test_api_replica_killed_mid_stream_client_resumes_on_another(
    healthy: FaultCluster,
) -> None:
    victim = healthy.add_api()
    survivor = healthy.urls[0]
    stream = sdk(victim.url).responses.create(model=SLOW, input="lose my replica", stream=True)
    events = iter(stream)
    seen = take(events, 6)
    response_id = response_id_of(seen)
    healthy.kill(victim)
    # What was already on its way arrives, then the connection breaks.
    assert read_on(events, seen), "the stream ended as if the replica were still there"
    assert not isinstance(seen[-1], ResponseCompletedEvent), "the replica died too late"

    rest = list(
        sdk(survivor).responses.retrieve(
            response_id, stream=True, starting_after=seen[-1].sequence_number
        )
    )
    assert isinstance(rest[-1], ResponseCompletedEvent)
    assert_contiguous(seen + rest)
    assert dumped(seen + rest) == dumped(full_replay(survivor, response_id))
