"""The artifact store: task outputs as files under one root directory.

Workers write them and API replicas serve them, so with several hosts the root must be a
shared volume. Files are written to a temporary name and renamed into place, so a reader
never sees half a file. A task's directory is removed once its task record has expired.

Outputs are served from Spool's own origin (or from `artifacts_base_url`, by file name), so
only media types a browser cannot run script from keep their type and extension; anything
else (HTML, SVG, XML, unknown types) is named `.bin` and served as a download.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import mimetypes
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, TYPE_CHECKING

from shared.errors import SpoolError

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

log = logging.getLogger(__name__)

TASK_ID = re.compile(r"^[0-9a-f]{32}\Z")  # \Z: "$" would let a trailing newline through
# A task directory younger than this is never swept, whatever Redis says: it may belong to
# a task whose record another process is still creating or has just read.
SWEEP_MIN_AGE_S = 60.0
DOWNLOAD_TYPE = "application/octet-stream"
# The media types an output is served as (inline), each with its file extension.
SERVED_TYPES = {
    "image/png": ".png",
    "image/jpeg": ".jpg",
    "image/gif": ".gif",
    "image/webp": ".webp",
    "image/avif": ".avif",
    "audio/wav": ".wav",
    "audio/mpeg": ".mp3",
    "audio/ogg": ".oga",
    "audio/flac": ".flac",
    "audio/aac": ".aac",
    "audio/webm": ".weba",
    "video/mp4": ".mp4",
    "video/webm": ".webm",
    "video/quicktime": ".mov",
    "video/ogg": ".ogv",
}
# Other names upstreams give the same types.
_ALIASES = {
    "image/jpg": "image/jpeg",
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-flac": "audio/flac",
}
# How outputs stored before the list above were named (so they can still be found).
_EARLIER_EXTENSIONS = {
    "image/png": ".png",
    "image/gif": ".gif",
    "audio/wav": ".wav",
    "video/mp4": ".mp4",
}


class OutputTooLarge(SpoolError):
    """A task output is larger than `max_output_bytes`."""

    code = "output_too_large"


class _Abandoned(Exception):
    """The write of an output was given up (its task was cancelled)."""


class _OutputFile(io.BufferedWriter):
    """The file a writer function fills: it counts what it is given, refuses anything past
    `limit` bytes, and stops the writer at its next write once `stop` is set."""

    def __init__(self, raw: io.FileIO, limit: int, stop: threading.Event) -> None:
        super().__init__(raw)
        self.limit = limit
        self.stop = stop
        self.size = 0

    def write(self, buffer: ReadableBuffer, /) -> int:
        if self.stop.is_set():
            raise _Abandoned
        self.size += memoryview(buffer).nbytes
        if self.size > self.limit:
            raise OutputTooLarge(f"the output is larger than {self.limit} bytes")
        return super().write(buffer)

    def fileno(self) -> int:
        # Without a descriptor, encoders that would write to one (Pillow's) call `write`.
        raise io.UnsupportedOperation("fileno")


def _essence(media_type: str) -> str:
    """The type and subtype alone: parameters dropped, lower-cased."""
    return media_type.split(";", 1)[0].strip().lower()


def served_type(media_type: str | None) -> str | None:
    """The allow-listed type an output of `media_type` is served as (inline), or None when
    it may only be downloaded (as `DOWNLOAD_TYPE`). Parameters are never passed on."""
    if not media_type:
        return None
    essence = _essence(media_type)
    essence = _ALIASES.get(essence, essence)
    return essence if essence in SERVED_TYPES else None


def extension_for(media_type: str | None) -> str:
    served = served_type(media_type)
    return SERVED_TYPES[served] if served else ".bin"


def _earlier_extension(media_type: str | None) -> str:
    if not media_type:
        return ".bin"
    essence = _essence(media_type)
    return _EARLIER_EXTENSIONS.get(essence) or mimetypes.guess_extension(essence) or ".bin"


class ArtifactStore:
    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def name(self, index: int, media_type: str | None) -> str:
        return f"{index}{extension_for(media_type)}"

    def names(self, index: int, media_type: str | None) -> list[str]:
        """Where an output may be kept: its name, then the name outputs stored before the
        served types were restricted had, if that differs."""
        name = self.name(index, media_type)
        earlier = f"{index}{_earlier_extension(media_type)}"
        return [name] if earlier == name else [name, earlier]

    def path(self, task_id: str, name: str) -> Path:
        if not TASK_ID.match(task_id) or "/" in name or name.startswith("."):
            raise ValueError("not an artifact name")
        return self.root / task_id / name

    async def write_bytes(self, task_id: str, name: str, data: bytes) -> int:
        if len(data) > self.max_bytes:
            raise OutputTooLarge(f"the output is {len(data)} bytes; at most {self.max_bytes}")

        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.write_stream(task_id, name, one())

    async def write_stream(self, task_id: str, name: str, chunks: AsyncIterator[bytes]) -> int:
        """Write an output from chunks; returns its size. Stops (and leaves nothing) past
        `max_bytes`."""
        final = self.path(task_id, name)
        await asyncio.to_thread(final.parent.mkdir, parents=True, exist_ok=True)
        partial = final.with_name(f".{name}.{uuid.uuid4().hex}.part")
        size = 0
        out = await asyncio.to_thread(partial.open, "wb")
        try:
            try:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise OutputTooLarge(f"the output is larger than {self.max_bytes} bytes")
                    await asyncio.to_thread(out.write, chunk)
                await asyncio.to_thread(out.flush)
                await asyncio.to_thread(os.fsync, out.fileno())
            finally:
                await asyncio.to_thread(out.close)
            await asyncio.to_thread(os.replace, partial, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return size

    async def write_with(self, task_id: str, name: str, write: Callable[[IO[bytes]], None]) -> int:
        """Write an output by calling `write` (in a worker thread) with the file to fill, so
        an output made here goes to disk a piece at a time instead of whole through memory;
        returns its size. Stops (and leaves nothing) past `max_bytes`, or when cancelled."""
        final = self.path(task_id, name)
        stop = threading.Event()
        job = asyncio.ensure_future(asyncio.to_thread(self._write_with, final, write, stop))
        try:
            return await asyncio.shield(job)
        except asyncio.CancelledError:
            stop.set()
            # The writer gives up at its next write; waiting for it leaves nothing behind.
            with contextlib.suppress(Exception):
                await job
            raise

    def _write_with(
        self, final: Path, write: Callable[[IO[bytes]], None], stop: threading.Event
    ) -> int:
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_name(f".{final.name}.{uuid.uuid4().hex}.part")
        try:
            raw = io.FileIO(partial, "w")
            with _OutputFile(raw, self.max_bytes, stop) as out:
                write(out)
                out.flush()
                os.fsync(raw.fileno())
                size = out.size
            if stop.is_set():
                raise _Abandoned
            os.replace(partial, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
        return size

    async def sweep(self, task_exists: Callable[[str], Awaitable[bool]]) -> int:
        """Remove the outputs of every task whose record has expired; returns how many
        task directories went."""
        removed = 0
        try:
            entries = await asyncio.to_thread(lambda: list(os.scandir(self.root)))
        except FileNotFoundError:
            return 0
        now = time.time()
        for entry in entries:
            if not (TASK_ID.match(entry.name) and entry.is_dir(follow_symlinks=False)):
                continue
            try:
                age = now - entry.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if age < SWEEP_MIN_AGE_S or await task_exists(entry.name):
                continue
            await asyncio.to_thread(shutil.rmtree, entry.path, ignore_errors=True)
            removed += 1
        if removed:
            log.info("removed the outputs of %d expired tasks", removed)
        return removed
