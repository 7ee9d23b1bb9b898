"""Keeping secrets out of logs and error messages."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

import orjson

REDACTED = "[redacted]"
# Everything after a `?` in a logged path: parameter names may be percent-encoded (`k%65y`)
# or split by `;`, so the query is never logged as sent.
QUERY = re.compile(r"\?[^\s\"']*")
# Spool's own secrets, wherever they turn up: API keys and follow tokens.
SPOOL_SECRET = re.compile(r"(?:sk-spool-|ft_)[A-Za-z0-9_\-%]+")


def redact_query(text: str) -> str:
    return SPOOL_SECRET.sub(REDACTED, QUERY.sub(f"?{REDACTED}", text))


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every occurrence of each secret (and each secret's tail after a
    `Bearer `) replaced, as upstreams sometimes echo the key they were sent."""
    for secret in secrets:
        if secret and len(secret) >= 8:
            text = text.replace(secret, REDACTED)
    return text


KEY_HEADERS = frozenset({"authorization", "x-api-key", "x-goog-api-key"})
MAX_UPSTREAM_MESSAGE_CHARS = 300


def header_secrets(headers: Mapping[str, str]) -> list[str]:
    """The keys a request to an upstream carries: each key header's value, and its tail
    after a scheme (`Bearer …`)."""
    found = []
    for name, value in headers.items():
        if name.lower() in KEY_HEADERS:
            found += [value, value.partition(" ")[2]]
    return found


def upstream_message(payload: bytes, headers: Mapping[str, str]) -> str:
    """The human message of an upstream's error body, whichever provider's shape it has,
    short, and without the keys the request carried (upstreams sometimes quote them)."""
    try:
        data = orjson.loads(payload)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        message = str(error["message"])
    elif isinstance(error, str):
        message = error
    elif data is None:
        message = payload[:8192].decode("utf-8", "replace").strip() or "no body"
    else:
        message = "upstream returned an error"
    return redact(message, header_secrets(headers))[:MAX_UPSTREAM_MESSAGE_CHARS]


class RedactQueryFilter(logging.Filter):
    """Redacts secret query parameters from access-log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True
