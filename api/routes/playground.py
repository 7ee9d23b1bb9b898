"""The browser client and the playground: `/static/*` (files under `api/static`) and
`/playground`, with their content types, revalidation by ETag, and no way out of that
folder."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Header, Request
from starlette.responses import Response

from shared.errors import RouteNotFound

router = APIRouter(tags=["playground"], include_in_schema=False)

STATIC_ROOT = Path(__file__).resolve().parent.parent / "static"
PLAYGROUND_PAGE = "playground/index.html"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}
# A segment of a served path: no leading dot (no `..`, no hidden files), no separators.
SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}$")
MAX_SEGMENTS = 8
COMMON_HEADERS = {
    # Revalidated on every use (a 304 when unchanged), so an upgrade is seen at once.
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
}
# The playground talks to its own origin only, and shows outputs from blob: URLs.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self'; img-src 'self' blob: data:; "
        "media-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    etag: str
    content_type: str
    stamp: tuple[int, int]  # (mtime_ns, size) of the file read


_cache: dict[Path, StaticFile] = {}


def _resolve(relative: str) -> Path:
    """The file under `STATIC_ROOT` that `relative` names, or 404."""
    segments = relative.split("/")
    missing = RouteNotFound(f"no static file {relative[:200]!r}")
    if len(segments) > MAX_SEGMENTS or not all(SEGMENT.match(s) for s in segments):
        raise missing
    path = STATIC_ROOT.joinpath(*segments).resolve()
    if not path.is_relative_to(STATIC_ROOT) or path.suffix not in CONTENT_TYPES:
        raise missing
    if not path.is_file():
        raise missing
    return path


def _load(path: Path) -> StaticFile:
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    known = _cache.get(path)
    if known is not None and known.stamp == stamp:
        return known
    body = path.read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    loaded = StaticFile(body, etag, CONTENT_TYPES[path.suffix], stamp)
    _cache[path] = loaded
    return loaded


def _serve(relative: str, if_none_match: str | None, method: str) -> Response:
    served = _load(_resolve(relative))
    headers = {**COMMON_HEADERS, "ETag": served.etag}
    if served.content_type.startswith("text/html"):
        headers.update(PAGE_HEADERS)
    if if_none_match is not None and served.etag in (t.strip() for t in if_none_match.split(",")):
        return Response(status_code=304, headers=headers)
    body = b"" if method == "HEAD" else served.body
    response = Response(body, media_type=served.content_type, headers=headers)
    if method == "HEAD":
        response.headers["Content-Length"] = str(len(served.body))
    return response


IfNoneMatch = Annotated[str | None, Header()]


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"])
async def static_file(request: Request, path: str, if_none_match: IfNoneMatch = None) -> Response:
    return _serve(path, if_none_match, request.method)


@router.api_route("/playground", methods=["GET", "HEAD"])
@router.api_route("/playground/", methods=["GET", "HEAD"])
async def playground(request: Request, if_none_match: IfNoneMatch = None) -> Response:
    return _serve(PLAYGROUND_PAGE, if_none_match, request.method)
