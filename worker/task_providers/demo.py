"""The built-in demo model for asset tasks: no key, no network, real files at a real pace.

Images are PNGs, videos animated GIFs, audio 16-bit mono WAVs. Everything is drawn from a
PRNG seeded with `input.seed` (or a hash of the prompt, kind and size), so the same spec
always yields byte-identical files. A task takes about `input.duration_s` seconds of wall
time (its last tenth is the file's encoding, which can run over for the largest outputs) and
reports progress along the way, so clients can watch one run like a real job.

Files are encoded straight into the artifact store a piece at a time (a frame of video, a few
seconds of audio), so even the largest demo output never sits whole in a worker's memory.
"""

from __future__ import annotations

import asyncio
import colorsys
import functools
import hashlib
import math
import random
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import IO

import orjson
from PIL import GifImagePlugin, Image, ImageChops, ImageDraw

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
# Audio is written in pieces of about this many bytes.
AUDIO_CHUNK_BYTES = 256 * 1024

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


def _animation(rng: random.Random, size: tuple[int, int], count: int) -> Iterator[Image.Image]:
    colours = _colours(rng, 4)
    backdrop = _backdrop(rng, size, colours[0], colours[1])
    width, height = size
    radius = max(2.0, min(size) / 8)
    bounces, phase, spins = rng.uniform(1, 3), rng.random(), rng.choice((-1, 1))
    sides = rng.randint(3, 6)
    # GIF encoders merge identical consecutive frames, which would change the frame count of
    # tiny or slow clips; a binary frame counter along the bottom edge keeps each distinct.
    cell = max(1, width // 64)
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
        yield frame


def _melody(rng: random.Random, duration_s: float, rate: int) -> Iterator[array[int]]:
    """The tune's samples, one note at a time."""
    total = round(duration_s * rate)
    root = rng.choice((196.0, 220.0, 246.94, 261.63))
    amplitude = 0.3 * 32767
    fade = max(1, round(FADE_S * rate))
    # A tune has only about 30 distinct notes (ten pitches, three lengths, and a cut-short
    # last one), so each is synthesised once: a few seconds of samples per pitch at most,
    # whatever the tune's length.
    notes: dict[tuple[int, int], array[int]] = {}
    pos = 0
    while pos < total:
        length = min(total - pos, round(rate * rng.choice((0.25, 0.25, 0.5, 0.75))))
        semitones = rng.choice(PENTATONIC) + 12 * rng.choice((0, 0, 1))
        note = notes.get((length, semitones))
        if note is None:
            step = 2 * math.pi * root * 2 ** (semitones / 12) / rate
            note = array("h", bytes(2 * length))
            # Each note rises from and falls back to silence, so note boundaries do not click.
            for n in range(length):
                envelope = min(1.0, n / fade, (length - 1 - n) / fade)
                note[n] = round(amplitude * envelope * math.sin(step * n))
            notes[(length, semitones)] = note
        yield note
        pos += length


def _write_png(spec: TaskSpec, out: IO[bytes]) -> None:
    rng = random.Random(_seed(spec))
    # Pillow encodes into `out` block by block; only the picture itself is held.
    _picture(rng, _size(spec)).save(out, format="PNG")


def _write_gif(spec: TaskSpec, out: IO[bytes]) -> None:
    """An animated GIF, encoded frame by frame as the frames are drawn: only the frame being
    drawn and the one before it are ever held."""
    rng = random.Random(_seed(spec))
    width, height = _size(spec)
    delay_ms = round(1000 / (spec.input.fps or DEFAULT_FPS))
    # GIF89a header: no global colour table (each frame brings its own), colour resolution 8.
    out.write(b"GIF89a" + struct.pack("<HHBBB", width, height, 0x70, 0, 0))
    # The NETSCAPE2.0 application extension: loop forever.
    out.write(b"!\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00")
    whole = (0, 0, width, height)
    previous: Image.Image | None = None
    for frame in _animation(rng, (width, height), _frame_count(spec)):
        params: dict[str, object] = {"duration": delay_ms, "include_color_table": True}
        if previous is None:
            box = whole
            indexed = frame.convert("P", palette=Image.Palette.ADAPTIVE)
        else:
            # Later frames redraw only the rectangle that changed, and inside it every pixel
            # that did not change is transparent (the one before shows through), as Pillow's
            # own encoder does: far smaller files.
            changed = _changed(previous, frame)
            box = changed.getbbox() or (0, 0, 1, 1)  # unchanged: one transparent pixel
            indexed = frame.crop(box).convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
            palette = indexed.getpalette() or []
            clear = len(palette) // 3  # one past the colours used: the transparent index
            indexed.putpalette([*palette, 0, 0, 0])
            indexed.paste(clear, mask=changed.crop(box).point([255, *(0,) * 255], "1"))
            params["transparency"] = clear
        for piece in GifImagePlugin.getdata(indexed, box[:2], **params):
            out.write(piece)
        previous = frame
    out.write(b";")


def _changed(before: Image.Image, after: Image.Image) -> Image.Image:
    """A mask, nonzero wherever the two RGB frames differ in any band."""
    red, green, blue = ImageChops.difference(before, after).split()
    return ImageChops.lighter(ImageChops.lighter(red, green), blue)


def _write_wav(spec: TaskSpec, out: IO[bytes]) -> None:
    """A 16-bit mono PCM WAV: the header (the length is known up front), then the samples
    a batch of notes at a time."""
    rng = random.Random(_seed(spec))
    rate = spec.input.sample_rate or DEFAULT_SAMPLE_RATE
    data_bytes = 2 * round(_duration(spec) * rate)
    fmt = struct.pack("<HHIIHH", 1, 1, rate, 2 * rate, 2, 16)  # PCM, mono, 16-bit
    out.write(b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE")
    out.write(b"fmt " + struct.pack("<I", len(fmt)) + fmt)
    out.write(b"data" + struct.pack("<I", data_bytes))
    batch = array("h")
    for note in _melody(rng, _duration(spec), rate):
        batch.extend(note)
        if 2 * len(batch) >= AUDIO_CHUNK_BYTES:
            _write_samples(out, batch)
            batch = array("h")
    _write_samples(out, batch)


def _write_samples(out: IO[bytes], samples: array[int]) -> None:
    if sys.byteorder == "big":
        samples.byteswap()  # WAV is little-endian
    out.write(samples)


def _output(spec: TaskSpec) -> MediaOutput:
    """The task's output: its description, and the function that encodes it into the file it
    is stored in (which the task run calls)."""
    if spec.kind == "image":
        width, height = _size(spec)
        write = functools.partial(_write_png, spec)
        return MediaOutput("image/png", write=write, width=width, height=height)
    if spec.kind == "video":
        width, height = _size(spec)
        frames = _frame_count(spec)
        return MediaOutput(
            "image/gif",
            write=functools.partial(_write_gif, spec),
            width=width,
            height=height,
            frames=frames,
            duration_s=frames / (spec.input.fps or DEFAULT_FPS),
        )
    rate = spec.input.sample_rate or DEFAULT_SAMPLE_RATE
    duration_s = round(_duration(spec) * rate) / rate
    return MediaOutput(
        "audio/wav", write=functools.partial(_write_wav, spec), duration_s=duration_s
    )


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
        for i, message in enumerate(_messages(spec)):
            # Pace against absolute deadlines so the total does not drift with reporting.
            delay = start + duration * i / STEPS - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await report.progress(round(0.05 + 0.9 * i / (STEPS - 1), 3), message)
        # The last step, encoding, is the run storing the output: the file is encoded straight
        # into the artifact store then, so it fills the last tenth of the time.
        return [_output(spec)]
