"""Small real media for tests: a PNG, a PDF, a WAV and a text file, their base64, and the
schema of the structured-output tests."""

from __future__ import annotations

import base64
import io
import struct
import wave
import zlib
from collections.abc import Callable

from pydantic import BaseModel


def png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG of the given size, all red."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def pdf() -> bytes:
    """A one-page PDF saying hello."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 100] /Contents 4 0 R >>",
        b"<< /Length 35 >>\nstream\nBT /F1 12 Tf 10 50 Td (hello) Tj ET\nendstream",
    ]
    out = io.BytesIO(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (n, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(
        b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    )
    return out.getvalue()


def wav(seconds: float = 0.1) -> bytes:
    """Silence as 16-bit mono WAV at 8 kHz."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * int(8000 * seconds))
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PNG = png()
PNG_B64 = b64(PNG)
PDF = pdf()
PDF_B64 = b64(PDF)
WAV = wav()
WAV_B64 = b64(WAV)
TEXT = "Spool keeps every chunk in Redis.\n"

# Served by the mock upstream at /media/<name>.
FILES: dict[str, tuple[str, Callable[[], bytes]]] = {
    "red.png": ("image/png", lambda: PNG),
    "doc.pdf": ("application/pdf", lambda: PDF),
    "clip.wav": ("audio/wav", lambda: WAV),
    "notes.txt": ("text/plain", lambda: TEXT.encode()),
    "page.html": ("text/html", lambda: b"<p>not an image</p>"),
    "huge.png": ("image/png", lambda: png(1200, 1200) + b"\x00" * (3 * 1024 * 1024)),
}


class Weather(BaseModel):
    city: str
    temperature: float
    conditions: str
