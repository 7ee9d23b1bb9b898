"""Unit tests for shared/redis/address.py: the plain and Sentinel forms of REDIS_URL."""

from __future__ import annotations

import re

import pytest

from shared.errors import ConfigError
from shared.redis.address import ClusterAddress, SentinelAddress, parse_redis_url
from shared.settings import load_settings


@pytest.mark.parametrize(
    "url",
    ["redis://localhost:6379/0", "rediss://u:p@redis.example:6380/2", "unix:///tmp/redis.sock"],
)
def test_plain_urls_pass_through(url: str) -> None:
    assert parse_redis_url(url) == url


def test_sentinel_url_with_every_part() -> None:
    address = parse_redis_url(
        "redis+sentinel://app:s%40cret@s1.example:26380,10.0.0.2,[::1]:5000/my%20master/3"
        "?sentinel_password=sp&sentinel_username=su"
    )
    assert address == SentinelAddress(
        sentinels=(("s1.example", 26380), ("10.0.0.2", 26379), ("::1", 5000)),
        service="my master",
        db=3,
        username="app",
        password="s@cret",
        sentinel_username="su",
        sentinel_password="sp",
    )
    # What goes to logs holds no secret.
    assert "cret" not in address.describe() and "sp" not in address.describe().split("?")[-1]


def test_sentinel_url_defaults_and_password_alone() -> None:
    assert parse_redis_url("REDIS+SENTINEL://:pw@h/mymaster") == SentinelAddress(
        sentinels=(("h", 26379),), service="mymaster", password="pw"
    )
    assert parse_redis_url("redis+sentinel://pw@h:1/m/") == SentinelAddress(
        sentinels=(("h", 1),), service="m", password="pw"
    )


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:6379", "must start with a scheme"),
        ("http://localhost:6379", "unknown Redis URL scheme"),
        ("redis+sentinel://h1:26379", "must name the primary's service"),
        ("redis+sentinel://h1:26379/", "must name the primary's service"),
        ("redis+sentinel://h1:26379/m/0/extra", "path is /service or /service/db"),
        ("redis+sentinel://h1:26379/m/zero", "must be a number"),
        ("redis+sentinel://h1:99999/m", "no valid port"),
        ("redis+sentinel://h1:port/m", "no valid port"),
        ("redis+sentinel://h1,,h2/m", "at least one host"),
        ("redis+sentinel://:1/m", "cannot read the address"),
        ("redis+sentinel://[::1/m", "cannot read the address"),
        ("redis+sentinel://h/m?password=x", "unknown redis+sentinel:// option(s): password"),
    ],
)
def test_bad_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_redis_url(url)


def test_settings_refuse_a_bad_url_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://h1:26379")
    with pytest.raises(ConfigError, match="must name the primary's service"):
        load_settings()
    monkeypatch.setenv("REDIS_URL", "redis+sentinel://h1,h2/mymaster/1")
    assert load_settings().redis_url == "redis+sentinel://h1,h2/mymaster/1"


def test_cluster_urls() -> None:
    assert parse_redis_url(
        "redis+cluster://:pw@10.0.0.1:7000,10.0.0.2,[::1]:7002"
    ) == ClusterAddress(
        nodes=(("10.0.0.1", 7000), ("10.0.0.2", 6379), ("::1", 7002)), password="pw"
    )
    for bad, says in [
        ("redis+cluster://h:7000/0", "a cluster has no database"),
        ("redis+cluster://h:7000?x=1", "a cluster has no database"),
        ("redis+cluster://", "at least one host"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_redis_url(bad)


def test_a_cluster_needs_a_queue_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+cluster://h1:7000,h2:7001")
    with pytest.raises(ConfigError, match="SPOOL_QUEUE_URL"):
        load_settings()
    monkeypatch.setenv("SPOOL_QUEUE_URL", "redis+cluster://h1:7000")
    with pytest.raises(ConfigError, match="cannot be a Redis Cluster"):
        load_settings()
    monkeypatch.setenv("SPOOL_QUEUE_URL", "redis+sentinel://s1/mymaster/0")
    settings = load_settings()
    assert settings.control_url == "redis+sentinel://s1/mymaster/0"
    monkeypatch.delenv("REDIS_URL")
    monkeypatch.delenv("SPOOL_QUEUE_URL")
    monkeypatch.setenv("REDIS_URL", "redis://one:6379/0")
    assert load_settings().control_url == "redis://one:6379/0"
