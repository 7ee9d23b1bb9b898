"""The built-in demo model for asset tasks: no key, no network, real files at a real pace.

Images are PNGs, videos animated GIFs, audio 16-bit mono WAVs. Everything is drawn from a
PRNG seeded with `input.seed` (or a hash of the prompt, kind and size), so the same spec
always yields byte-identical files. A task takes about `input.duration_s` seconds of wall
time and reports progress along the way, so clients can watch one run like a real job.
"""

from __future__ import annotations

import asyncio
import colorsys
import hashlib
import io
import math
import random
import sys
import wave
from array import array

import orjson
from PIL import Image, ImageDraw

from shared.settings import TaskModelEntry
from shared.tasks import TaskSpec, check_demo_input
from worker.task_providers import MediaOutput, ProgressReporter

DEFAULT_SIDE = {"image": 512, "video": 256}
DEFAULT_DURATION_S = {"image": 3.0, "video": 2.0, "audio": 3.0}
DEFAULT_FPS = 10
DEFAULT_SAMPLE_RATE = 22050
STEPS = 10
# Major pentatonic: any sequence of these notes sounds pleasant, so a random walk is a tune.
PENTATONIC = (0, 2, 4, 7, 9)
FADE_S = 0.01

RGB = tuple[int, int, int]


def _size(spec: TaskSpec) -> tuple[int, int]:
    side = DEFAULT_SIDE.get(spec.kind, 0)
    return spec.input.width or side, spec.input.height or side


def _duration(spec: TaskSpec) -> float:
    given = spec.input.duration_s
    return DEFAULT_DURATION_S[spec.kind] if given is None else given


def _frame_count(spec: TaskSpec) -> int:
    return max(1, round(_duration(spec) * (spec.input.fps or DEFAULT_FPS)))


def _seed(spec: TaskSpec) -> int:
    if spec.input.seed is not None:
        return spec.input.seed
    key = orjson.dumps([spec.kind, spec.input.prompt, *_size(spec)])
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big")


def _colours(rng: random.Random, count: int) -> list[RGB]:
    # Evenly spaced hues from a seeded start keep the palette lively rather than muddy.
    start = rng.random()
    colours: list[RGB] = []
    for k in range(count):
        hue = (start + k / count) % 1.0
        r, g, b = colorsys.hsv_to_rgb(hue, rng.uniform(0.45, 0.85), rng.uniform(0.55, 0.95))
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def _backdrop(rng: random.Random, size: tuple[int, int], a: RGB, b: RGB) -> Image.Image:
    mask = Image.linear_gradient("L").rotate(rng.choice((0, 90, 180, 270))).resize(size)
    return Image.composite(Image.new("RGB", size, a), Image.new("RGB", size, b), mask)


