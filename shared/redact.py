"""Keeping secrets out of logs and error messages."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

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


class RedactQueryFilter(logging.Filter):
    """Redacts secret query parameters from access-log lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        return True
