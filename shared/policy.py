"""Content policies: blocked terms, patterns and an external moderation endpoint, checked on
a request's input before it is queued and on a generation's output as it streams."""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from shared.errors import ConfigError, ContentPolicyViolation, ModerationUnavailable

log = logging.getLogger("spool.policy")

Stage = Literal["input", "output"]
STAGES: tuple[Stage, ...] = ("input", "output")
Source = Literal["terms", "patterns", "moderation", "moderation_unavailable"]
Counter = Callable[[str, str, str], None]
"""`count(policy, stage, outcome)`: stage `input` or `output`, outcome `allowed`, `blocked`
or `error` (the moderation endpoint failed)."""

# Streamed output is checked delta by delta. Each check rereads the end of the text before
# the delta (each policy's `overlap`), so that a term or a pattern split across deltas is
# still found, and keeps this many characters more so that lookbehinds see what precedes.
LOOKBEHIND_CHARS = 32
# A term's spaces match any run of whitespace: a match may be this much longer than the
# term and still be found across deltas.
TERM_SLACK_CHARS = 32
# Each moderation window of output repeats the end of the previous one (this much, at most a
# quarter of a window), so text cut at a window's edge is also seen whole.
WINDOW_OVERLAP_CHARS = 64
# At most this many windows go in one moderation request (the endpoint takes a list).
MAX_WINDOWS_PER_REQUEST = 16
# How much of a configured term, pattern or category a reason quotes.
QUOTE_CHARS = 40
MAX_QUOTED_CATEGORIES = 5


def _quote(text: str) -> str:
    return "'" + (text if len(text) <= QUOTE_CHARS else text[: QUOTE_CHARS - 1] + "…") + "'"


def _normal(text: str) -> str:
    """A term or the text it matched, in the form that names it: spaces collapsed, lower."""
    return " ".join(text.split()).lower()


def _term_expressions(terms: list[str]) -> list[re.Pattern[str]]:
    """Terms as case-insensitive whole-word expressions: their spaces match any whitespace,
    and a term may not continue a word on a side where it starts or ends with a word
    character (`\\b` alone would fail terms that start or end with punctuation). Terms are
    grouped by those two sides, one expression per group: a plain alternation of literals
    between shared lookarounds is what the regex engine scans fast."""
    groups: dict[tuple[bool, bool], list[str]] = {}
    for term in sorted(terms, key=len, reverse=True):  # of two at one place, the longer
        sides = (bool(re.match(r"\w", term)), bool(re.search(r"\w\Z", term)))
        groups.setdefault(sides, []).append(r"\s+".join(re.escape(w) for w in term.split()))
    expressions = []
    for (starts, ends), bodies in groups.items():
        before = r"(?<!\w)" if starts else ""
        after = r"(?!\w)" if ends else ""
        expressions.append(re.compile(f"{before}(?:{'|'.join(bodies)}){after}", re.IGNORECASE))
    return expressions


