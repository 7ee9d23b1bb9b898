"""The RESP packer writes what redis-py's own connection writes, and refuses what it refuses."""

from __future__ import annotations

import enum
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection
from redis.exceptions import DataError

from shared.redis.resp import Packer

REDIS_PY = Connection()


class Level(enum.IntEnum):
    HIGH = 3


class Kind(enum.StrEnum):
    TEXT = "text"


def redis_py(*args: Any) -> bytes:
    return b"".join(bytes(chunk) for chunk in REDIS_PY.pack_command(*args))


ARGS = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
)


@given(st.lists(ARGS, min_size=1, max_size=12))
def test_packs_what_redis_py_packs(args: list[Any]) -> None:
    assert Packer().command(("EVALSHA", *args)) == redis_py("EVALSHA", *args)


@pytest.mark.parametrize(
    "args",
    [
        ("CLIENT SETNAME", "spool"),
        (b"CLIENT SETNAME", b"spool"),
        ("SET", "k", "é ü 日本", "PX", 86400000),
        ("XADD", "s", "MAXLEN", "~", 10000, "*", "e", memoryview(b'{"type":"text"}')),
        ("SET", "big", b"x" * 100_000),
        ("GET", "k"),
        # Types hiredis' packer refuses or packs otherwise: redis-py's rules apply.
        ("SET", Level.HIGH, Kind.TEXT, 2**80, -0.0, 1e-7),
    ],
)
def test_examples(args: tuple[Any, ...]) -> None:
    assert Packer().command(args) == redis_py(*args)


def test_several_commands_and_their_count() -> None:
    data, count = Packer().commands([["MULTI"], ("GET", "k"), ["INCRBY", "n", 1], ["EXEC"]])
    assert count == 4
    assert data == redis_py("MULTI") + redis_py("GET", "k") + redis_py("INCRBY", "n", 1) + (
        redis_py("EXEC")
    )


@pytest.mark.parametrize("bad", [True, None, object(), [1], {"a": 1}, bytearray(b"x")])
def test_refuses_what_redis_py_refuses(bad: Any) -> None:
    with pytest.raises(DataError):
        REDIS_PY.pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        Packer().command(("SET", "k", bad))


def test_the_connections_encoding() -> None:
    assert (
        Packer("latin-1").command(("SET", "k", "é"))
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n\xe9\r\n"
    )
    with pytest.raises(UnicodeEncodeError):
        Packer("ascii").command(("SET", "k", "é"))
    assert Packer("ascii", "replace").command(("SET", "k", "é")).endswith(b"$1\r\n?\r\n")


def test_the_c_packer_and_the_python_one_agree() -> None:
    python_only = Packer()
    python_only.in_c = None
    for args in [("EVALSHA", "a" * 40, 2, "k1", b"k2", 10_000, 1.5), ("SET", "k", "é", "PX", 1)]:
        assert Packer().command(args) == python_only.command(args) == redis_py(*args)
    assert Packer().in_c is not None  # UTF-8, strict: packed in C
