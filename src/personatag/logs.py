"""Logging: one JSON object per line (or readable text), carrying the request id.

`request_context(request_id, job=...)` attaches the ids to every record logged
inside it, from any module. The ids live in context variables, which are per
thread (and per asyncio task): a thread started inside the block does not
inherit them unless it runs in a copy of the context
(`contextvars.copy_context().run`). The dispatcher therefore enters
`request_context` in the worker thread that runs the job, not where it queues
the job.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

from personatag.times import iso

_request_id: ContextVar[str | None] = ContextVar("personatag_request_id", default=None)
_job: ContextVar[int | str | None] = ContextVar("personatag_job", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}
_CONTEXT_ATTRS = ("request_id", "job")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@contextmanager
def request_context(request_id: str | None, job: int | str | None = None) -> Iterator[None]:
    """Attach `request_id` (and `job`) to every record logged inside the block
    in this thread or task; nested blocks override, and exiting restores."""
    rid_token = _request_id.set(request_id)
    job_token = _job.set(job)
    try:
        yield
    finally:
        _job.reset(job_token)
        _request_id.reset(rid_token)


def current_context() -> dict[str, Any]:
    """The ids set by the innermost `request_context` (only those that are set)."""
    found = {"request_id": _request_id.get(), "job": _job.get()}
    return {k: v for k, v in found.items() if v is not None}


class RequestContextFilter(logging.Filter):
    """Copy the current request id and job onto each record (never rejects one).

    Put it on a handler: it runs in the thread that logs, so the ids are right
    even if the record is formatted later elsewhere. Ids given explicitly with
    `extra=` win.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in current_context().items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


# Query parameters whose values are secrets, wherever a URL is logged. Names are
# matched after percent-decoding (`tok%65n` is `token` to the server).
_QUERY_PARAM = re.compile(r"([?&;])([^=&;#\s\"']+)=([^&;#\s\"']*)")
_SECRET_NAME = re.compile(
    r"[\w.-]*(?:token|password|secret|credentials?|api[_-]?key|[_.-]key)"
    r"|passw?d|pwd|pass|key|signature|session|auth|authorization|bearer|csrf|jwt",
    re.IGNORECASE,
)
# user:password@ in a URL; an API token (`pt_...`) anywhere.
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@", re.IGNORECASE)
_API_TOKEN = re.compile(r"\bpt_[A-Za-z0-9_-]{16,}")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """`text` with secrets that URLs and messages can carry replaced by
    `[redacted]`: secret-named query parameters (`token`, `access_token`,
    `password`, `secret`, `key`, ...), the password of `scheme://user:password@`,
    and API tokens (`pt_...`)."""
    if not any(c in text for c in "=@_"):
        return text
    text = _QUERY_PARAM.sub(_redact_param, text)
    text = _USERINFO.sub(lambda m: m.group(1) + REDACTED + "@", text)
    return _API_TOKEN.sub(REDACTED, text)


def _redact_param(m: re.Match[str]) -> str:
    name = urllib.parse.unquote_plus(m.group(2))
    if _SECRET_NAME.fullmatch(name) is None:
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}={REDACTED}"


class RedactSecrets(logging.Filter):
    """Redact secrets (see `redact`) in a record's message and its string
    arguments, e.g. the request line uvicorn's access log writes. Never rejects."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        return True


def _utc_iso(created: float) -> str:
    return iso(datetime.fromtimestamp(created, UTC), "milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO-8601 UTC), level, logger, message,
    request_id and job when set, exc (the traceback, one string) when there is
    one, then every `extra=` field. Values JSON cannot hold are written as str()."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _CONTEXT_ATTRS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info and record.exc_info[0] is not None:
            if not record.exc_text:
                record.exc_text = self.formatException(record.exc_info)
            entry["exc"] = record.exc_text
        elif record.exc_text:
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        for name, value in vars(record).items():
            # The fixed fields above win over an `extra=` of the same name.
            if name not in _RECORD_ATTRS and name not in entry and name not in _CONTEXT_ATTRS:
                entry[name] = value
        # Last, over everything: `extra=` values and tracebacks can carry secrets too.
        return redact(json.dumps(entry, default=str))


class TextFormatter(logging.Formatter):
    """`<ts> LEVEL logger: message [request_id=... job=...]` for people at a
    terminal; ts is ISO-8601 UTC, as in the JSON lines."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc_iso(record.created)

    def format(self, record: logging.LogRecord) -> str:
        text = redact(super().format(record))  # the traceback included
        ids = [
            f"{name}={getattr(record, name)}"
            for name in _CONTEXT_ATTRS
            if getattr(record, name, None) is not None
        ]
        if not ids:
            return text
        head, sep, tail = text.partition("\n")  # keep the ids on the message line
        return f"{head} [{' '.join(ids)}]{sep}{tail}"


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(
            f"unknown log level {level!r}: use DEBUG, INFO, WARNING, ERROR or CRITICAL"
        )
    return value


def logging_json() -> bool:
    """Whether configure_logging set this process to log JSON lines (a child
    process logs as its parent does)."""
    return any(
        getattr(h, "_personatag", False) and isinstance(h.formatter, JsonFormatter)
        for h in logging.getLogger().handlers
    )


def configure_logging(
    level: int | str = logging.INFO, *, json: bool, stream: TextIO | None = None
) -> logging.Handler:
    """Send every log record at `level` or above to `stream` (default stderr), as
    JSON lines or as text, with the request context attached and secrets redacted.

    Calling it again replaces the handler it installed before (idempotent);
    other handlers on the root logger are left alone. Returns the handler.
    """
    numeric = _level(level)  # refuse a bad level before touching any handler
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_personatag", False)]:
        root.removeHandler(old)
        old.close()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json else TextFormatter())
    handler.addFilter(RequestContextFilter())
    handler.addFilter(RedactSecrets())
    handler._personatag = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler
