"""Log lines of every `spool` command, as text or as JSON. A line logged while a job runs
(in the worker) or is created (in the API) carries the job's stream, task and key ids,
model, provider and deployment, from a context the job's code sets (`job_context`)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal, TextIO

import orjson

from shared.settings import Settings

LogFormat = Literal["json", "text"]
# The fields of a job's context, in the order text lines show them.
FIELDS = ("stream_id", "task_id", "key_id", "model", "provider", "deployment")
# Spool's own secrets, should a message ever hold one: API keys and follow tokens.
SECRET = re.compile(r"\b(?:sk-spool-|ft_)[A-Za-z0-9_\-%]+")
REDACTED = "[redacted]"

# The fields of the job the running code is about. The dict is shared by the tasks the
# job starts (they copy the context, not the dict), so `update` is seen by all of them;
# `job_context` empties it when the job is done, so a long-lived task that happened to be
# started from a job's code (a reconnecting connection's reader) does not go on wearing it.
_job: ContextVar[dict[str, str] | None] = ContextVar("spool_log_job", default=None)


@contextmanager
def job_context(**fields: str | None) -> Iterator[dict[str, str]]:
    """Lines logged inside carry `fields` (None ones left out) besides the outer context's."""
    current = _job.get()
    bound = {**(current or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _job.set(bound)
    try:
        yield bound
    finally:
        bound.clear()
        _job.reset(token)


def update(**fields: str | None) -> None:
    """Change fields of the current job's context (nothing outside a job's context)."""
    current = _job.get()
    if current is not None:
        current.update({k: v for k, v in fields.items() if v is not None})


def job_fields() -> dict[str, str]:
    return dict(_job.get() or {})


def scrub(text: str) -> str:
    return SECRET.sub(REDACTED, text) if ("sk-spool-" in text or "ft_" in text) else text


class JobContextFilter(logging.Filter):
    """Puts the current job's fields on each record (as `record.job`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = _job.get()
        setattr(record, "job", dict(fields) if fields else {})  # noqa: B010
        return True


# What every LogRecord has: anything else on a record came through `extra=` and is a field.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {
    "message",
    "asctime",
    "job",
    "color_message",  # uvicorn's coloured copy of the message
    "taskName",
}


def _extras(record: logging.LogRecord) -> dict[str, str | int | float | bool]:
    return {
        key: value
        for key, value in vars(record).items()
        if key not in _STANDARD
        and not key.startswith("_")
        and isinstance(value, str | int | float | bool)
    }


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the job's fields, the fields
    a call passed with `extra=` (a failure's `code` and `reason`), and any traceback."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": scrub(record.getMessage()),
        }
        line.update(getattr(record, "job", None) or {})
        for key, value in _extras(record).items():
            line[key] = scrub(value) if isinstance(value, str) else value
        if record.exc_info:
            line["exception"] = scrub(self.formatException(record.exc_info))
        if record.stack_info:
            line["stack"] = scrub(self.formatStack(record.stack_info))
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [field=value …]`, the fields being the job's."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        job = getattr(record, "job", None)
        if job:
            fields = " ".join(f"{name}={job[name]}" for name in FIELDS if name in job)
            head, newline, rest = text.partition("\n")  # before a traceback, if any
            text = f"{head} [{fields}]{newline}{rest}"
        return scrub(text)


def log_format(settings: Settings, command: str, stream: TextIO | None = None) -> LogFormat:
    """The configured format, else json for the servers (`api`, `worker`) when their
    stderr is not a terminal, and text otherwise."""
    if settings.log_format is not None:
        return settings.log_format
    stream = stream if stream is not None else sys.stderr
    on_terminal = stream is not None and stream.isatty()
    return "json" if command in ("api", "worker") and not on_terminal else "text"


def setup_logging(settings: Settings, command: str) -> LogFormat:
    """One handler on the root logger, to stderr, in the command's format (every library's
    loggers, uvicorn's included, propagate to it); returns the format."""
    chosen = log_format(settings, command)
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter() if chosen == "json" else TextFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    # uvicorn's own logging config (wherever it was applied) gives its loggers handlers
    # of their own and stops them propagating: they go through this one handler instead.
    for name in UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        for old in logger.handlers[:]:
            logger.removeHandler(old)
        logger.propagate = True
        logger.disabled = False
    # Libraries' own lines for every upstream request (httpx) and every job (arq, two)
    # say nothing Spool's lines do not (with the job's fields), and each costs a write:
    # above `debug`, only their warnings and errors are kept.
    quiet = logging.WARNING if root.level > logging.DEBUG else logging.NOTSET
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(quiet)
    return chosen


UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
CHATTY_LOGGERS = ("httpx", "arq.worker")
