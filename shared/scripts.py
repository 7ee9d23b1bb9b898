"""Spool's Lua scripts, one file each under `shared/lua/` with a header naming its keys and
arguments; `--@include <file>` lines pull in shared fragments (the clock, slot release)."""

from __future__ import annotations

import functools
from pathlib import Path

from redis.asyncio import Redis, RedisCluster

from shared.redis.lean import Script

SCRIPT_DIR = Path(__file__).with_name("lua")
INCLUDE = "--@include "


@functools.cache
def source(name: str) -> str:
    """The script `name` (`shared/lua/<name>.lua`) with its includes expanded and its
    comment lines dropped (they are for readers, not for Redis)."""
    lines: list[str] = []
    for line in (SCRIPT_DIR / f"{name}.lua").read_text(encoding="utf-8").splitlines():
        if line.startswith(INCLUDE):
            lines.append(source(line.removeprefix(INCLUDE).strip().removesuffix(".lua")))
        elif not line.lstrip().startswith("--"):
            lines.append(line)
    return "\n".join(lines) + "\n"


def register(redis: Redis | RedisCluster, name: str) -> Script:
    """The script, run by EVALSHA (by EVAL when Redis has lost it, which loads it again)."""
    return Script(redis, source(name))
