"""The model table: a public model name is one upstream (`ModelEntry`), a group of
deployments (`ModelGroup`) or an auto-router (`AutoRouter`); `Route` is what one request
resolves to, carried on its job so every worker follows the same plan."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator

ProviderName = Literal["demo", "openai", "responses", "anthropic", "gemini"]
Strategy = Literal["weighted", "least_busy", "latency", "usage"]
# At most this many models (the chosen one and its fallbacks) are in one request's route.
MAX_ROUTE_GROUPS = 8


class RoutingOptions(BaseModel):
    """What a public model (one upstream or a group) does when its deployments fail, and
    the content policy its requests and answers go through."""

    model_config = ConfigDict(extra="forbid")

    # Other public models tried in order once this one's deployments have failed before
    # the first token; a context-window or content-policy refusal goes to its own list.
    fallbacks: list[str] = Field(default_factory=list)
    context_window_fallbacks: list[str] = Field(default_factory=list)
    content_policy_fallbacks: list[str] = Field(default_factory=list)
    # A deployment of a group that fails `allowed_fails` times within `fail_window_s` is
    # skipped by every worker for `cooldown_s` (a lone upstream is never cooled down).
    allowed_fails: int = Field(default=3, ge=1, le=1000)
    cooldown_s: float = Field(default=30.0, gt=0, le=86_400)
    fail_window_s: float = Field(default=60.0, gt=0, le=86_400)
    policy: str | None = None  # a name in `policies`


class ModelEntry(RoutingOptions):
    """One upstream: a provider, its base URL, upstream model name and key. Standing alone
    it is a public model; inside a group it is one deployment (`name`, `weight`, `tpm`)."""

    provider: ProviderName
    model: str | None = Field(default=None, description="upstream model name; defaults to the key")
    base_url: str | None = None
    api_key_env: str | None = None
    # Demo provider knobs: tokens per second (0 = as fast as possible), delay before the
    # first token, and how many tokens an answer has unless max_tokens cuts it shorter.
    tokens_per_second: float = Field(default=50.0, ge=0)
    first_token_delay_ms: float = Field(default=0.0, ge=0)
    max_output_tokens: int = Field(default=48, ge=1, le=100_000)
    # Demo: think out loud before answering when the request asks for reasoning.
    reasoning_tokens: int = Field(default=12, ge=0, le=10_000)
    # Upstream knobs: an upstream silent for idle_timeout_s ends the stream.
    connect_timeout_s: float = Field(default=10.0, gt=0)
    idle_timeout_s: float = Field(default=60.0, gt=0)
    extra_headers: dict[str, str] = Field(default_factory=dict)
    # Request fields the provider cannot honour are dropped (and named in the response's
    # X-Spool-Dropped-Params header) instead of refused with a 400.
    drop_params: bool = False
    # Embedding models: the vector length the upstream returns (the demo's default length).
    dimensions: int | None = Field(default=None, ge=1, le=65536)
    # MCP servers (names in `mcp_servers`) whose tools are offered to the model on every
    # request, run by the worker; and the most model turns one generation may take.
    server_tools: list[str] = Field(default_factory=list)
    max_tool_steps: int = Field(default=8, ge=1, le=100)
    # As a deployment of a group: its name (metrics, the X-Spool-Deployment header,
    # `/result`; default `<group>#<n>`), its share of the traffic under `weighted`
    # routing, and the tokens per minute it may take under `usage` routing.
    name: str | None = Field(default=None, min_length=1, max_length=128)
    weight: float = Field(default=1.0, gt=0, le=1_000_000)
    tpm: int | None = Field(default=None, ge=1)

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    @property
    def deployment(self) -> str:
        """The name this upstream is known by in routing state and on streams."""
        return self.name or self.model or self.provider


_JSON_FORMS: dict[int, tuple[ModelEntry, dict[str, Any]]] = {}


def entry_json(entry: ModelEntry) -> dict[str, Any]:
    """`entry.model_dump(mode="json")`, made once per entry: the model table's entries last
    as long as the process, and every job's record carries one. Not to be changed."""
    found = _JSON_FORMS.get(id(entry))
    if found is not None and found[0] is entry:
        return found[1]
    if len(_JSON_FORMS) >= 1024:  # entries made per request (none today) do not pile up
        _JSON_FORMS.clear()
    dumped = entry.model_dump(mode="json")
    _JSON_FORMS[id(entry)] = (entry, dumped)
    return dumped


