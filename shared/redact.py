"""Keeping secrets out of logs and error messages."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Query parameters that carry secrets (Gemini clients send the key as `?key=`).
SECRET_QUERY = re.compile(r"(?i)([?&](?:key|api_key|follow_token)=)[^&\s\"']+")
REDACTED = "[redacted]"


def redact_query(text: str) -> str:
    return SECRET_QUERY.sub(rf"\1{REDACTED}", text)


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
