"""Media in requests (images, audio, documents): data URLs, base64, media types and sizes,
checked once on the way in, whichever API the parts came through."""

from __future__ import annotations

import binascii
import re
from typing import Literal

from shared.errors import InvalidRequest
from shared.request import ContentPart, GenerationRequest

MediaKind = Literal["image", "audio", "document"]

# What Spool carries for each kind, by media type. Each provider takes a subset
# (`shared.fidelity`).
MEDIA_TYPES: dict[MediaKind, frozenset[str]] = {
    "image": frozenset(
        {"image/png", "image/jpeg", "image/gif", "image/webp", "image/heic", "image/heif"}
    ),
    "audio": frozenset(
        {
            "audio/wav",
            "audio/mpeg",
            "audio/mp3",
            "audio/aiff",
            "audio/aac",
            "audio/ogg",
            "audio/flac",
            "audio/webm",
        }
    ),
    "document": frozenset(
        {"application/pdf", "text/plain", "text/markdown", "text/csv", "text/html"}
    ),
}
ALIASES = {"image/jpg": "image/jpeg", "audio/x-wav": "audio/wav", "audio/wave": "audio/wav"}
TEXT_DOCUMENTS = frozenset({"text/plain", "text/markdown", "text/csv", "text/html"})
# OpenAI's `input_audio.format` and the media type each stands for.
AUDIO_FORMATS = {"wav": "audio/wav", "mp3": "audio/mpeg"}

_DATA_URL = re.compile(r"data:([\w.+-]+/[\w.+-]+)((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)", re.DOTALL)
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def normal_type(media_type: str) -> str:
    media_type = media_type.split(";", 1)[0].strip().lower()
    return ALIASES.get(media_type, media_type)


def parse_data_url(url: str, what: str) -> tuple[str, str]:
    """A `data:<type>;base64,<data>` URL as its media type and base64 data, or a 400."""
    match = _DATA_URL.fullmatch(url)
    if match is None:
        raise InvalidRequest(f"{what} is not a valid data URL (data:<media type>;base64,<data>)")
    return normal_type(match.group(1)), match.group(3)


def decoded_size(data: str) -> int:
    return len(data) * 3 // 4 - data[-2:].count("=")


def check_base64(data: str, what: str) -> None:
    if len(data) % 4 or _BASE64.fullmatch(data) is None:
        raise InvalidRequest(f"{what} is not valid base64")
    try:
        binascii.a2b_base64(data[-8:] if len(data) > 8 else data, strict_mode=True)
    except binascii.Error as exc:
        raise InvalidRequest(f"{what} is not valid base64: {exc}") from exc


def check_url(url: str, what: str) -> None:
    if not url.startswith(("http://", "https://")) or len(url) > 8192:
        raise InvalidRequest(f"{what} must be an http(s) URL or a base64 data URL")


def media_part(
    kind: MediaKind,
    what: str,
    *,
    url: str | None = None,
    data: str | None = None,
    media_type: str | None = None,
    **fields: object,
) -> ContentPart:
    """A media part from a surface's fields: a data URL is split into type and data, an
    http(s) URL kept for the worker to fetch where a provider needs the bytes."""
    if url is not None and url.startswith("data:"):
        media_type, data = parse_data_url(url, what)
        url = None
    if (url is None) == (data is None):
        raise InvalidRequest(f"{what} needs exactly one of a URL or base64 data")
    if url is not None:
        check_url(url, what)
    if media_type is not None:
        media_type = normal_type(media_type)
    return ContentPart(type=kind, url=url, data=data, media_type=media_type, **fields)


def check_part(part: ContentPart, what: str, max_bytes: int) -> None:
    """A media part as Spool can carry it: a known media type, valid base64 within
    `max_bytes`; a 400 naming the part otherwise."""
    if part.type == "text":
        return
    kind: MediaKind = part.type
    if part.data is not None:
        if part.media_type is None:
            raise InvalidRequest(f"{what} has base64 data but no media type")
        size = decoded_size(part.data)
        if size > max_bytes:
            raise InvalidRequest(
                f"{what} is {size} bytes; at most {max_bytes} are allowed (max_media_bytes)"
            )
        check_base64(part.data, what)
    if part.media_type is not None and part.media_type not in MEDIA_TYPES[kind]:
        allowed = ", ".join(sorted(MEDIA_TYPES[kind]))
        raise InvalidRequest(
            f"{what} has media type {part.media_type!r}, which is not a supported {kind} "
            f"type ({allowed})"
        )


def check_media(request: GenerationRequest, max_bytes: int) -> None:
    for m, message in enumerate(request.messages):
        for p, part in enumerate(message.parts or []):
            check_part(part, f"messages[{m}] part {p} ({part.type})", max_bytes)


def remote_urls(request: GenerationRequest) -> list[str]:
    return [p.url for m in request.messages for p in m.media if p.url is not None]
