"""Unit tests for shared/settings.py: defaults, YAML file, environment and flag precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.errors import ConfigError
from shared.model_table import ModelEntry
from shared.settings import DEFAULT_MODELS, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No SPOOL_* / REDIS_URL variable from the outer environment leaks into a test."""
    for name in list(os.environ):
        if name.upper().startswith("SPOOL_") or name.upper() == "REDIS_URL":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(tmp_path: Path, text: str, name: str = "spool.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


YAML = """
port: 9000
redis_url: redis://from-yaml:6379/0
keepalive_interval_s: 2.5
models:
  gpt-small:
    provider: openai
    model: gpt-4o-mini
    base_url: https://api.example.com/v1
    api_key_env: EXAMPLE_KEY
  fast-demo:
    provider: demo
    tokens_per_second: 0
    max_output_tokens: 7
"""


def test_defaults() -> None:
    s = load_settings()
    assert isinstance(s, Settings)
    assert set(s.models) == {"demo"}
    assert s.models["demo"].provider == "demo"
    assert s.models["demo"] == DEFAULT_MODELS["demo"]
    assert s.port == 8000
    assert s.host == "127.0.0.1"
    assert s.redis_url is None
    assert s.config is None


def test_yaml_file_adds_models_and_keeps_demo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path, YAML)
    monkeypatch.setenv("SPOOL_CONFIG", str(path))
    s = load_settings()
    assert set(s.models) == {"demo", "gpt-small", "fast-demo"}
    assert s.models["demo"].provider == "demo"
    small = s.models["gpt-small"]
    assert small == ModelEntry(
        provider="openai",
        model="gpt-4o-mini",
        base_url="https://api.example.com/v1",
        api_key_env="EXAMPLE_KEY",
        name="gpt-small",  # a lone upstream's deployment name is its public name
    )
    assert s.models["fast-demo"].tokens_per_second == 0
    assert s.models["fast-demo"].max_output_tokens == 7
    assert s.port == 9000
    assert s.redis_url == "redis://from-yaml:6379/0"
    assert s.keepalive_interval_s == 2.5
    assert s.config == path


def test_yaml_may_override_the_demo_entry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  demo:\n    provider: demo\n    tokens_per_second: 5\n")
    monkeypatch.setenv("SPOOL_CONFIG", str(path))
    s = load_settings()
    assert s.models["demo"].tokens_per_second == 5


def test_config_path_as_flag(tmp_path: Path) -> None:
    path = write(tmp_path, YAML)
    s = load_settings(config=path)
    assert "gpt-small" in s.models
    assert s.port == 9000


def test_config_flag_beats_config_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = write(tmp_path, "port: 1111\n", "env.yaml")
    flag_file = write(tmp_path, "port: 2222\n", "flag.yaml")
    monkeypatch.setenv("SPOOL_CONFIG", str(env_file))
    assert load_settings(config=str(flag_file)).port == 2222


def test_empty_yaml_file_means_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOOL_CONFIG", str(write(tmp_path, "")))
    s = load_settings()
    assert set(s.models) == {"demo"}
    assert s.port == 8000


def test_environment_beats_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOOL_CONFIG", str(write(tmp_path, YAML)))
    monkeypatch.setenv("SPOOL_PORT", "9100")
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/1")
    s = load_settings()
    assert s.port == 9100
    assert s.redis_url == "redis://from-env:6379/1"
    # Values the environment does not set still come from the file.
    assert s.keepalive_interval_s == 2.5
    assert "gpt-small" in s.models


def test_spool_redis_url_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOOL_REDIS_URL", "redis://alias:6379/2")
    assert load_settings().redis_url == "redis://alias:6379/2"


def test_environment_without_yaml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOOL_PORT", "8123")
    monkeypatch.setenv("SPOOL_LOG_LEVEL", "debug")
    s = load_settings()
    assert s.port == 8123
    assert s.log_level == "debug"


def test_flags_beat_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOOL_CONFIG", str(write(tmp_path, YAML)))
    monkeypatch.setenv("SPOOL_PORT", "9100")
    monkeypatch.setenv("REDIS_URL", "redis://from-env:6379/1")
    s = load_settings(port=9200, redis_url="redis://from-flag:6379/3", host="0.0.0.0")
    assert s.port == 9200
    assert s.redis_url == "redis://from-flag:6379/3"
    assert s.host == "0.0.0.0"


