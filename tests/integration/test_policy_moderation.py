"""Content policies with an external moderation endpoint over real HTTP (a mock in the
OpenAI moderations shape): input and streamed output, slow, down and malformed endpoints
under fail-open and fail-closed, decision counts; and a key's policy kept in Redis."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from redis.asyncio import Redis

from shared.auth import KeyStore
from shared.errors import ContentPolicyViolation, ModerationUnavailable
from shared.netguard import Allowlist, GuardedTransport
from shared.policy import Blocked, OutputGuard, Policy, check_input
from shared.redis.embedded import free_port
from tests.mock_moderation import MockModeration, Mode

Decision = tuple[str, str, str]


@pytest.fixture(scope="module")
def moderation_server() -> Iterator[MockModeration]:
    server = MockModeration({"badword": "harassment", "punchline": "violence"}).start()
    yield server
    server.stop()


@pytest.fixture
def moderation(moderation_server: MockModeration) -> Iterator[MockModeration]:
    moderation_server.reset()
    yield moderation_server
    moderation_server.reset()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


class Counts:
    """A `count` callback that records decisions and lets a test await one."""

    def __init__(self) -> None:
        self.decisions: list[Decision] = []
        self._changed = asyncio.Event()

    def __call__(self, policy: str, stage: str, outcome: str) -> None:
        self.decisions.append((policy, stage, outcome))
        self._changed.set()

    async def wait_for(self, decision: Decision, timeout_s: float = 10.0) -> None:
        async with asyncio.timeout(timeout_s):
            while decision not in self.decisions:
                self._changed.clear()
                await self._changed.wait()


def moderated(server: MockModeration, **config: object) -> Policy:
    return Policy.model_validate({"moderation_url": server.url, **config})


def moderation_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("spool-moderation")]


# Input


async def test_flagged_input_is_blocked_with_the_flagged_category(
    moderation: MockModeration, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_MODERATION_KEY", "sk-mod-123")
    policy = moderated(
        moderation,
        moderation_model="omni-moderation-latest",
        moderation_api_key_env="TEST_MODERATION_KEY",
    )
    counts = Counts()
    with pytest.raises(ContentPolicyViolation) as caught:
        await check_input([("mod", policy)], ["hello", "a BadWord here"], http, count=counts)
    assert caught.value.message == (
        "the input was blocked by the content policy 'mod' (flagged by moderation: 'harassment')"
    )
    assert caught.value.details["source"] == "moderation"
    assert counts.decisions == [("mod", "input", "blocked")]
    (call,) = moderation.calls
    assert call.inputs == ["hello", "a BadWord here"]  # one request, every text
    assert call.model == "omni-moderation-latest"
    assert call.authorization == "Bearer sk-mod-123"


async def test_clean_input_is_allowed_and_sent_as_one_string(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    counts = Counts()
    await check_input([("mod", moderated(moderation))], ["a kind word", ""], http, count=counts)
    assert counts.decisions == [("mod", "input", "allowed")]
    (call,) = moderation.calls
    assert call.inputs == ["a kind word"] and call.model is None and call.authorization is None


async def test_only_the_configured_categories_block(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    policy = moderated(moderation, categories=["violence"])
    await check_input([("v", policy)], ["a badword"], http)  # harassment: not counted
    with pytest.raises(ContentPolicyViolation, match="flagged by moderation: 'violence'"):
        await check_input([("v", policy)], ["the punchline"], http)


async def test_endpoints_of_several_policies_are_asked_at_once(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    moderation.reset("slow", delay_s=10)
    policies = [
        (name, moderated(moderation, on_error="open", moderation_timeout_s=1.0))
        for name in ("a", "b")
    ]
    counts = Counts()
    started = time.monotonic()
    await check_input(policies, ["text"], http, count=counts)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 1.8  # both timed out together, not one after the other
    assert moderation.requests == 2
    assert counts.decisions == [("a", "input", "error"), ("b", "input", "error")]


@pytest.mark.parametrize("mode", ["slow", "down", "malformed"])
async def test_a_failing_endpoint_fails_closed_with_a_503(
    moderation: MockModeration, http: httpx.AsyncClient, mode: Mode
) -> None:
    moderation.reset(mode, delay_s=10)
    counts = Counts()
    policy = moderated(moderation, moderation_timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(ModerationUnavailable) as caught:
        await check_input([("mod", policy)], ["anything"], http, count=counts)
    assert time.monotonic() - started < 2.0  # the timeout holds, far below the 10 s delay
    assert caught.value.status_code == 503 and caught.value.code == "moderation_unavailable"
    reason = {
        "slow": "did not answer within 0.5s",
        "down": "answered HTTP 500",
        "malformed": "answered something that is not a moderations result",
    }[mode]
    assert caught.value.message == (
        f"the content policy 'mod' could not check the input: the moderation endpoint {reason}"
    )
    assert counts.decisions == [("mod", "input", "error")]


@pytest.mark.parametrize("mode", ["slow", "down", "malformed"])
async def test_a_failing_endpoint_fails_open_when_configured(
    moderation: MockModeration, http: httpx.AsyncClient, mode: Mode
) -> None:
    moderation.reset(mode, delay_s=10)
    counts = Counts()
    policy = moderated(moderation, moderation_timeout_s=0.5, on_error="open")
    started = time.monotonic()
    await check_input([("mod", policy)], ["a badword even"], http, count=counts)
    assert time.monotonic() - started < 2.0
    assert counts.decisions == [("mod", "input", "error")]
    assert moderation.requests == 1


async def test_a_slow_answer_within_the_timeout_still_counts(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    moderation.reset("slow", delay_s=0.3)
    with pytest.raises(ContentPolicyViolation):
        await check_input([("mod", moderated(moderation))], ["badword"], http)


async def test_unreachable_endpoint_and_missing_key(
    http: httpx.AsyncClient, moderation: MockModeration
) -> None:
    closed_port = Policy(moderation_url=f"http://127.0.0.1:{free_port()}/v1/moderations")
    with pytest.raises(ModerationUnavailable, match="the moderation endpoint is unreachable"):
        await check_input([("gone", closed_port)], ["text"], http)
    no_key = moderated(moderation, moderation_api_key_env="TEST_MODERATION_KEY_UNSET")
    with pytest.raises(ModerationUnavailable, match="variable TEST_MODERATION_KEY_UNSET is unset"):
        await check_input([("mod", no_key)], ["text"], http)
    assert moderation.requests == 0


async def test_requests_go_through_the_outbound_guard(moderation: MockModeration) -> None:
    policy = moderated(moderation)
    async with httpx.AsyncClient(transport=GuardedTransport(Allowlist([]))) as guarded:
        with pytest.raises(ModerationUnavailable, match=r"endpoint failed \(UpstreamError\)"):
            await check_input([("mod", policy)], ["badword"], guarded)
    assert moderation.requests == 0  # loopback is internal: refused before connecting
    allowed = GuardedTransport(Allowlist(["127.0.0.0/8"]))
    async with httpx.AsyncClient(transport=allowed) as guarded:
        with pytest.raises(ContentPolicyViolation):
            await check_input([("mod", policy)], ["badword"], guarded)
    assert moderation.requests == 1


async def test_a_block_outranks_another_policys_failure(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    down = Policy(moderation_url=f"http://127.0.0.1:{free_port()}/v1/moderations")
    counts = Counts()
    with pytest.raises(ContentPolicyViolation, match="'flags'"):
        await check_input(
            [("down", down), ("flags", moderated(moderation))], ["badword"], http, count=counts
        )
    assert counts.decisions == [("down", "input", "error"), ("flags", "input", "blocked")]


# Streamed output


async def test_output_goes_out_in_overlapping_windows(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    policy = moderated(moderation, output_window_chars=40)  # windows repeat 10 characters
    text = "".join(f"sentence number {i} is fine. " for i in range(12))
    counts = Counts()
    guard = OutputGuard([("mod", policy)], http, count=counts)
    for at in range(0, len(text), 7):
        assert guard.feed(text[at : at + 7]) is None
    assert await guard.close() is None
    assert counts.decisions == [("mod", "output", "allowed")]
    windows = moderation.inputs()
    assert len(windows) == -(-len(text) // 40)
    assert windows[0] == text[:40]
    for previous, window in itertools.pairwise(windows):
        assert window.startswith(previous[-10:]) and len(window) <= 50
    assert "".join([windows[0]] + [w[10:] for w in windows[1:]]) == text


async def test_flagged_output_is_seen_by_verdict_and_the_next_feed(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    counts = Counts()
    guard = OutputGuard(
        [("mod", moderated(moderation, output_window_chars=32))], http, count=counts
    )
    async with guard:
        assert guard.feed("The first window is clean text. ") is None
        assert guard.feed("And the second has a badword in ") is None
        await counts.wait_for(("mod", "output", "blocked"))
        expected = Blocked("mod", "flagged by moderation: 'harassment'", "moderation")
        assert guard.verdict() == expected
        assert guard.feed("more") == expected
        assert await guard.close() == expected
    assert counts.decisions == [("mod", "output", "blocked")]
    assert not [t for t in moderation_tasks() if not t.done()]


async def test_the_last_partial_window_is_checked_on_close(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    guard = OutputGuard([("mod", moderated(moderation))], http)  # 500-character windows
    assert guard.feed("short answer with a ") is None
    assert guard.feed("badword") is None
    assert moderation.requests == 0
    verdict = await guard.close()
    assert verdict is not None and verdict.source == "moderation"
    assert moderation.inputs() == ["short answer with a badword"]


async def test_windows_that_pile_up_go_in_one_request(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    moderation.reset("slow", delay_s=10)
    guard = OutputGuard([("mod", moderated(moderation, output_window_chars=32))], http)
    guard.feed("x" * 32)
    await asyncio.to_thread(moderation.wait_for_calls, 1)  # the first window is out
    for _ in range(3):
        guard.feed("y" * 32)
    guard.feed("tail")
    closing = asyncio.create_task(guard.close())
    moderation.release()
    calls = await asyncio.to_thread(moderation.wait_for_calls, 2)
    moderation.release()
    assert await closing is None
    assert [len(call.inputs) for call in calls] == [1, 4]  # three windows and the last part
    assert calls[1].inputs[-1] == "y" * 8 + "tail"


async def test_output_with_a_slow_endpoint_fails_closed(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    moderation.reset("slow", delay_s=10)
    counts = Counts()
    policy = moderated(moderation, output_window_chars=32, moderation_timeout_s=0.3)
    async with OutputGuard([("mod", policy)], http, count=counts) as guard:
        assert guard.feed("a window of perfectly clean text.") is None
        await counts.wait_for(("mod", "output", "error"))
        verdict = guard.verdict()
        assert verdict == Blocked(
            "mod", "the moderation endpoint did not answer within 0.3s", "moderation_unavailable"
        )
        assert guard.feed("more") == verdict
        assert await guard.close() == verdict
    assert counts.decisions == [("mod", "output", "error")]


@pytest.mark.parametrize("mode", ["slow", "down", "malformed"])
async def test_output_with_a_failing_endpoint_fails_open_when_configured(
    moderation: MockModeration, http: httpx.AsyncClient, mode: Mode
) -> None:
    moderation.reset(mode, delay_s=10)
    counts = Counts()
    policy = moderated(
        moderation, output_window_chars=32, moderation_timeout_s=0.3, on_error="open"
    )
    guard = OutputGuard([("mod", policy)], http, count=counts)
    for _ in range(3):
        assert guard.feed("a window of text with a badword.") is None
    started = time.monotonic()
    assert await guard.close() is None
    assert time.monotonic() - started < 3.0
    assert counts.decisions == [("mod", "output", "error")]
    assert moderation.requests >= 1


async def test_built_in_and_moderation_checks_together(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    counts = Counts()
    policies = [
        ("terms", Policy(blocked_terms=["forbidden-word"])),
        ("mod", moderated(moderation, output_window_chars=1000)),
    ]
    guard = OutputGuard(policies, http, count=counts)
    assert guard.feed("clean start, then a forbidden-") is None
    verdict = guard.feed("word, and more")
    assert verdict == Blocked("terms", "blocked term 'forbidden-word'", "terms")
    assert await guard.close() == verdict
    assert counts.decisions == [("terms", "output", "blocked")]
    assert moderation.requests == 0  # the block came first; nothing more was sent


async def test_a_built_in_block_cancels_moderation_in_flight(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    moderation.reset("slow", delay_s=10)
    policy = Policy(
        blocked_terms=["forbidden-word"],
        moderation_url=moderation.url,
        output_window_chars=32,
        moderation_timeout_s=5.0,
    )
    guard = OutputGuard([("p", policy)], http)
    assert guard.feed("a window of perfectly clean text.") is None
    await asyncio.to_thread(moderation.wait_for_calls, 1)
    running = moderation_tasks()
    assert running and not any(t.done() for t in running)
    assert guard.feed(" Then a forbidden-word.") is not None
    done, pending = await asyncio.wait(running, timeout=1.0)  # cancelled, not timed out
    assert not pending and all(t.cancelled() for t in done)
    await guard.close()


async def test_aclose_cancels_checks_in_flight(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    moderation.reset("slow", delay_s=10)
    counts = Counts()
    policy = moderated(moderation, output_window_chars=32, moderation_timeout_s=5.0)
    guard = OutputGuard([("mod", policy)], http, count=counts)
    guard.feed("a window of perfectly clean text.")
    await asyncio.to_thread(moderation.wait_for_calls, 1)
    assert [t for t in moderation_tasks() if not t.done()]
    started = time.monotonic()
    await guard.aclose()
    assert time.monotonic() - started < 1.0
    assert not [t for t in moderation_tasks() if not t.done()]
    assert counts.decisions == []  # a generation that was stopped decided nothing


async def test_cancelling_a_generation_cancels_its_checks(
    moderation: MockModeration, http: httpx.AsyncClient
) -> None:
    moderation.reset("slow", delay_s=10)
    policy = moderated(moderation, output_window_chars=32, moderation_timeout_s=5.0)

    async def generation() -> Blocked | None:
        async with OutputGuard([("mod", policy)], http) as guard:
            guard.feed("a window of perfectly clean text.")
            return await guard.close()

    task = asyncio.create_task(generation())
    await asyncio.to_thread(moderation.wait_for_calls, 1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not [t for t in moderation_tasks() if not t.done()]


# A key's policy


async def test_a_key_keeps_its_policy(redis: Redis) -> None:
    store = KeyStore(redis)
    secret, created = await store.create("guarded", policy="strict")
    found = await store.lookup(secret)
    assert found is not None and found == created and found.policy == "strict"
    plain_secret, _ = await store.create("plain")
    plain = await store.lookup(plain_secret)
    assert plain is not None and plain.policy is None
    assert [k.policy for k in await store.list()] == ["strict", None]
    with pytest.raises(ValueError, match="policy name must not be empty"):
        await store.create("broken", policy=" ")
