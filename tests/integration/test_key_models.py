"""Keys limited to a list of models, stored in and read back from a real redis-server."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from shared.auth import KeyStore
from shared.cli import build_parser


async def test_a_key_keeps_its_models(redis: Redis) -> None:
    store = KeyStore(redis)
    secret, created = await store.create("limited", rpm=5, models=("demo", "gpt-4o*"))
    found = await store.lookup(secret)
    assert found is not None and found == created
    assert found.models == ("demo", "gpt-4o*") and found.rpm == 5
    assert found.may_use("gpt-4o-mini") and not found.may_use("claude")
    unlimited_secret, _ = await store.create("any")
    unlimited = await store.lookup(unlimited_secret)
    assert unlimited is not None and unlimited.models is None
    assert [k.models for k in await store.list()] == [("demo", "gpt-4o*"), None]


async def test_empty_model_names_are_refused(redis: Redis) -> None:
    with pytest.raises(ValueError, match="must not be empty"):
        await KeyStore(redis).create("broken", models=("demo", " "))


def test_the_cli_takes_a_comma_separated_list() -> None:
    parser = build_parser()
    args = parser.parse_args(["keys", "create", "--name", "n", "--models", "demo, gpt-4o*,"])
    assert args.models == ("demo", "gpt-4o*")
    assert parser.parse_args(["keys", "create", "--name", "n"]).models is None
    with pytest.raises(SystemExit):
        parser.parse_args(["keys", "create", "--name", "n", "--models", " , "])
