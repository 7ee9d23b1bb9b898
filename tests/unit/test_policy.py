"""Content policies without a network: configuration, built-in terms and patterns on input
and on streamed output, verdicts and errors."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from pydantic import ValidationError

from shared.cli import build_parser
from shared.errors import ConfigError, ContentPolicyViolation, ModerationUnavailable
from shared.policy import (
    LOOKBEHIND_CHARS,
    Blocked,
    OutputGuard,
    Policy,
    check_input,
    policies_for,
)

STRICT = Policy(blocked_terms=["forbidden-word", "ass", "c++", "#tag", "kill switch"])
SECRETS = Policy(patterns=[r"(?i)secret-[0-9]+", r"\bpassword\b"])


class NoNetwork(httpx.AsyncBaseTransport):
    """Fails the test if a built-in check reaches for the network."""

    def __init__(self) -> None:
        self.requests = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        raise AssertionError("a built-in check made a request")


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=NoNetwork()) as client:
        yield client


def blocked_by(policy: Policy, text: str) -> str | None:
    found = policy.find(text)
    return None if found is None else found[1]


# Configuration


def test_an_invalid_pattern_is_named() -> None:
    with pytest.raises(ValidationError, match=r"invalid pattern '\(unclosed'"):
        Policy(patterns=["ok", "(unclosed"])


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"patterns": ["a*"]}, "matches empty text"),
        ({"blocked_terms": ["fine", "  "]}, "must not be empty"),
        ({}, "needs blocked_terms, patterns or a moderation_url"),
        (
            {"blocked_terms": ["x"], "moderation_model": "m"},
            "moderation_model need a moderation_url",
        ),
        ({"moderation_url": "ftp://mod.example/v1/moderations"}, "http:// or https://"),
        ({"blocked_terms": ["x"], "blocklist": ["y"]}, "Extra inputs are not permitted"),
        ({"moderation_url": "http://m.example", "on_error": "maybe"}, "'open' or 'closed'"),
        ({"moderation_url": "http://m.example", "categories": []}, "at least 1 item"),
        ({"blocked_terms": ["x"], "apply_to": ["both"]}, "'input' or 'output'"),
    ],
)
def test_bad_policies_are_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Policy.model_validate(config)


def test_defaults_and_duplicate_terms() -> None:
    policy = Policy(
        blocked_terms=["Word", "word", " other ", "two words", "TWO  Words"],
        moderation_url="https://m.example",
    )
    assert policy.blocked_terms == ["Word", "other", "two words"]
    assert policy.on_error == "closed" and policy.moderation_timeout_s == 2.0
    assert policy.output_window_chars == 500 and policy.categories is None
    assert policy.apply_to == ["input", "output"]
    assert policy.overlap == len("two words") + 32


def test_policies_for_dedupes_skips_none_and_refuses_unknown_names() -> None:
    table = {"strict": STRICT, "secrets": SECRETS}
    assert policies_for(["strict", None, "secrets", "strict"], table) == [
        ("strict", STRICT),
        ("secrets", SECRETS),
    ]
    assert policies_for([None, None], table) == []
    with pytest.raises(ConfigError, match="no content policy named 'strcit'"):
        policies_for(["strict", "strcit"], table)


def test_a_key_can_be_created_with_a_policy_from_the_cli() -> None:
    parser = build_parser()
    args = parser.parse_args(["keys", "create", "--name", "n", "--policy", "strict"])
    assert args.policy == "strict"
    assert parser.parse_args(["keys", "create", "--name", "n"]).policy is None


# Built-in checks


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("say forbidden-word now", "blocked term 'forbidden-word'"),
        ("FORBIDDEN-Word.", "blocked term 'forbidden-word'"),
        ("(forbidden-word)", "blocked term 'forbidden-word'"),
        ("you ass", "blocked term 'ass'"),
        ("I write C++ daily", "blocked term 'c++'"),
        ("c++, mostly", "blocked term 'c++'"),
        ("#tag at the start", "blocked term '#tag'"),
        ("see x#tag", "blocked term '#tag'"),  # no word character to check before '#'
        ("the KILL\n  switch", "blocked term 'kill switch'"),
    ],
)
def test_terms_block_whole_words_in_any_case(text: str, reason: str) -> None:
    assert blocked_by(STRICT, text) == reason


@pytest.mark.parametrize(
    "text",
    [
        "forbidden-words",
        "unforbidden-word",
        "forbidden_word",
        "an assistant in class",
        "bass",
        "abc++",
        "#tags",
        "killswitch",
        "",
    ],
)
def test_terms_do_not_match_inside_longer_words(text: str) -> None:
    assert blocked_by(STRICT, text) is None


def test_patterns_block_anywhere_and_respect_their_own_boundaries() -> None:
    assert blocked_by(SECRETS, "the SECRET-42 leaked") == "blocked pattern '(?i)secret-[0-9]+'"
    assert blocked_by(SECRETS, "mypassword1 and secret-x") is None
    assert blocked_by(SECRETS, "your password is") == "blocked pattern '\\bpassword\\b'"


def test_a_pattern_that_matches_empty_text_somewhere_blocks_nothing_there() -> None:
    policy = Policy(patterns=[r"\b(?:pin)?"])  # matches "" at every word boundary
    assert blocked_by(policy, "a word") is None
    assert blocked_by(policy, "your pin") == r"blocked pattern '\b(?:pin)?'"


def test_a_reason_quotes_only_a_capped_term() -> None:
    long_term = "supercalifragilisticexpialidocious-and-then-some-more"
    policy = Policy(blocked_terms=[long_term])
    reason = blocked_by(policy, f"well {long_term} indeed")
    assert reason == "blocked term '" + long_term[:39] + "…'"


# Input


async def test_blocked_input_is_a_400_naming_the_policy_and_term(http: httpx.AsyncClient) -> None:
    counted: list[tuple[str, str, str]] = []
    with pytest.raises(ContentPolicyViolation) as caught:
        await check_input(
            [("strict", STRICT)],
            ["fine text", "this has a forbidden-word in it"],
            http,
            count=lambda *decision: counted.append(decision),
        )
    error = caught.value
    assert error.status_code == 400 and error.code == "content_policy"
    assert error.type == "invalid_request_error"
    assert error.message == (
        "the input was blocked by the content policy 'strict' (blocked term 'forbidden-word')"
    )
    assert error.details == {
        "policy": "strict",
        "reason": error.details["reason"],
        "source": "terms",
    }
    assert counted == [("strict", "input", "blocked")]


async def test_texts_are_checked_one_by_one(http: httpx.AsyncClient) -> None:
    # "kill" ending one message and "switch" starting the next is no phrase.
    counted: list[tuple[str, str, str]] = []
    await check_input(
        [("strict", STRICT), ("secrets", SECRETS)],
        ["press kill", "switch off", ""],
        http,
        count=lambda *decision: counted.append(decision),
    )
    assert counted == [("strict", "input", "allowed"), ("secrets", "input", "allowed")]


async def test_built_in_checks_decide_before_any_moderation_request() -> None:
    transport = NoNetwork()
    policy = Policy(blocked_terms=["forbidden-word"], moderation_url="http://127.0.0.1:9/v1/mod")
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(ContentPolicyViolation):
            await check_input([("p", policy)], ["a forbidden-word"], client)
    assert transport.requests == 0


async def test_an_output_only_policy_does_not_check_input(http: httpx.AsyncClient) -> None:
    policy = Policy(blocked_terms=["forbidden-word"], apply_to=["output"])
    await check_input([("p", policy)], ["a forbidden-word"], http)
    guard = OutputGuard([("p", policy)], http)
    assert guard.feed("a forbidden-word!") is not None


# Streamed output


async def stream(guard: OutputGuard, pieces: list[str]) -> tuple[int | None, Blocked | None]:
    """Feed the pieces; the index of the piece whose feed blocked, and the final verdict."""
    for index, piece in enumerate(pieces):
        if guard.feed(piece) is not None:
            return index, await guard.close()
    return None, await guard.close()


async def test_a_term_split_across_deltas_is_found(http: httpx.AsyncClient) -> None:
    counted: list[tuple[str, str, str]] = []
    guard = OutputGuard(
        [("strict", STRICT)], http, count=lambda *decision: counted.append(decision)
    )
    at, verdict = await stream(guard, ["It is a forbid", "den-wo", "rd", " and more"])
    assert at == 3  # "rd" might still have gone on ("words"); the space settles it
    assert verdict == Blocked("strict", "blocked term 'forbidden-word'", "terms")
    assert guard.verdict() == verdict and guard.feed("later") == verdict
    assert counted == [("strict", "output", "blocked")]


async def test_a_term_at_the_very_end_is_found_on_close(http: httpx.AsyncClient) -> None:
    at, verdict = await stream(
        OutputGuard([("strict", STRICT)], http), ["ends with for", "bidden-word"]
    )
    assert at is None and verdict is not None and verdict.source == "terms"


@pytest.mark.parametrize(
    "pieces",
    [
        ["forbidden-word", "s are fine"],
        ["an ass", "istant"],
        ["ass", "ignment"],
        ["I like abc", "++"],
        ["kill", "switch"],
    ],
)
async def test_no_block_when_the_next_delta_makes_a_longer_word(
    http: httpx.AsyncClient, pieces: list[str]
) -> None:
    counted: list[tuple[str, str, str]] = []
    guard = OutputGuard(
        [("strict", STRICT)], http, count=lambda *decision: counted.append(decision)
    )
    assert await stream(guard, pieces) == (None, None)
    assert counted == [("strict", "output", "allowed")]


async def test_one_character_deltas(http: httpx.AsyncClient) -> None:
    text = "Nothing here. " * 40 + "Now the secret-1234 appears. " + "More text. " * 10
    at, verdict = await stream(OutputGuard([("s", SECRETS)], http), list(text))
    assert at is not None and text[: at + 1].endswith("secret-1234 ")
    assert verdict == Blocked("s", "blocked pattern '(?i)secret-[0-9]+'", "patterns")


async def test_the_start_of_a_check_never_cuts_a_word_short(http: httpx.AsyncClient) -> None:
    # Each check rereads only the end of the text; a term inside a long word must not
    # look like a whole word where that reread begins.
    # One character at a time, every place a reread can begin is tried.
    text = "a" * 400 + "forbidden-word" + ", then a long and harmless end to the sentence."
    assert await stream(OutputGuard([("strict", STRICT)], http), list(text)) == (None, None)
    text = "x" * 300 + "password" + " is one long word" * 20
    assert await stream(OutputGuard([("s", SECRETS)], http), list(text)) == (None, None)


async def test_each_delta_rereads_a_bounded_overlap(http: httpx.AsyncClient) -> None:
    policy = Policy(blocked_terms=["forbidden-word"], patterns=["x{3}y"], max_pattern_chars=64)
    guard = OutputGuard([("p", policy)], http)
    for _ in range(2000):
        assert guard.feed("some harmless streamed text, ") is None
        assert len(guard._tail) <= policy.overlap + LOOKBEHIND_CHARS
    assert guard.feed("and then x") is None
    assert guard.feed("xxy") is None  # at the very end: settled by what follows
    assert guard.feed(" end") is not None  # split across deltas, found within the overlap


async def test_a_pattern_match_within_its_bound_is_found_across_many_deltas(
    http: httpx.AsyncClient,
) -> None:
    policy = Policy(patterns=[r"BEGIN KEY[A-Za-z0-9+/= ]{20,}END KEY"], max_pattern_chars=200)
    body = "BEGIN KEY" + "QUJDRE VGR0hJ SktMTU5P " * 6 + "END KEY"
    assert len(body) < 200
    pieces = ["Here: "] + [body[i : i + 5] for i in range(0, len(body), 5)] + [" bye"]
    at, verdict = await stream(OutputGuard([("keys", policy)], http), pieces)
    assert at is not None and verdict is not None and verdict.source == "patterns"


async def test_several_policies_first_block_wins(http: httpx.AsyncClient) -> None:
    counted: list[tuple[str, str, str]] = []
    guard = OutputGuard(
        [("strict", STRICT), ("secrets", SECRETS)],
        http,
        count=lambda *decision: counted.append(decision),
    )
    at, verdict = await stream(guard, ["a secret-9 then", " more"])
    assert at == 0 and verdict is not None and verdict.policy == "secrets"
    assert counted == [("secrets", "output", "blocked")]


async def test_a_guard_without_output_policies_is_inert(http: httpx.AsyncClient) -> None:
    counted: list[tuple[str, str, str]] = []
    for policies in ([], [("in", Policy(blocked_terms=["forbidden-word"], apply_to=["input"]))]):
        guard = OutputGuard(policies, http, count=lambda *decision: counted.append(decision))
        assert not guard.active
        assert guard.feed("forbidden-word ") is None
        assert await guard.close() is None
    assert counted == []


# Verdicts and errors


def test_blocked_serializes_without_the_text() -> None:
    blocked = Blocked("strict", "blocked term 'forbidden-word'", "terms")
    assert blocked.to_json() == {
        "policy": "strict",
        "reason": "blocked term 'forbidden-word'",
        "source": "terms",
    }
    assert blocked.message("output") == (
        "the output was blocked by the content policy 'strict' (blocked term 'forbidden-word')"
    )


def test_moderation_unavailable_is_a_retryable_503() -> None:
    error = ModerationUnavailable("down")
    assert (error.status_code, error.code, error.type) == (
        503,
        "moderation_unavailable",
        "service_unavailable",
    )
    assert error.retry_after == 1.0
    assert ModerationUnavailable().message.startswith("The content policy's moderation endpoint")