class Policy(BaseModel):
    """A content policy, as written under `policies:` in the settings: built-in blocked
    terms and patterns, and an optional moderation endpoint in the OpenAI moderations
    shape."""

    model_config = ConfigDict(extra="forbid")

    # Case-insensitive whole words (or phrases: a space matches any run of whitespace).
    blocked_terms: list[str] = Field(default_factory=list)
    # Python regular expressions; a match anywhere blocks.
    patterns: list[str] = Field(default_factory=list)
    # The longest text a pattern is expected to match: in streamed output, a longer match
    # that straddles two deltas may be missed.
    max_pattern_chars: int = Field(default=256, ge=1, le=65536)
    moderation_url: str | None = None
    moderation_model: str | None = None
    moderation_api_key_env: str | None = None  # sent as `Authorization: Bearer <key>`
    moderation_timeout_s: float = Field(default=2.0, gt=0, le=120)  # the whole request
    on_error: Literal["open", "closed"] = "closed"  # when the endpoint fails
    # Output is sent to the endpoint in windows of this many new characters.
    output_window_chars: int = Field(default=500, ge=32, le=100_000)
    # Only these flagged categories block; None: any flag.
    categories: list[str] | None = Field(default=None, min_length=1)
    apply_to: list[Stage] = Field(default_factory=lambda: list(STAGES), min_length=1)

    _terms: list[re.Pattern[str]] = PrivateAttr(default_factory=list)
    _term_names: dict[str, str] = PrivateAttr(default_factory=dict)
    _patterns: list[re.Pattern[str]] = PrivateAttr(default_factory=list)
    _term_overlap: int = PrivateAttr(default=0)

    @field_validator("blocked_terms")
    @classmethod
    def _terms_not_empty(cls, terms: list[str]) -> list[str]:
        kept: dict[str, str] = {}
        for term in terms:
            if not term.strip():
                raise ValueError("a blocked term must not be empty")
            kept.setdefault(_normal(term), term.strip())
        return list(kept.values())

    @field_validator("patterns")
    @classmethod
    def _patterns_compile(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"invalid pattern {pattern!r}: {exc}") from None
            if compiled.search("") is not None:
                raise ValueError(f"the pattern {pattern!r} matches empty text")
        return patterns

    @field_validator("moderation_url")
    @classmethod
    def _http_url(cls, url: str | None) -> str | None:
        if url is not None and not url.startswith(("http://", "https://")):
            raise ValueError("moderation_url must be an http:// or https:// URL")
        return url

    @model_validator(mode="after")
    def _coherent(self) -> Policy:
        if not (self.blocked_terms or self.patterns or self.moderation_url):
            raise ValueError("a policy needs blocked_terms, patterns or a moderation_url")
        if self.moderation_url is None:
            stray = [
                name
                for name in ("moderation_model", "moderation_api_key_env", "categories")
                if getattr(self, name) is not None
            ]
            if stray:
                raise ValueError(f"{', '.join(stray)} need a moderation_url")
        return self

    def model_post_init(self, context: Any, /) -> None:
        self._terms = _term_expressions(self.blocked_terms)
        self._term_names = {_normal(term): term for term in self.blocked_terms}
        self._patterns = [re.compile(p) for p in self.patterns]
        longest = max((len(term) for term in self.blocked_terms), default=0)
        self._term_overlap = longest + TERM_SLACK_CHARS if longest else 0

    @property
    def has_builtin_checks(self) -> bool:
        return bool(self._terms or self._patterns)

    @property
    def overlap(self) -> int:
        """How much of the text before a delta a streamed check reads again."""
        return max(self._term_overlap, self.max_pattern_chars if self._patterns else 0)

    def find(self, text: str, fresh: int = 0, *, final: bool = True) -> tuple[Source, str] | None:
        """The first blocked term or pattern in `text` that involves the text from `fresh`
        on (terms are sought from their overlap before it, patterns from theirs; lookbehinds
        see further back), as (source, reason), or None.

        Unless `final`, a match that reaches the end of `text` and is no longer than its
        overlap is not reported: what follows may undo it (a term followed by more letters
        is inside a longer word), and the next check reads it again with what follows."""
        for expression in self._terms:
            match = self._first(expression, text, fresh, self._term_overlap, final)
            if match is not None:
                term = self._term_names.get(_normal(match.group()))
                return "terms", f"blocked term {_quote(term or match.group())}"
        for pattern in self._patterns:
            if self._first(pattern, text, fresh, self.max_pattern_chars, final) is not None:
                return "patterns", f"blocked pattern {_quote(pattern.pattern)}"
        return None

    @staticmethod
    def _first(
        expression: re.Pattern[str], text: str, fresh: int, overlap: int, final: bool
    ) -> re.Match[str] | None:
        end = len(text)
        for match in expression.finditer(text, max(0, fresh - overlap)):
            if match.end() == match.start():
                continue  # an empty match (a lone `\b`) blocks nothing
            if not final and match.end() == end and end - match.start() <= overlap:
                return None
            return match
        return None


@dataclass(frozen=True, slots=True)
class Blocked:
    """A policy's decision to block: which policy, why (never the user's text at length),
    and which check decided."""

    policy: str
    reason: str
    source: Source

    def to_json(self) -> dict[str, str]:
        return {"policy": self.policy, "reason": self.reason, "source": self.source}

    def message(self, stage: Stage) -> str:
        return f"the {stage} was blocked by the content policy '{self.policy}' ({self.reason})"


