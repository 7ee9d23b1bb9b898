"""Unit tests for worker/task_providers/demo.py: the keyless demo model for asset tasks."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import itertools
import random
import time
import tracemalloc
import uuid
import wave
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops, ImageSequence, ImageStat

from shared.artifacts import ArtifactStore
from shared.errors import InvalidRequest
from shared.settings import TaskModelEntry
from shared.tasks import TaskSpec
from worker.task_providers import MediaOutput, demo
from worker.task_providers.demo import DemoTaskProvider, _output

ENTRY = TaskModelEntry(provider="demo")


def spec(kind: str = "image", **inp: object) -> TaskSpec:
    body = {"prompt": "a cat", "duration_s": 0, **inp}
    return TaskSpec.model_validate({"kind": kind, "model": "demo", "input": body})


class Recorder:
    def __init__(self) -> None:
        self.steps: list[tuple[float, str | None]] = []

    async def progress(self, fraction: float, message: str | None = None) -> None:
        self.steps.append((fraction, message))


def encode(output: MediaOutput) -> bytes:
    """The file the output's writer makes."""
    assert output.write is not None
    buffer = io.BytesIO()
    output.write(buffer)
    return buffer.getvalue()


async def run_one(task: TaskSpec, report: Recorder | None = None) -> MediaOutput:
    """The run's one output, with the file its writer makes as its `data`."""
    outputs = await DemoTaskProvider().run(task, ENTRY, report or Recorder())
    assert len(outputs) == 1
    out = outputs[0]
    assert out.write is not None and out.data is None and out.url is None
    return dataclasses.replace(out, data=encode(out), write=None)


def open_image(data: bytes) -> Image.Image:
    Image.open(io.BytesIO(data)).verify()
    return Image.open(io.BytesIO(data))


def test_name() -> None:
    assert DemoTaskProvider.name == "demo"


async def test_image_is_a_png_of_the_default_size() -> None:
    out = await run_one(spec("image"))
    assert out.data is not None
    image = open_image(out.data)
    assert image.format == "PNG"
    assert image.size == (512, 512)
    assert (out.media_type, out.width, out.height) == ("image/png", 512, 512)


async def test_image_takes_the_requested_size() -> None:
    out = await run_one(spec("image", width=320, height=200))
    assert out.data is not None
    assert open_image(out.data).size == (320, 200)
    assert (out.width, out.height) == (320, 200)


async def test_video_is_an_animated_gif() -> None:
    out = await run_one(spec("video", duration_s=0.3, fps=20))
    assert out.data is not None
    gif = open_image(out.data)
    assert gif.format == "GIF"
    assert gif.size == (256, 256)
    assert gif.is_animated
    assert gif.n_frames == 6
    assert gif.info["duration"] == 50
    assert gif.info["loop"] == 0
    assert out.media_type == "image/gif"
    assert (out.width, out.height, out.frames) == (256, 256, 6)
    assert out.duration_s == pytest.approx(0.3)


async def test_video_with_zero_duration_is_one_frame() -> None:
    out = await run_one(spec("video", width=64, height=48))
    assert out.data is not None
    gif = open_image(out.data)
    assert gif.format == "GIF"
    assert gif.size == (64, 48)
    assert gif.n_frames == 1
    assert out.frames == 1


async def test_tiny_slow_video_keeps_every_frame() -> None:
    # Far more frames than a 16-pixel ball has positions; the GIF must not merge any.
    task = spec("video", width=16, height=16, duration_s=30, fps=10)
    data = encode(_output(task))  # the encoding alone, without 30 s of pacing
    assert open_image(data).n_frames == 300


async def test_every_video_frame_shows_what_was_drawn() -> None:
    # Frames after the first only redraw what changed, the rest transparent; decoded in
    # order, every frame must still be the whole picture.
    task = spec("video", width=96, height=64, duration_s=1, fps=12)
    gif = open_image(encode(_output(task)))
    drawn = demo._animation(random.Random(demo._seed(task)), (96, 64), 12)
    decoded = (frame.convert("RGB") for frame in ImageSequence.Iterator(gif))
    for want, got in zip(drawn, decoded, strict=True):
        assert max(ImageStat.Stat(ImageChops.difference(want, got)).mean) < 1


