"""Where a request goes: the auto-router's rules, read off the request itself (no network
round trip), and the route (model, deployments, fallbacks) its job carries to the worker."""

from __future__ import annotations

import re
from functools import lru_cache

from shared.auth import ApiKey
from shared.model_table import (
    AutoRouter,
    ModelEntry,
    ModelGroup,
    Route,
    RuleCondition,
    TableModel,
    build_route,
)
from shared.request import GenerationRequest, estimate_input_tokens
from shared.settings import Settings

# Code in a message: a Markdown fence, or a line that starts the way code does.
CODE_HINT = re.compile(
    r"```|^[ \t]*(?:def |class |import |from [\w.]+ import |function |const |let |var |"
    r"#include|public |private |fn |func |SELECT |INSERT |UPDATE |CREATE TABLE )",
    re.MULTILINE,
)


@lru_cache(maxsize=256)
def _pattern(source: str) -> re.Pattern[str]:
    return re.compile(source)


class RequestTraits:
    """What rules look at, each worked out once and only when a rule asks."""

    def __init__(self, request: GenerationRequest, caller: ApiKey) -> None:
        self.request = request
        self.caller = caller
        self._prompt_tokens: int | None = None
        self._last_user: str | None = None

    @property
    def prompt_tokens(self) -> int:
        if self._prompt_tokens is None:
            messages = self.request.messages
            characters = sum(len(m.content) for m in messages)
            characters += sum(
                len(t.description or "") + len(str(t.parameters)) for t in self.request.tools
            )
            self._prompt_tokens = estimate_input_tokens(characters, len(messages))
        return self._prompt_tokens

    @property
    def last_user(self) -> str:
        if self._last_user is None:
            users = [m.content for m in self.request.messages if m.role == "user"]
            self._last_user = users[-1] if users else ""
        return self._last_user

    @property
    def has_tools(self) -> bool:
        return bool(self.request.tools or self.request.mcp)

    @property
    def has_images(self) -> bool:
        return any(p.type == "image" for m in self.request.messages for p in m.parts or [])

    @property
    def has_code(self) -> bool:
        return CODE_HINT.search(self.last_user) is not None

    @property
    def reasoning(self) -> bool:
        r = self.request
        return bool(r.reasoning or r.reasoning_budget or r.reasoning_effort)

    def meets(self, when: RuleCondition) -> bool:
        if when.has_tools is not None and when.has_tools != self.has_tools:
            return False
        if when.has_images is not None and when.has_images != self.has_images:
            return False
        if when.has_code is not None and when.has_code != self.has_code:
            return False
        if when.reasoning is not None and when.reasoning != self.reasoning:
            return False
        if when.min_prompt_tokens is not None and self.prompt_tokens < when.min_prompt_tokens:
            return False
        if when.max_prompt_tokens is not None and self.prompt_tokens > when.max_prompt_tokens:
            return False
        if when.matches is not None and not _pattern(when.matches).search(self.last_user):
            return False
        return not (
            when.keys is not None
            and self.caller.id not in when.keys
            and self.caller.name not in when.keys
        )


def choose(router: AutoRouter, request: GenerationRequest, caller: ApiKey) -> tuple[str, str]:
    """The model an auto-router picks for this request, and the name of the rule that
    picked it (`default` when none did)."""
    traits = RequestTraits(request, caller)
    for i, rule in enumerate(router.router.rules):
        if traits.meets(rule.when):
            return rule.use, rule.name or f"rules[{i}]"
    return router.router.default, "default"


def plan_route(
    settings: Settings, name: str, request: GenerationRequest, caller: ApiKey, entry: TableModel
) -> Route:
    """The route of a request for the table entry `entry` (named `name`): an auto-router
    picks its model first; a group's deployments and fallbacks come along."""
    chosen = rule = None
    if isinstance(entry, AutoRouter):
        chosen, rule = choose(entry, request, caller)
        entry = settings.models[chosen]
    assert isinstance(entry, ModelEntry | ModelGroup)
    return build_route(settings.models, name, entry, chosen=chosen, rule=rule)
