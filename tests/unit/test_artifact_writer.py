"""Unit tests for `ArtifactStore.write_with` (shared/artifacts.py): outputs made on the worker,
written into their file a piece at a time by a function, under the same rules as any other
output (all or nothing, at most `max_bytes`)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
from PIL import Image

from shared.artifacts import ArtifactStore, OutputTooLarge


@pytest.fixture
def artifacts(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "artifacts", max_bytes=1024)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def pieces(*parts: bytes) -> Callable[[IO[bytes]], None]:
    def write(out: IO[bytes]) -> None:
        for part in parts:
            out.write(part)

    return write


async def test_round_trip(artifacts: ArtifactStore) -> None:
    task_id = uuid.uuid4().hex
    size = await artifacts.write_with(task_id, "0.wav", pieces(b"RIFF", b"", b"x" * 1020))
    assert size == 1024  # exactly max_bytes is allowed
    assert artifacts.path(task_id, "0.wav").read_bytes() == b"RIFF" + b"x" * 1020
    # A second write replaces the file whole.
    assert await artifacts.write_with(task_id, "0.wav", pieces(b"new")) == 3
    assert artifacts.path(task_id, "0.wav").read_bytes() == b"new"
    assert leftovers(artifacts.root / task_id) == ["0.wav"]


async def test_too_large_leaves_nothing_and_keeps_the_earlier_file(
    artifacts: ArtifactStore,
) -> None:
    task_id = uuid.uuid4().hex
    with pytest.raises(OutputTooLarge):
        await artifacts.write_with(task_id, "0.gif", pieces(b"a" * 1000, b"b" * 100))
    assert leftovers(artifacts.root / task_id) == []
    await artifacts.write_with(task_id, "0.gif", pieces(b"old"))
    with pytest.raises(OutputTooLarge):
        await artifacts.write_with(task_id, "0.gif", pieces(b"a" * 2000))
    assert artifacts.path(task_id, "0.gif").read_bytes() == b"old"
    assert leftovers(artifacts.root / task_id) == ["0.gif"]


async def test_encoders_cannot_write_past_the_bound(artifacts: ArtifactStore) -> None:
    # Pillow writes straight to a file descriptor when it finds one; the file offers none, so
    # everything goes through the counted `write`.
    noise = Image.effect_noise((256, 256), 100)
    with pytest.raises(OutputTooLarge):
        await artifacts.write_with(uuid.uuid4().hex, "0.png", lambda out: noise.save(out, "PNG"))


async def test_a_failing_writer_leaves_nothing(artifacts: ArtifactStore) -> None:
    task_id = uuid.uuid4().hex

    def broken(out: IO[bytes]) -> None:
        out.write(b"half")
        raise RuntimeError("encoder broke")

    with pytest.raises(RuntimeError, match="encoder broke"):
        await artifacts.write_with(task_id, "0.png", broken)
    assert leftovers(artifacts.root / task_id) == []


async def test_cancelling_stops_the_writer_and_leaves_nothing(tmp_path: Path) -> None:
    artifacts = ArtifactStore(tmp_path, max_bytes=1024**3)
    task_id = uuid.uuid4().hex
    started, ended = threading.Event(), threading.Event()

    def endless(out: IO[bytes]) -> None:
        try:
            while True:
                out.write(b"frame")
                started.set()
                time.sleep(0.005)
        finally:
            ended.set()

    write = asyncio.create_task(artifacts.write_with(task_id, "0.gif", endless))
    assert await asyncio.to_thread(started.wait, 5)
    write.cancel()
    with pytest.raises(asyncio.CancelledError):
        await write
    # The call returns once the writer has given up, and nothing of it is left.
    assert ended.is_set()
    assert leftovers(tmp_path / task_id) == []
