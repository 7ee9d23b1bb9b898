"""Packs commands into the Redis protocol (RESP) for the multiplexed connection: the same
bytes redis-py's connection would write, in fewer steps (every command a job sends is packed
here, so this is on the hot path of both processes).

Arguments follow redis-py's rules: bytes and memoryviews as they are, str encoded, int and
float by `repr`, a bool or any other type refused with `DataError`; a first argument with
spaces ("CLIENT SETNAME") is split into words. With UTF-8 (redis-py's default encoding),
hiredis' packer (C) packs what it takes, which gives the same bytes; what it refuses (a
bool, an enum, any other type) is packed, or refused, here.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable
from typing import Any

import hiredis
from redis.exceptions import DataError

_pack_in_c = getattr(hiredis, "pack_command", None)


class Packer:
    """Packs with one connection's string encoding."""

    __slots__ = ("encoding", "errors", "in_c")

    def __init__(self, encoding: str = "utf-8", errors: str = "strict") -> None:
        self.encoding = encoding
        self.errors = errors
        self.in_c = (
            _pack_in_c if codecs.lookup(encoding).name == "utf-8" and errors == "strict" else None
        )

    def command(self, args: tuple[Any, ...]) -> bytes:
        """One command as one bytes object."""
        head = args[0]
        if (isinstance(head, str) and " " in head) or (isinstance(head, bytes) and b" " in head):
            args = (*head.split(), *args[1:])
        if self.in_c is not None:
            try:
                packed: bytes = self.in_c(args)
                return packed
            except TypeError:
                pass  # a type hiredis does not take: redis-py's rules below
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
