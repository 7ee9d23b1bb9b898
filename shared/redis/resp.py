"""Packs commands into the Redis protocol (RESP) for the multiplexed connection: the same
bytes redis-py's connection would write, in fewer steps (every command a job sends is packed
here, so this is on the hot path of both processes).

Arguments follow redis-py's rules: bytes and memoryviews as they are, str encoded, int and
float by `repr`, a bool or any other type refused with `DataError`; a first argument with
spaces ("CLIENT SETNAME") is split into words.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from redis.exceptions import DataError


class Packer:
    """Packs with one connection's string encoding."""

    __slots__ = ("encoding", "errors")

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        self.encoding = encoding
        self.errors = errors

    def command(self, args: tuple[Any, ...]) -> bytes:
        """One command as one bytes object."""
        head = args[0]
        if (isinstance(head, str) and " " in head) or (isinstance(head, bytes) and b" " in head):
            args = (*head.split(), *args[1:])
        parts = [b"*%d\r\n" % len(args)]
        append = parts.append
        encoding, errors = self.encoding, self.errors
        for arg in args:
            kind = type(arg)
            if kind is bytes:
                data = arg
            elif kind is str:
                data = arg.encode(encoding, errors)
            elif kind is int or kind is float:
                data = repr(arg).encode()
            else:
                data = _other(arg, encoding, errors)
            append(b"$%d\r\n" % len(data))
            append(data)
            append(b"\r\n")
        return b"".join(parts)

    def commands(self, commands: Iterable[Iterable[Any]]) -> tuple[bytes, int]:
        """Several commands as one bytes object, and how many there are."""
        packed = [self.command(tuple(c)) for c in commands]
        return b"".join(packed), len(packed)


def _other(arg: Any, encoding: str, errors: str) -> bytes:
    """The arguments of less common types (subclasses included), as redis-py encodes them."""
    if isinstance(arg, bool):
        raise DataError(
            "Invalid input of type: 'bool'. Convert to a bytes, string, int or float first."
        )
    if isinstance(arg, (bytes, memoryview)):
        return bytes(arg)
    if isinstance(arg, (int, float)):
        return repr(arg).encode()
    if isinstance(arg, str):
        return arg.encode(encoding, errors)
    raise DataError(
        f"Invalid input of type: '{type(arg).__name__}'. "
        "Convert to a bytes, string, int or float first."
    )