class ModelGroup(RoutingOptions):
    """Several deployments behind one public name, picked per request by `routing`."""

    routing: Strategy = "weighted"
    deployments: list[ModelEntry] = Field(min_length=1, max_length=64)

    @field_validator("deployments", mode="after")
    @classmethod
    def _deployments_route_nothing(cls, deployments: list[ModelEntry]) -> list[ModelEntry]:
        defaults = RoutingOptions()
        for i, deployment in enumerate(deployments):
            misplaced = sorted(
                f for f in _GROUP_ONLY if getattr(deployment, f) != getattr(defaults, f)
            )
            if misplaced:
                raise ValueError(
                    f"deployments[{i}] sets {', '.join(misplaced)}, which belong to the "
                    "group, not to one deployment"
                )
        return deployments


_GROUP_ONLY = frozenset(RoutingOptions.model_fields)


class RuleCondition(BaseModel):
    """What a request must be for a rule to pick its model: every condition given holds."""

    model_config = ConfigDict(extra="forbid")

    has_tools: bool | None = None
    has_images: bool | None = None
    has_code: bool | None = None  # the last user message holds code (a fence or code-like lines)
    reasoning: bool | None = None  # the request asks for reasoning
    min_prompt_tokens: int | None = Field(default=None, ge=0)
    max_prompt_tokens: int | None = Field(default=None, ge=0)
    matches: str | None = None  # a regular expression searched in the last user message
    keys: list[str] | None = None  # the caller's key, by id or name

    @field_validator("matches", mode="after")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"matches {pattern!r} is not a regular expression: {exc}"
                ) from None
        return pattern


class RouteRule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: RuleCondition
    use: str
    name: str | None = None  # how the stream and `/result` name the rule; default rules[i]


class RouterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rules: list[RouteRule] = Field(default_factory=list, max_length=256)
    default: str


class AutoRouter(BaseModel):
    """A public model that picks another model per request by its rules, in order; the
    first rule whose conditions all hold wins, else `default`."""

    model_config = ConfigDict(extra="forbid")

    router: RouterConfig
    policy: str | None = None


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "router" if "router" in value else "group" if "deployments" in value else "entry"
    if isinstance(value, AutoRouter):
        return "router"
    return "group" if isinstance(value, ModelGroup) else "entry"


TableEntry = Annotated[
    Annotated[ModelEntry, Tag("entry")]
    | Annotated[ModelGroup, Tag("group")]
    | Annotated[AutoRouter, Tag("router")],
    Discriminator(_kind),
]


TableModel = ModelEntry | ModelGroup | AutoRouter

# -- a request's route --------------------------------------------------------------------


