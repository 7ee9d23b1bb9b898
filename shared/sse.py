"""The Server-Sent Events wire format, both ways, per the WHATWG HTML specification.

`format_event` / `format_comment` write events for Spool's clients. `SSEDecoder` reads an
upstream provider's byte stream incrementally: events split across reads, UTF-8 characters
split across reads, CRLF / CR / LF line ends, comments and blank keep-alives.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from typing import NamedTuple

_NEWLINES = ("\r\n", "\r", "\n")


def _single_line(value: str, what: str) -> str:
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"SSE {what} must not contain CR, LF or NUL: {value!r}")
    return value


def format_event(data: str | bytes, *, id: str | None = None, event: str | None = None) -> bytes:
    """One SSE event. Multi-line data becomes several `data:` lines, as the spec wants."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if b"\n" in raw or b"\r" in raw:
        lines = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")
        body = b"".join([b"data: " + line + b"\n" for line in lines])
    else:  # the usual case (JSON): one line, written as it is
        body = b"data: " + raw + b"\n"
    if event is not None:
        body = b"event: " + _single_line(event, "event name").encode("utf-8") + b"\n" + body
    if id is None:
        return body + b"\n"
    return body + b"id: " + _single_line(id, "id").encode("utf-8") + b"\n\n"


# How long a browser's EventSource waits before it reconnects after a drop (its default is
# about 3 s). Sent as a `retry:` field with a stream's first event, in that event's block:
# a block of its own, with no data, would reach SDKs as an event with empty data.
RETRY_MS = 1000
RETRY_FIELD = b"retry: %d\n" % RETRY_MS


def format_comment(text: str = "") -> bytes:
    """Comment lines: ignored by clients, they keep proxies from timing an idle stream out.
    No blank line follows them: a blank line ends an event, and a client that remembers
    the last event id (as the spec says, and as the openai and anthropic SDKs do) would
    take a comment and a blank line for an event with no data."""
    return "".join(f": {line}\n" for line in text.splitlines() or [""]).encode("utf-8")


_new_tuple = tuple.__new__


class ServerSentEvent(NamedTuple):
    """One event as read (a tuple: an upstream stream makes one per token)."""

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental SSE parser. Feed it raw bytes as they arrive; it yields whole events."""

    def __init__(self, max_line_chars: int = 8 * 1024 * 1024) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._pending_cr = False
        self._at_start = True
        self._max_line_chars = max_line_chars
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes) -> Iterator[ServerSentEvent]:
        text = self._utf8.decode(chunk)
        if not text:
            return
        if self._at_start:
            # A byte order mark at the very start of the stream is not part of any line.
            text = text.removeprefix("\ufeff")
            self._at_start = False
        if self._pending_cr and text.startswith("\n"):
            # The CR of a CRLF ended the previous read; its LF is not another line end.
            text = text[1:]
        self._pending_cr = False
        self._buffer += text
        yield from self._drain_lines()
        if len(self._buffer) > self._max_line_chars:
            raise ValueError("upstream SSE line exceeds the size limit")

    def close(self) -> Iterator[ServerSentEvent]:
        """End of stream: a final event without its trailing blank line is discarded, per
        the spec, so a truncated upstream never yields a half-written event."""
        self._buffer += self._utf8.decode(b"", final=True)
        yield from self._drain_lines()
        self._buffer = ""
        self._reset_event()

    def _drain_lines(self) -> Iterator[ServerSentEvent]:
        buf = self._buffer
        if "\r" not in buf:
            # LF line ends only, as nearly every server sends: split them all at once.
            lines = buf.split("\n")
            self._buffer = lines.pop()
            last = len(lines) - 1
            i = 0
            while i <= last:
                line = lines[i]
                if (
                    i < last
                    and not lines[i + 1]
                    and line.startswith("data: ")
                    and not self._data
                    and not self._event
                ):
                    # Nearly every event: one `data: ` line, then the blank line that ends
                    # it. What `_process_line` and `_dispatch` would make of the two (the
                    # tuple made without the named tuple's constructor, a call of its own).
                    yield _new_tuple(ServerSentEvent, (line[6:], "message", self._id, self._retry))
                    self._retry = None
                    i += 2
                    continue
                event = self._process_line(line)
                if event is not None:
                    yield event
                i += 1
            return
        start = 0
        while True:
            cr = buf.find("\r", start)
            lf = buf.find("\n", start)
            if cr == -1 and lf == -1:
                break
            if cr == -1 or (lf != -1 and lf < cr):
                end, nxt = lf, lf + 1
            elif cr + 1 < len(buf):
                end, nxt = cr, cr + 2 if buf[cr + 1] == "\n" else cr + 1
            else:
                end, nxt = cr, cr + 1
                self._pending_cr = True
            event = self._process_line(buf[start:end])
            if event is not None:
                yield event
            start = nxt
        self._buffer = buf[start:]

    def _process_line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._event = value
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(
            data="\n".join(self._data),
            event=self._event or "message",
            id=self._id,
            retry=self._retry,
        )
        self._reset_event()
        return event

    def _reset_event(self) -> None:
        self._data = []
        self._event = ""
        self._retry = None