def policies_for(
    names: Iterable[str | None], table: Mapping[str, Policy]
) -> list[tuple[str, Policy]]:
    """The policies of these names (the model's, the key's …), each once, None skipped. A
    name missing from the table is a configuration error: a request is never let through
    unchecked because a policy name was misspelt."""
    found: list[tuple[str, Policy]] = []
    for name in names:
        if name is None or any(name == seen for seen, _ in found):
            continue
        policy = table.get(name)
        if policy is None:
            raise ConfigError(f"no content policy named {name!r} in the settings' policies")
        found.append((name, policy))
    return found


@dataclass(frozen=True, slots=True)
class _Failed:
    """The moderation endpoint could not answer."""

    reason: str


def _flagged(data: Any, categories: list[str] | None) -> list[str] | None:
    """The categories that block in a moderations answer ([] when flagged without any
    named), or None when nothing blocks. Raises ValueError on a malformed answer."""
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not results:
        raise ValueError("no results")
    blocked = False
    names: list[str] = []
    for result in results:
        if not isinstance(result, dict) or not isinstance(result.get("flagged"), bool):
            raise ValueError("a result without flagged")
        marked = result.get("categories", {})
        if not isinstance(marked, dict):
            raise ValueError("categories is not an object")
        on = [str(name) for name, value in marked.items() if value is True]
        if categories is None:
            if result["flagged"]:
                blocked = True
                names += on
        else:
            hits = [name for name in on if name in categories]
            blocked = blocked or bool(hits)
            names += hits
    return sorted(set(names)) if blocked else None


async def _moderate(
    name: str, policy: Policy, inputs: list[str], http: httpx.AsyncClient
) -> Blocked | _Failed | None:
    """Ask the policy's moderation endpoint about `inputs`: Blocked, _Failed or None (allowed)."""
    url = policy.moderation_url
    if url is None:
        return None
    headers: dict[str, str] = {}
    if policy.moderation_api_key_env:
        key = os.environ.get(policy.moderation_api_key_env)
        if not key:
            return _Failed(
                f"the moderation key's variable {policy.moderation_api_key_env} is unset"
            )
        headers["Authorization"] = f"Bearer {key}"
    body: dict[str, Any] = {"input": inputs[0] if len(inputs) == 1 else inputs}
    if policy.moderation_model is not None:
        body["model"] = policy.moderation_model
    timeout = policy.moderation_timeout_s
    failure: str
    detail: object = None  # for the log only
    try:
        async with asyncio.timeout(timeout):
            response = await http.post(url, json=body, headers=headers, timeout=timeout)
    except (TimeoutError, httpx.TimeoutException):
        failure = f"did not answer within {timeout:g}s"
    except httpx.TransportError as exc:
        failure, detail = f"is unreachable ({type(exc).__name__})", exc
    except Exception as exc:  # the outbound guard's refusal, or anything else: not allowed
        failure, detail = f"failed ({type(exc).__name__})", exc
    else:
        if not response.is_success:
            failure = f"answered HTTP {response.status_code}"
        else:
            try:
                names = _flagged(response.json(), policy.categories)
            except ValueError:
                failure = "answered something that is not a moderations result"
            else:
                if names is None:
                    return None
                shown = [_quote(n) for n in names[:MAX_QUOTED_CATEGORIES]]
                more = len(names) - len(shown)
                listed = ", ".join(shown) + (f" and {more} more" if more > 0 else "")
                reason = "flagged by moderation" + (f": {listed}" if listed else "")
                return Blocked(name, reason, "moderation")
    log.warning("content policy %r: the moderation endpoint %s %s", name, failure, detail or "")
    return _Failed(f"the moderation endpoint {failure}")


def _counted(count: Counter | None, policy: str, stage: Stage, outcome: str) -> None:
    if count is not None:
        count(policy, stage, outcome)