class Sizes(io.BytesIO):
    """A file that notes the size of every write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[int] = []

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.writes.append(memoryview(data).nbytes)
        return super().write(data)


async def test_long_audio_is_written_in_pieces() -> None:
    out = _output(spec("audio", duration_s=20, sample_rate=16000))
    assert out.write is not None
    file = Sizes()
    out.write(file)
    longest_note = 2 * round(0.75 * 16000)
    assert len(file.writes) > 3
    assert max(file.writes) < demo.AUDIO_CHUNK_BYTES + longest_note
    with wave.open(io.BytesIO(file.getvalue()), "rb") as wav:
        assert (wav.getnframes(), wav.getframerate()) == (320_000, 16000)
    assert len(file.getvalue()) == 44 + 2 * 320_000


LARGEST = {
    "image": {"width": 1024, "height": 1024},
    "video": {"width": 512, "height": 512, "duration_s": 30, "fps": 10},
    # The longest tune; a lower rate than the highest keeps it quick under tracemalloc, and
    # its file is still 3.7 MiB, all of it written in 256 KiB pieces.
    "audio": {"duration_s": 120, "sample_rate": 16000},
}


@pytest.mark.parametrize("kind", ["image", "video", "audio"])
async def test_the_largest_outputs_are_written_in_bounded_memory(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pillow's pixels are not Python allocations, so video frames are counted separately: at
    # most the one being drawn and the one before it may be alive at once.
    frames: list[weakref.ref[Image.Image]] = []
    most_alive = 0
    animation = demo._animation

    def counted(*args: Any) -> Iterator[Image.Image]:
        nonlocal most_alive
        for frame in animation(*args):
            frames.append(weakref.ref(frame))
            most_alive = max(most_alive, sum(ref() is not None for ref in frames))
            yield frame
            del frame

    monkeypatch.setattr(demo, "_animation", counted)
    out = _output(spec(kind, **LARGEST[kind]))
    assert out.write is not None
    artifacts = ArtifactStore(tmp_path, max_bytes=1024**3)
    task_id = uuid.uuid4().hex
    tracemalloc.start()
    try:
        size = await artifacts.write_with(task_id, "0.out", out.write)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024
    data = artifacts.path(task_id, "0.out").read_bytes()
    assert len(data) == size
    if kind == "audio":
        assert size == 44 + 2 * 120 * 16000
        with wave.open(io.BytesIO(data), "rb") as wav:
            assert wav.getnframes() == 120 * 16000
    else:
        image = open_image(data)
        assert image.size == (1024, 1024) if kind == "image" else (512, 512)
    if kind == "video":
        assert open_image(data).n_frames == 300
        assert most_alive <= 2


async def test_audio_is_a_mono_16_bit_wav() -> None:
    out = await run_one(spec("audio", duration_s=0.25, sample_rate=16000))
    assert out.data is not None
    with wave.open(io.BytesIO(out.data), "rb") as wav:
        assert wav.getnchannels() == 1
        assert wav.getsampwidth() == 2
        assert wav.getframerate() == 16000
        assert abs(wav.getnframes() - 4000) <= 1
        pcm = wav.readframes(wav.getnframes())
    assert any(pcm)  # not silence
    assert out.media_type == "audio/wav"
    assert out.duration_s == pytest.approx(0.25, abs=1e-3)


async def test_audio_with_zero_duration_is_an_empty_wav() -> None:
    out = await run_one(spec("audio"))
    assert out.data is not None
    with wave.open(io.BytesIO(out.data), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, 22050)
        assert wav.getnframes() == 0
    assert out.duration_s == 0


SHORT = {
    "image": {},
    "video": {"duration_s": 0.1, "fps": 30},
    "audio": {"duration_s": 0.1},
}


@pytest.mark.parametrize("kind", ["image", "video", "audio"])
async def test_same_spec_gives_identical_bytes(kind: str) -> None:
    first = await run_one(spec(kind, **SHORT[kind]))
    second = await run_one(spec(kind, **SHORT[kind]))
    assert first.data == second.data


@pytest.mark.parametrize("kind", ["image", "video", "audio"])
async def test_different_prompt_gives_different_bytes(kind: str) -> None:
    cat = await run_one(spec(kind, prompt="a cat", **SHORT[kind]))
    dog = await run_one(spec(kind, prompt="a dog", **SHORT[kind]))
    assert cat.data != dog.data


async def test_seed_overrides_the_prompt() -> None:
    cat = await run_one(spec("image", prompt="a cat", seed=7))
    dog = await run_one(spec("image", prompt="a dog", seed=7))
    other = await run_one(spec("image", prompt="a cat", seed=8))
    assert cat.data == dog.data
    assert cat.data != other.data


@pytest.mark.parametrize("kind", ["image", "video", "audio"])
async def test_progress_rises_strictly_inside_zero_and_one(kind: str) -> None:
    report = Recorder()
    await run_one(spec(kind), report)
    fractions = [f for f, _ in report.steps]
    assert len(fractions) >= 5
    assert all(0 < f < 1 for f in fractions)
    assert all(a < b for a, b in itertools.pairwise(fractions))
    assert all(message for _, message in report.steps)


async def test_video_progress_names_frames() -> None:
    report = Recorder()
    await run_one(spec("video", duration_s=0.2, fps=50), report)
    assert any(m and "frame" in m and "/10" in m for _, m in report.steps)


async def test_run_takes_about_duration_s() -> None:
    report = Recorder()
    started = time.monotonic()
    await run_one(spec("image", duration_s=0.3), report)
    assert time.monotonic() - started >= 0.25
    assert len(report.steps) >= 5


async def test_cancelling_stops_promptly() -> None:
    report = Recorder()
    task = asyncio.create_task(DemoTaskProvider().run(spec("image", duration_s=5), ENTRY, report))
    await asyncio.sleep(0.1)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert task.cancelled()


@pytest.mark.parametrize(
    ("kind", "inp"),
    [
        ("image", {"width": 2048}),
        ("image", {"duration_s": 61}),
        ("video", {"height": 1024}),
        ("video", {"duration_s": 31}),
        ("video", {"duration_s": 20, "fps": 30}),
        ("audio", {"duration_s": 121}),
    ],
)
async def test_inputs_past_the_demo_limits_are_refused(kind: str, inp: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        await DemoTaskProvider().run(spec(kind, **inp), ENTRY, Recorder())
