"""Unit tests for who may use which model: `demo_enabled`, the `passthrough` patterns and
keys limited to a list of models, as the settings, `resolve_model` and `resolve_task_model`
apply them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from api.generation import resolve_model
from api.tasks import resolve_task_model
from shared.auth import ANONYMOUS, ApiKey
from shared.errors import ConfigError, ModelNotFound
from shared.settings import Settings, load_settings
from shared.tasks import TaskSpec


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SPOOL_* / REDIS_URL variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("SPOOL_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


UPSTREAM = {"provider": "openai", "base_url": "https://api.example.com/v1", "model": "m"}
QUEUE_HTTP = {
    "provider": "queue_http",
    "base_url": "https://queue.example.com",
    "queue_http": {"submit_path": "/submit", "status_path": "/status/{id}"},
}


def task(model: str) -> TaskSpec:
    return TaskSpec.model_validate({"kind": "image", "model": model, "input": {"prompt": "x"}})


def not_found(settings: Settings, name: str, caller: ApiKey = ANONYMOUS) -> str:
    with pytest.raises(ModelNotFound) as refused:
        resolve_model(settings, name, caller)
    assert refused.value.status_code == 404 and refused.value.code == "model_not_found"
    return refused.value.message


# -- demo_enabled ----------------------------------------------------------------------


def test_demo_models_are_there_by_default() -> None:
    settings = load_settings()
    assert settings.demo_enabled and settings.passthrough == ["demo/*"]
    assert resolve_model(settings, "demo", ANONYMOUS).provider == "demo"
    assert resolve_model(settings, "demo/anything", ANONYMOUS).model == "anything"
    assert resolve_task_model(settings, task("demo"), ANONYMOUS).provider == "demo"


def test_demo_disabled_leaves_no_demo_model() -> None:
    settings = load_settings(demo_enabled=False, models={"gpt": UPSTREAM})
    assert set(settings.models) == {"gpt"} and settings.task_models == {}
    assert "does not exist" in not_found(settings, "demo")
    assert "not allowed" in not_found(settings, "demo/anything")
    with pytest.raises(ModelNotFound):
        resolve_task_model(settings, task("demo"), ANONYMOUS)


def test_demo_disabled_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOOL_DEMO_ENABLED", "false")
    settings = load_settings()
    assert settings.models == {} and settings.task_models == {}


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"models": {"fast": {"provider": "demo"}}}, "models.fast"),
        ({"models": {"demo": {"provider": "demo"}}}, "models.demo"),
        ({"task_models": {"demo": {"provider": "demo"}}}, "task_models.demo"),
        ({"passthrough": ["openai/*", "demo/*"]}, "passthrough"),
        ({"passthrough": "demo"}, "passthrough"),
    ],
)
def test_demo_disabled_refuses_demo_configuration(overrides: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match="demo_enabled is false") as refused:
        load_settings(demo_enabled=False, **overrides)
    assert named in refused.value.message


def test_demo_disabled_in_a_yaml_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "spool.yaml"
    path.write_text("demo_enabled: false\nmodels:\n  fast:\n    provider: demo\n")
    monkeypatch.setenv("SPOOL_CONFIG", str(path))
    with pytest.raises(ConfigError, match=r"models\.fast use provider: demo"):
        load_settings()
    # The environment may turn it back on, and then the entry is fine.
    monkeypatch.setenv("SPOOL_DEMO_ENABLED", "true")
    assert set(load_settings().models) == {"demo", "fast"}


# -- passthrough -----------------------------------------------------------------------


def test_no_passthrough_refuses_provider_names() -> None:
    settings = load_settings(passthrough=[])
    message = not_found(settings, "openai/gpt-4o-mini")
    assert "pass-through of 'openai/gpt-4o-mini' to openai is not allowed" in message
    assert "not allowed" in not_found(settings, "demo/x")
    # Table entries are not pass-through, whatever their name.
    assert resolve_model(settings, "demo", ANONYMOUS).provider == "demo"


def test_passthrough_patterns_match_the_whole_name() -> None:
    settings = load_settings(passthrough=["openai/gpt-4o-mini", "openai/o3*"])
    entry = resolve_model(settings, "openai/gpt-4o-mini", ANONYMOUS)
    assert (entry.provider, entry.model, entry.api_key_env) == (
        "openai",
        "gpt-4o-mini",
        "OPENAI_API_KEY",
    )
    assert resolve_model(settings, "openai/o3-mini", ANONYMOUS).model == "o3-mini"
    for refused in ("openai/gpt-4o", "openai/gpt-4o-mini-2", "openai/GPT-4o-mini", "demo/x"):
        assert "not allowed" in not_found(settings, refused)


def test_a_bare_provider_allows_all_of_its_models() -> None:
    settings = load_settings(passthrough=["openai"])
    assert resolve_model(settings, "openai/anything", ANONYMOUS).model == "anything"
    assert "not allowed" in not_found(settings, "demo/x")


def test_passthrough_from_the_environment_is_comma_separated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SPOOL_PASSTHROUGH", "openai/gpt-4o*, demo")
    assert load_settings().passthrough == ["openai/gpt-4o*", "demo"]
    monkeypatch.setenv("SPOOL_PASSTHROUGH", "")
    assert load_settings().passthrough == []


@pytest.mark.parametrize("entry", ["*", "*/*", "anthropic/*", "gemini", "open*/gpt"])
def test_passthrough_must_name_a_provider_that_passes_through(entry: str) -> None:
    with pytest.raises(ConfigError, match="must start with a provider"):
        load_settings(passthrough=[entry])


def test_unknown_providers_and_names_are_unknown_models() -> None:
    settings = load_settings(passthrough=["openai"])
    for name in ("nope", "anthropic/claude", "openai/", "/x"):
        assert not_found(settings, name) == f"the model {name!r} does not exist"


# -- keys limited to models --------------------------------------------------------------


def test_a_key_without_a_list_may_use_any_model() -> None:
    assert ApiKey(id="k", name="k").may_use("anything")
    assert ANONYMOUS.may_use("anything")


def test_a_key_list_holds_exact_names_and_patterns() -> None:
    key = ApiKey(id="k", name="k", models=("demo", "gpt-4o*"))
    assert key.may_use("demo") and key.may_use("gpt-4o") and key.may_use("gpt-4o-mini")
    assert not key.may_use("demo/x") and not key.may_use("claude") and not key.may_use("Demo")
    assert not ApiKey(id="k", name="k", models=()).may_use("demo")


def test_a_limited_key_hears_the_same_for_existing_and_unknown_models() -> None:
    settings = load_settings(models={"gpt": UPSTREAM}, passthrough=["openai", "demo"])
    key = ApiKey(id="k", name="k", models=("demo",))
    assert resolve_model(settings, "demo", key).provider == "demo"
    answers = {not_found(settings, name, key).replace(repr(name), "<name>") for name in (
        "gpt", "nope", "openai/gpt-4o", "demo/x",
    )}  # fmt: skip
    assert answers == {"the model <name> does not exist or this key may not use it"}


def test_a_key_may_be_allowed_passthrough_names() -> None:
    settings = load_settings(passthrough=["openai"])
    key = ApiKey(id="k", name="k", models=("openai/gpt-4o*",))
    assert resolve_model(settings, "openai/gpt-4o-mini", key).model == "gpt-4o-mini"
    assert "this key may not use it" in not_found(settings, "openai/o3", key)
    # The key's list does not widen what the deployment allows.
    assert "not allowed" in not_found(load_settings(), "openai/gpt-4o", key)


def test_a_limited_key_and_task_models() -> None:
    settings = load_settings(task_models={"flux": QUEUE_HTTP})
    key = ApiKey(id="k", name="k", models=("flux",))
    assert resolve_task_model(settings, task("flux"), key).provider == "queue_http"
    with pytest.raises(ModelNotFound, match="this key may not use it"):
        resolve_task_model(settings, task("demo"), key)


def test_key_models_round_trip_through_the_hash() -> None:
    raw = {b"id": b"key_1", b"name": b"n", b"models": b'["demo", "gpt-4o*"]'}
    assert ApiKey.from_hash(raw).models == ("demo", "gpt-4o*")
    assert ApiKey.from_hash({b"id": b"key_1", b"name": b"n"}).models is None