async def check_input(
    policies: list[tuple[str, Policy]],
    texts: list[str],
    http: httpx.AsyncClient,
    *,
    count: Counter | None = None,
) -> None:
    """Check a request's input texts (each on its own) against its policies: built-in
    checks first, then every policy's moderation endpoint at once. Raises
    ContentPolicyViolation when one blocks, ModerationUnavailable when an endpoint of a
    fail-closed policy fails (and none blocks). `count` is called once for each policy
    that decided; policies left undecided by an earlier block are not counted."""
    applied = [(name, policy) for name, policy in policies if "input" in policy.apply_to]
    texts = [text for text in texts if text]
    for name, policy in applied:
        if not policy.has_builtin_checks:
            continue
        for text in texts:
            found = policy.find(text)
            if found is not None:
                _counted(count, name, "input", "blocked")
                blocked = Blocked(name, found[1], found[0])
                raise ContentPolicyViolation(blocked.message("input"), **blocked.to_json())
    outcomes: dict[str, asyncio.Task[Blocked | _Failed | None]] = {}
    if texts:
        async with asyncio.TaskGroup() as group:
            for name, policy in applied:
                if policy.moderation_url is not None:
                    outcomes[name] = group.create_task(
                        _moderate(name, policy, texts, http), name=f"spool-moderation-{name}"
                    )
    first_block: Blocked | None = None
    first_failure: tuple[str, _Failed] | None = None
    for name, policy in applied:
        outcome = outcomes[name].result() if name in outcomes else None
        if isinstance(outcome, Blocked):
            _counted(count, name, "input", "blocked")
            first_block = first_block or outcome
        elif isinstance(outcome, _Failed):
            _counted(count, name, "input", "error")
            if policy.on_error == "closed" and first_failure is None:
                first_failure = (name, outcome)
        else:
            _counted(count, name, "input", "allowed")
    if first_block is not None:
        raise ContentPolicyViolation(first_block.message("input"), **first_block.to_json())
    if first_failure is not None:
        name, failed = first_failure
        raise ModerationUnavailable(
            f"the content policy '{name}' could not check the input: {failed.reason}"
        )