def test_none_overrides_are_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOOL_CONFIG", str(write(tmp_path, YAML)))
    monkeypatch.setenv("SPOOL_PORT", "9100")
    s = load_settings(port=None, redis_url=None, host=None, config=None)
    assert s.port == 9100
    assert s.redis_url == "redis://from-yaml:6379/0"
    assert s.host == "127.0.0.1"
    assert "gpt-small" in s.models


def test_none_overrides_without_env_give_defaults() -> None:
    s = load_settings(port=None, redis_url=None)
    assert s.port == 8000
    assert s.redis_url is None


def test_invalid_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "models: [unclosed\nport: :\n")
    monkeypatch.setenv("SPOOL_CONFIG", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "not valid YAML" in info.value.message
    assert str(path) in info.value.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_non_mapping_top_level(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, text: str) -> None:
    path = write(tmp_path, text)
    monkeypatch.setenv("SPOOL_CONFIG", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "mapping" in info.value.message
    assert str(path) in info.value.message


def test_unknown_provider(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  claude:\n    provider: bedrock\n")
    monkeypatch.setenv("SPOOL_CONFIG", str(path))
    with pytest.raises(ConfigError) as info:
        load_settings()
    message = info.value.message
    assert "invalid settings" in message
    assert "claude" in message
    assert "provider" in message
    assert "openai" in message  # the allowed values are named


def test_unknown_model_field(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path, "models:\n  x:\n    provider: demo\n    tokens_per_minute: 3\n")
    monkeypatch.setenv("SPOOL_CONFIG", str(path))
    with pytest.raises(ConfigError, match="tokens_per_minute"):
        load_settings()


def test_unknown_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOOL_CONFIG", str(write(tmp_path, "port: 9000\nbogus_setting: 1\n")))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "bogus_setting" in info.value.message


def test_unknown_setting_as_flag() -> None:
    with pytest.raises(ConfigError, match="no_such_flag"):
        load_settings(no_such_flag=1)


def test_invalid_value_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOOL_PORT", "not-a-port")
    with pytest.raises(ConfigError, match="port"):
        load_settings()


def test_out_of_range_value_in_yaml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("SPOOL_CONFIG", str(write(tmp_path, "port: 70000\n")))
    with pytest.raises(ConfigError, match="port"):
        load_settings()


def test_missing_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "does-not-exist.yaml"
    monkeypatch.setenv("SPOOL_CONFIG", str(missing))
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert "cannot read" in info.value.message
    assert str(missing) in info.value.message


def test_missing_config_file_as_flag(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(config=tmp_path / "nope.yaml")


def test_model_entry_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPOOL_UNIT_KEY", "sk-1")
    assert ModelEntry(provider="openai", api_key_env="SPOOL_UNIT_KEY").api_key() == "sk-1"
    assert ModelEntry(provider="openai", api_key_env="SPOOL_UNIT_MISSING").api_key() is None
    assert ModelEntry(provider="openai").api_key() is None


def test_default_models_are_not_shared_between_settings() -> None:
    a = load_settings()
    a.models["extra"] = ModelEntry(provider="demo")
    b = load_settings()
    assert set(b.models) == {"demo"}
    assert set(DEFAULT_MODELS) == {"demo"}


def test_an_empty_redis_url_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "")
    assert load_settings().redis_url is None


def test_the_example_settings_file_loads() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "spool.example.yaml"
    settings = load_settings(config=str(example))
    assert settings.task_models["flux-dev"].queue_http is not None
    assert settings.task_models["flux-dev"].queue_http.id_field == "request_id"
    assert settings.task_models["musicgen"].kinds == ["audio"]
    assert set(settings.models) >= {"gpt-4o-mini", "claude-sonnet", "gemini-flash"}
    # The production example turns the demo models and pass-through off.
    assert not settings.demo_enabled and "demo" not in settings.models
    assert "demo" not in settings.task_models
    assert settings.passthrough == []


def test_a_queue_http_task_model_needs_its_section() -> None:
    with pytest.raises(ConfigError, match="queue_http"):
        load_settings(task_models={"x": {"provider": "queue_http", "base_url": "https://a"}})