def _picture(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    colours = _colours(rng, 5)
    canvas = _backdrop(rng, size, colours[0], colours[1])
    # An RGBA draw on an RGB image blends, so overlapping translucent shapes mix.
    draw = ImageDraw.Draw(canvas, "RGBA")
    width, height = size
    for _ in range(rng.randint(4, 9)):
        radius = rng.uniform(0.08, 0.3) * min(size)
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        fill = (*rng.choice(colours[2:]), rng.randint(110, 200))
        if rng.random() < 0.5:
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        else:
            sides, turn = rng.randint(3, 6), rng.uniform(0, 360)
            draw.regular_polygon((cx, cy, radius), sides, rotation=turn, fill=fill)
    return canvas


def _animation(rng: random.Random, size: tuple[int, int], count: int) -> list[Image.Image]:
    colours = _colours(rng, 4)
    backdrop = _backdrop(rng, size, colours[0], colours[1])
    width, height = size
    radius = max(2.0, min(size) / 8)
    bounces, phase, spins = rng.uniform(1, 3), rng.random(), rng.choice((-1, 1))
    sides = rng.randint(3, 6)
    # GIF encoders merge identical consecutive frames, which would change the frame count of
    # tiny or slow clips; a binary frame counter along the bottom edge keeps each distinct.
    cell = max(1, width // 64)
    frames: list[Image.Image] = []
    for i in range(count):
        t = i / max(1, count - 1)
        frame = backdrop.copy()
        draw = ImageDraw.Draw(frame)
        centre = (width / 2, height / 2, radius * 1.5)
        draw.regular_polygon(centre, sides, rotation=spins * 360 * t, fill=colours[3])
        x = radius + t * (width - 2 * radius)
        y = height / 2 + (height / 2 - radius) * math.sin(2 * math.pi * (bounces * t + phase))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colours[2])
        for bit in range(count.bit_length()):
            shade = 255 if (i >> bit) & 1 else 0
            box = (bit * cell, height - cell, (bit + 1) * cell - 1, height - 1)
            draw.rectangle(box, fill=(shade, shade, shade))
        frames.append(frame)
    return frames


def _melody(rng: random.Random, duration_s: float, rate: int) -> array[int]:
    total = round(duration_s * rate)
    samples = array("h", bytes(2 * total))
    root = rng.choice((196.0, 220.0, 246.94, 261.63))
    amplitude = 0.3 * 32767
    fade = max(1, round(FADE_S * rate))
    pos = 0
    while pos < total:
        length = min(total - pos, round(rate * rng.choice((0.25, 0.25, 0.5, 0.75))))
        semitones = rng.choice(PENTATONIC) + 12 * rng.choice((0, 0, 1))
        step = 2 * math.pi * root * 2 ** (semitones / 12) / rate
        # Each note rises from and falls back to silence, so note boundaries do not click.
        for n in range(length):
            envelope = min(1.0, n / fade, (length - 1 - n) / fade)
            samples[pos + n] = round(amplitude * envelope * math.sin(step * n))
        pos += length
    return samples


def _render(spec: TaskSpec) -> MediaOutput:
    rng = random.Random(_seed(spec))
    buffer = io.BytesIO()
    if spec.kind == "image":
        width, height = _size(spec)
        _picture(rng, (width, height)).save(buffer, format="PNG")
        return MediaOutput("image/png", buffer.getvalue(), width=width, height=height)
    if spec.kind == "video":
        width, height = _size(spec)
        fps = spec.input.fps or DEFAULT_FPS
        frames = _animation(rng, (width, height), _frame_count(spec))
        frames[0].save(
            buffer,
            format="GIF",
            save_all=True,
            append_images=frames[1:],
            duration=round(1000 / fps),
            loop=0,
        )
        return MediaOutput(
            "image/gif",
            buffer.getvalue(),
            width=width,
            height=height,
            frames=len(frames),
            duration_s=len(frames) / fps,
        )
    rate = spec.input.sample_rate or DEFAULT_SAMPLE_RATE
    samples = _melody(rng, _duration(spec), rate)
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(samples.tobytes())
    return MediaOutput("audio/wav", buffer.getvalue(), duration_s=len(samples) / rate)


def _messages(spec: TaskSpec) -> list[str]:
    body = range(1, STEPS - 1)
    n = len(body)
    if spec.kind == "image":
        return [
            "sketching the composition",
            *(f"painting layer {i}/{n}" for i in body),
            "encoding PNG",
        ]
    if spec.kind == "video":
        count = _frame_count(spec)
        return [
            "setting the scene",
            *(f"rendering frame {math.ceil(count * i / n)}/{count}" for i in body),
            "encoding GIF",
        ]
    seconds = _duration(spec)
    return [
        "composing a melody",
        *(f"synthesising {seconds * i / n:.1f}/{seconds:.1f} s" for i in body),
        "mixing",
    ]


class DemoTaskProvider:
    """Seeded pictures, animations and tunes, made locally while progress ticks along."""

    name = "demo"

    async def run(
        self, spec: TaskSpec, entry: TaskModelEntry, report: ProgressReporter
    ) -> list[MediaOutput]:
        check_demo_input(spec)
        duration = _duration(spec)
        loop = asyncio.get_running_loop()
        start = loop.time()
        # Render while the progress ticks, so the task takes about `duration` seconds in all
        # (unless rendering itself is slower) instead of duration plus rendering time.
        render = asyncio.ensure_future(asyncio.to_thread(_render, spec))
        try:
            for i, message in enumerate(_messages(spec)):
                # Pace against absolute deadlines so the total does not drift with reporting.
                delay = start + duration * i / STEPS - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                await report.progress(round(0.05 + 0.9 * i / (STEPS - 1), 3), message)
            delay = start + duration - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            return [await render]
        finally:
            # The thread cannot be stopped; cancelling just drops its result.
            render.cancel()