class _Moderator:
    """One policy's moderation of one generation's output: cuts the text into windows and
    sends them from one background task, one request at a time (windows that pile up while
    a request is out go together in the next)."""

    def __init__(self, guard: OutputGuard, name: str, policy: Policy) -> None:
        self.guard = guard
        self.name = name
        self.policy = policy
        self.window = policy.output_window_chars
        self.overlap = min(WINDOW_OVERLAP_CHARS, self.window // 4)
        self.pending: list[str] = []
        self.pending_len = 0
        self.previous = ""  # the end of the last window, repeated at the start of the next
        self.ready: list[str] = []
        self.wake = asyncio.Event()
        self.finishing = False
        self.task: asyncio.Task[None] | None = None

    def add(self, text: str) -> None:
        self.pending.append(text)
        self.pending_len += len(text)
        if self.pending_len >= self.window:
            self._cut(final=False)

    def finish(self) -> None:
        """Send the last partial window, and end once everything has been checked."""
        self._cut(final=True)
        self.finishing = True
        self.wake.set()

    def _cut(self, *, final: bool) -> None:
        text = "".join(self.pending)
        cut = len(text) if final else len(text) - len(text) % self.window
        for at in range(0, cut, self.window):
            piece = text[at : at + self.window]
            self.ready.append(self.previous + piece)
            self.previous = piece[-self.overlap :] if self.overlap else ""
        rest = text[cut:]
        self.pending = [rest] if rest else []
        self.pending_len = len(rest)
        if self.ready:
            if self.task is None:
                self.task = asyncio.create_task(self._run(), name=f"spool-moderation-{self.name}")
            self.wake.set()

    async def _run(self) -> None:
        while True:
            if not self.ready:
                if self.finishing:
                    return
                self.wake.clear()
                await self.wake.wait()
                continue
            batch = self.ready[:MAX_WINDOWS_PER_REQUEST]
            del self.ready[:MAX_WINDOWS_PER_REQUEST]
            outcome = await _moderate(self.name, self.policy, batch, self.guard.http)
            if self.guard._settle(self.name, self.policy, outcome):
                return


class OutputGuard:
    """Checks one generation's streamed output against its policies.

    `feed(delta)` runs the built-in checks over the delta (plus the end of the text before
    it, so that nothing split across deltas escapes) and hands the text to each moderation
    endpoint in windows, checked in the background. A term at the very end of a delta is
    reported with the next delta (or at `close()`), once it is known not to continue into a
    longer word. `verdict()` is the first block found so far; `close()` checks what remains
    and returns the final verdict; `aclose()` (or leaving `async with`) cancels what is
    still running. Each policy's decision is counted once: a block when it is found;
    allowed or error (the endpoint failed and the policy fails open) when `close()` ends
    without a block. Moderation checks are tasks on the caller's event loop: end every
    guard with `close()` or `aclose()` (or use it as `async with`)."""

    def __init__(
        self,
        policies: list[tuple[str, Policy]],
        http: httpx.AsyncClient,
        *,
        count: Counter | None = None,
    ) -> None:
        applied = [(name, policy) for name, policy in policies if "output" in policy.apply_to]
        self.http = http
        self._count = count
        self._names = [name for name, _ in applied]
        self._local = [(name, policy) for name, policy in applied if policy.has_builtin_checks]
        self._remote = [
            _Moderator(self, name, policy)
            for name, policy in applied
            if policy.moderation_url is not None
        ]
        self._keep = max((policy.overlap for _, policy in self._local), default=0)
        self._keep += LOOKBEHIND_CHARS
        self._tail = ""
        self._blocked: Blocked | None = None
        self._done = not applied  # nothing to check, or closed, or blocked
        self._errors: set[str] = set()

    @property
    def active(self) -> bool:
        """Whether any policy applies to output."""
        return bool(self._names)

    def feed(self, text: str) -> Blocked | None:
        """Check a new piece of output; the first block found so far, or None."""
        if self._done or not text:
            return self._blocked
        if self._local:
            seen = self._tail
            scanned = seen + text
            for name, policy in self._local:
                found = policy.find(scanned, len(seen), final=False)
                if found is not None:
                    return self._block(Blocked(name, found[1], found[0]))
            self._tail = scanned[-self._keep :]
        for moderator in self._remote:
            moderator.add(text)
        return self._blocked

    def verdict(self) -> Blocked | None:
        """The first block found so far (a finished moderation check's included)."""
        return self._blocked

    async def close(self) -> Blocked | None:
        """The output is complete: check the rest (the end of the text, the last partial
        moderation window), wait for the moderation checks, and return the verdict."""
        if self._done:
            await self.aclose()
            return self._blocked
        try:
            for name, policy in self._local:
                found = policy.find(self._tail, len(self._tail))
                if found is not None:
                    self._block(Blocked(name, found[1], found[0]))
                    break
            else:
                for moderator in self._remote:
                    moderator.finish()
                running = [m.task for m in self._remote if m.task is not None]
                if running:
                    await asyncio.wait(running)
        finally:
            await self.aclose()
        if self._blocked is None:
            for name in self._names:
                outcome = "error" if name in self._errors else "allowed"
                _counted(self._count, name, "output", outcome)
        return self._blocked

    async def aclose(self) -> None:
        """Stop checking: cancel the moderation checks still running and wait for them."""
        self._done = True
        running = [m.task for m in self._remote if m.task is not None and not m.task.done()]
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)

    async def __aenter__(self) -> OutputGuard:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _block(self, blocked: Blocked, outcome: str = "blocked") -> Blocked:
        if self._blocked is None:
            self._blocked = blocked
            self._done = True
            _counted(self._count, blocked.policy, "output", outcome)
            running = [m.task for m in self._remote if m.task is not None and not m.task.done()]
            if running:
                current = asyncio.current_task()
                for task in running:
                    if task is not current:
                        task.cancel()
        return self._blocked

    def _settle(self, name: str, policy: Policy, outcome: Blocked | _Failed | None) -> bool:
        """Take a moderation check's outcome; whether that policy's checking is over."""
        if self._blocked is not None:
            return True
        if isinstance(outcome, Blocked):
            self._block(outcome)
            return True
        if isinstance(outcome, _Failed):
            if policy.on_error == "closed":
                self._block(Blocked(name, outcome.reason, "moderation_unavailable"), "error")
                return True
            self._errors.add(name)
        return False
