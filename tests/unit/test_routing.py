"""Unit tests for routing: the model table's groups and routers, routes and their
fallback chains, the auto-router's rules, deployment ranking by each strategy, and what
an upstream failure before the first token is taken to mean."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from api.generation import judge_route
from api.routing import choose, plan_route
from shared.auth import ApiKey
from shared.errors import InvalidRequest, UpstreamError
from shared.model_table import AutoRouter, GroupPlan, ModelEntry, ModelGroup, Route, build_route
from shared.request import GenerationRequest, Message
from shared.settings import Settings
from worker.routing import DeploymentStats, classify, rank

CALLER = ApiKey(id="key_1", name="ops")


def settings(models: dict[str, Any]) -> Settings:
    return Settings.model_validate({"models": models})


def demo(**fields: Any) -> dict[str, Any]:
    return {"provider": "demo", **fields}


def request(text: str = "hi", **fields: Any) -> GenerationRequest:
    return GenerationRequest(
        model=fields.pop("model", "m"), messages=[Message(role="user", content=text)], **fields
    )


# -- the table -----------------------------------------------------------------------------


def test_groups_get_default_deployment_names_and_keep_given_ones() -> None:
    found = settings({"chat": {"deployments": [demo(), demo(name="east"), demo()]}})
    group = found.models["chat"]
    assert isinstance(group, ModelGroup)
    assert [d.name for d in group.deployments] == ["chat#1", "east", "chat#3"]
    assert group.routing == "weighted"


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ({"g": {"deployments": [demo(fallbacks=["demo"])]}}, "belong to the group"),
        (
            {"a": {"deployments": [demo(name="x")]}, "b": {"deployments": [demo(name="x")]}},
            "'x' is taken",
        ),
        ({"g": {"deployments": [demo()], "fallbacks": ["nowhere"]}}, "'nowhere', which is not"),
        ({"g": demo(context_window_fallbacks=["nowhere"])}, "context_window_fallbacks[0]"),
        ({"r": {"router": {"rules": [], "default": "nowhere"}}}, "router.default"),
        (
            {"r": {"router": {"rules": [{"when": {}, "use": "r2"}], "default": "demo"}},
             "r2": {"router": {"rules": [], "default": "demo"}}},
            "an auto-router",
        ),
        ({"r": {"router": {"rules": [{"when": {"matches": "("}, "use": "demo"}], "default": "demo"}}},
         "not a regular expression"),
        ({"g": {"deployments": []}}, "at least 1"),
        ({"g": {"deployments": [demo()], "routing": "fastest"}}, "routing"),
        ({"g": {"deployments": [demo(weight=0)]}}, "weight"),
    ],
)  # fmt: skip
def test_bad_tables_are_refused_naming_what_is_wrong(models: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        settings(models)


def test_the_form_of_an_entry_decides_its_kind() -> None:
    found = settings(
        {
            "one": demo(),
            "group": {"deployments": [demo()]},
            "auto": {"router": {"rules": [], "default": "one"}},
        }
    )
    assert isinstance(found.models["one"], ModelEntry)
    assert isinstance(found.models["group"], ModelGroup)
    assert isinstance(found.models["auto"], AutoRouter)
    # Round trip through a dump, as the settings of another process would read them.
    again = Settings.model_validate(found.model_dump())
    assert again.models == found.models


# -- routes --------------------------------------------------------------------------------


def test_a_route_chains_fallbacks_depth_first_each_once() -> None:
    table = settings(
        {
            "a": {"deployments": [demo(), demo()], "fallbacks": ["b", "c"],
                  "context_window_fallbacks": ["big"]},
            "b": demo(fallbacks=["d", "a"]),
            "c": demo(fallbacks=["b"]),
            "d": demo(),
            "big": demo(context_window_fallbacks=["bigger"]),
            "bigger": demo(),
        }
    ).models  # fmt: skip
    target = table["a"]
    assert isinstance(target, ModelGroup)
    route = build_route(table, "a", target)
    assert route.order == ["a", "b", "d", "c"]
    assert route.context_window == ["big", "bigger"]
    assert route.content_policy == []
    assert [d.deployment for d in route.primary.deployments] == ["a#1", "a#2"]
    assert route.groups["b"].deployments[0].deployment == "b"
    assert not route.fixed
    assert Route.from_json(route.to_json()).to_json() == route.to_json()


def test_a_lone_upstream_is_a_fixed_route() -> None:
    table = settings({"one": demo()}).models
    route = build_route(table, "one", table["one"])  # type: ignore[arg-type]
    assert route.fixed and route.order == ["one"]


def test_judging_a_route_drops_the_deployments_that_cannot_take_the_request() -> None:
    openai = {"provider": "openai", "base_url": "https://a.example/v1"}
    anthropic = {"provider": "anthropic", "base_url": "https://b.example/v1"}
    table = settings(
        {
            "mixed": {"deployments": [{**anthropic, "name": "claude"}, {**openai, "name": "gpt"}],
                      "fallbacks": ["claude-only"]},
            "claude-only": anthropic,
        }
    )  # fmt: skip
    seeded = request(model="mixed", seed=7)  # Anthropic has no seed
    route = plan_route(table, "mixed", seeded, CALLER, table.models["mixed"])
    judged, dropped, kept = judge_route(seeded, route)
    assert [d.deployment for d in kept.deployments()] == ["gpt"]
    assert kept.order == ["mixed"] and judged.seed == 7 and dropped == []
    only = plan_route(table, "claude-only", seeded, CALLER, table.models["claude-only"])
    with pytest.raises(InvalidRequest, match="seed"):
        judge_route(seeded, only)


# -- the auto-router -------------------------------------------------------------------------

ROUTER = AutoRouter.model_validate(
    {
        "router": {
            "rules": [
                {"when": {"has_tools": True, "min_prompt_tokens": 100}, "use": "big-tools"},
                {"when": {"has_tools": True}, "use": "tools", "name": "tool use"},
                {"when": {"keys": ["vip"]}, "use": "premium"},
                {"when": {"has_code": True}, "use": "coder"},
                {"when": {"max_prompt_tokens": 5, "reasoning": False}, "use": "tiny"},
                {"when": {"matches": r"(?i)\bbonjour\b"}, "use": "french"},
            ],
            "default": "general",
        }
    }
)


@pytest.mark.parametrize(
    ("body", "caller", "chosen"),
    [
        ({"tools": [{"name": "f"}]}, CALLER, ("tools", "tool use")),
        ({"text": "x" * 400, "tools": [{"name": "f"}]}, CALLER, ("big-tools", "rules[0]")),
        ({"text": "long enough to pass the tiny rule"}, ApiKey(id="k", name="vip"), ("premium", "rules[2]")),
        ({"text": "fix this:\n```\nx = 1\n```"}, CALLER, ("coder", "rules[3]")),
        ({"text": "why does\ndef f(): fail?"}, CALLER, ("coder", "rules[3]")),
        ({"text": "hi"}, CALLER, ("tiny", "rules[4]")),
        ({"text": "hi", "reasoning_effort": "high"}, CALLER, ("general", "default")),
        ({"text": "Bonjour, comment allez-vous ?"}, CALLER, ("french", "rules[5]")),
        ({"text": "définitivement pas un bonjourno à la ligne"}, CALLER, ("general", "default")),
    ],
)  # fmt: skip
def test_the_auto_router_takes_the_first_rule_that_holds(
    body: dict[str, Any], caller: ApiKey, chosen: tuple[str, str]
) -> None:
    tools = body.pop("tools", [])
    asked = request(body.pop("text", "hello there, how are you"), tools=tools, **body)
    assert choose(ROUTER, asked, caller) == chosen


# -- ranking -------------------------------------------------------------------------------


def group(routing: str, **weights: float) -> GroupPlan:
    deployments = [
        ModelEntry(provider="demo", name=name, weight=weight, tpm=100 if name == "small" else None)
        for name, weight in weights.items()
    ]
    return GroupPlan("g", deployments, routing)  # type: ignore[arg-type]


def test_weighted_ranking_picks_first_by_weight() -> None:
    plan = group("weighted", a=3, b=1)
    stats = {"a": DeploymentStats(), "b": DeploymentStats()}
    rng = random.Random(7)
    firsts = Counter(rank(plan, stats, rng)[0].deployment for _ in range(20_000))
    assert 0.73 < firsts["a"] / 20_000 < 0.77
    # The rest follow, so a failure has somewhere to go.
    assert sorted(d.deployment for d in rank(plan, stats, rng)) == ["a", "b"]


def test_cooling_deployments_are_left_out() -> None:
    plan = group("weighted", a=1, b=1)
    stats = {"a": DeploymentStats(cooling=True), "b": DeploymentStats()}
    assert [d.deployment for d in rank(plan, stats, random.Random())] == ["b"]
    stats["b"].cooling = True
    assert rank(plan, stats, random.Random()) == []


def test_least_busy_latency_and_usage_order() -> None:
    rng = random.Random(1)
    busy = {
        "a": DeploymentStats(busy=3),
        "b": DeploymentStats(busy=1),
        "c": DeploymentStats(busy=2),
    }
    assert [d.deployment for d in rank(group("least_busy", a=1, b=1, c=1), busy, rng)] == [
        "b",
        "c",
        "a",
    ]
    timed = {
        "a": DeploymentStats(latency_ms=80),
        "b": DeploymentStats(latency_ms=20),
        "c": DeploymentStats(),  # never measured: goes first
    }
    assert [d.deployment for d in rank(group("latency", a=1, b=1, c=1), timed, rng)] == [
        "c",
        "b",
        "a",
    ]
    used = {"small": DeploymentStats(tokens=150), "big": DeploymentStats(tokens=10_000)}
    # `small` is past its 100 tokens per minute: last, whatever the others took.
    assert [d.deployment for d in rank(group("usage", small=1, big=1), used, rng)] == [
        "big",
        "small",
    ]


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "retryable", "kind"),
    [
        (400, "This model's maximum context length is 8192 tokens. However, you requested 9000", False, "context_window"),
        (400, "prompt is too long: 208310 tokens > 200000 maximum", False, "context_window"),
        (400, "The input token count (1234) exceeds the maximum number of tokens allowed (1000).", False, "context_window"),
        (400, "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.", False, "content_policy"),
        (400, "Your request was rejected as a result of our safety system.", False, "content_policy"),
        (400, "Invalid value for 'temperature'", False, "request"),
        (422, "unprocessable", False, "request"),
        (401, "Incorrect API key provided", False, "deployment"),
        (404, "The model `m` does not exist", False, "deployment"),
        (429, "Rate limit reached for requests; context length is not the problem", True, "deployment"),
        (503, "overloaded", True, "deployment"),
        (None, "upstream connection failed: ConnectError", True, "deployment"),
    ],
)  # fmt: skip
def test_failures_are_classified(
    status: int | None, message: str, retryable: bool, kind: str
) -> None:
    exc = UpstreamError(message, upstream_status=status, retryable=retryable)
    assert classify(exc) == kind