@dataclass(slots=True)
class GroupPlan:
    """One public model of a route, with the deployments it may be served by."""

    name: str
    deployments: list[ModelEntry]
    routing: Strategy = "weighted"
    allowed_fails: int = 3
    cooldown_s: float = 30.0
    fail_window_s: float = 60.0

    @property
    def pooled(self) -> bool:
        """Whether deployments share the traffic (and so are cooled down when failing)."""
        return len(self.deployments) > 1

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "routing": self.routing,
            "allowed_fails": self.allowed_fails,
            "cooldown_s": self.cooldown_s,
            "fail_window_s": self.fail_window_s,
            "deployments": [
                d.model_dump(mode="json", exclude_defaults=True) for d in self.deployments
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupPlan:
        return cls(
            name=data["name"],
            deployments=[ModelEntry.model_validate(d) for d in data["deployments"]],
            routing=data.get("routing", "weighted"),
            allowed_fails=data.get("allowed_fails", 3),
            cooldown_s=data.get("cooldown_s", 30.0),
            fail_window_s=data.get("fail_window_s", 60.0),
        )


@dataclass(slots=True)
class Route:
    """Where one request may go: its models in the order tried (`order`: the chosen model,
    then its fallbacks), the models for a context-window or a content-policy refusal, and
    the auto-router's choice (`chosen`, `rule`) when one chose."""

    groups: dict[str, GroupPlan]
    order: list[str]
    context_window: list[str] = field(default_factory=list)
    content_policy: list[str] = field(default_factory=list)
    chosen: str | None = None
    rule: str | None = None

    @property
    def primary(self) -> GroupPlan:
        return self.groups[self.order[0]]

    @property
    def fixed(self) -> bool:
        """One upstream and nowhere else to go: nothing to choose at run time."""
        return len(self.groups) == 1 and not self.primary.pooled and self.chosen is None

    def deployments(self) -> list[ModelEntry]:
        return [d for g in self.groups.values() for d in g.deployments]

    def narrowed(self, kept: dict[str, list[ModelEntry]]) -> Route:
        """The route with only the deployments `kept` (by model); models left with none
        drop out of every list."""
        groups = {
            name: dataclasses.replace(group, deployments=kept[name])
            for name, group in self.groups.items()
            if kept.get(name)
        }

        def keep(names: list[str]) -> list[str]:
            return [n for n in names if n in groups]

        return Route(
            groups,
            keep(self.order),
            keep(self.context_window),
            keep(self.content_policy),
            self.chosen,
            self.rule,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "groups": [g.to_json() for g in self.groups.values()],
            "order": self.order,
            "context_window": self.context_window,
            "content_policy": self.content_policy,
            "chosen": self.chosen,
            "rule": self.rule,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Route:
        groups = [GroupPlan.from_json(g) for g in data["groups"]]
        return cls(
            groups={g.name: g for g in groups},
            order=list(data["order"]),
            context_window=list(data.get("context_window") or []),
            content_policy=list(data.get("content_policy") or []),
            chosen=data.get("chosen"),
            rule=data.get("rule"),
        )

    @classmethod
    def single(cls, name: str, entry: ModelEntry) -> Route:
        """The route of a job that names one upstream (`entry`)."""
        return cls(groups={name: group_plan(name, entry)}, order=[name])


def group_plan(name: str, entry: ModelEntry | ModelGroup) -> GroupPlan:
    if isinstance(entry, ModelEntry):
        # Table entries are named when the settings load: no copy per request.
        deployment = entry if entry.name else entry.model_copy(update={"name": name})
        return GroupPlan(
            name,
            [deployment],
            "weighted",
            entry.allowed_fails,
            entry.cooldown_s,
            entry.fail_window_s,
        )
    return GroupPlan(
        name,
        entry.deployments,
        entry.routing,
        entry.allowed_fails,
        entry.cooldown_s,
        entry.fail_window_s,
    )


def build_route(
    models: Mapping[str, TableModel],
    name: str,
    target: ModelEntry | ModelGroup,
    *,
    chosen: str | None = None,
    rule: str | None = None,
) -> Route:
    """The route of a request for `name` (served by `target`, itself the auto-router's
    choice `chosen` when one chose): the target, then its fallbacks and theirs, depth
    first, each model once, at most `MAX_ROUTE_GROUPS` in all."""
    groups: dict[str, GroupPlan] = {}
    served = chosen or name

    def chain(start: list[str], attr: str) -> list[str]:
        order: list[str] = []
        pending = list(reversed(start))
        while pending and len(order) < MAX_ROUTE_GROUPS:
            model = pending.pop()
            entry = models.get(model)
            if model in order or model == served or not isinstance(entry, ModelEntry | ModelGroup):
                continue
            order.append(model)
            groups.setdefault(model, group_plan(model, entry))
            pending.extend(reversed(getattr(entry, attr)))
        return order

    groups[served] = group_plan(served, target)
    order = [served, *chain(target.fallbacks, "fallbacks")][:MAX_ROUTE_GROUPS]
    context_window = chain(target.context_window_fallbacks, "context_window_fallbacks")
    content_policy = chain(target.content_policy_fallbacks, "content_policy_fallbacks")
    return Route(groups, order, context_window, content_policy, chosen, rule)
