"""Logging for operators: useful, and never a secret or health data.

User ids (an insured person's KVNR) and pushkeys appear in logs only as keyed hashes
(:func:`user_ref`, :func:`pushkey_ref`): stable across the service's processes (the key comes
from the master key), useless for guessing the id behind them without it.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
import logging
import os
import sys
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import orjson

__all__ = [
    "configure_logging",
    "in_message",
    "pushkey_ref",
    "request_id",
    "set_reference_key",
    "user_ref",
]

_reference_key = os.urandom(32)

# The id of the HTTP request being served (web.request_id sets it): every line logged while
# serving it carries it, so an operator can follow one request through the log.
request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "fdpush_request_id", default=None
)
_IN_MESSAGE = "_in_message"

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
    _IN_MESSAGE,
}


def set_reference_key(master_key: bytes) -> None:
    """Key the log references with a key derived from the master key."""
    global _reference_key
    _reference_key = hmac.new(master_key, b"fdpush/log-reference/v1", hashlib.sha256).digest()


def _ref(kind: str, value: str) -> str:
    return hmac.digest(_reference_key, f"{kind}\x00{value}".encode(), "sha256").hex()[:16]


def user_ref(user_id: str) -> str:
    """How a user appears in logs."""
    return "u:" + _ref("user", user_id)


def pushkey_ref(pushkey: str) -> str:
    """How a pushkey appears in logs."""
    return "pk:" + _ref("pushkey", pushkey)


def in_message(**fields: Any) -> dict[str, Any]:
    """``extra=`` for fields the message already spells out: JSON lines carry them as fields,
    text lines do not repeat them."""
    return {**fields, _IN_MESSAGE: tuple(fields)}


_ZONES: dict[int, timezone] = {}  # UTC offset in seconds -> its zone (a handful per process)


def _timestamp(record: logging.LogRecord) -> str:
    """ISO 8601, local time with its offset, to the millisecond."""
    # The offset from time.localtime, the zone object made once: astimezone() made both on
    # every line, a third of the cost of a log line.
    offset = time.localtime(record.created).tm_gmtoff
    zone = _ZONES.get(offset)
    if zone is None:
        zone = _ZONES.setdefault(offset, timezone(timedelta(seconds=offset)))
    return datetime.fromtimestamp(record.created, zone).isoformat(timespec="milliseconds")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        current = request_id.get()
        if current is not None:
            record.request_id = current
        return True


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        omit = set(getattr(record, _IN_MESSAGE, ()))
        extra = {k: v for k, v in record.__dict__.items() if k not in _STANDARD and k not in omit}
        if extra:
            base += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return base

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _timestamp(record)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(
    level: str = "info", fmt: str = "text", *, path: str | os.PathLike[str] | None = None
) -> None:
    """Send logs to stderr (or append them to the file ``path``) in ``text`` or ``json``
    lines, at ``level``."""
    handler: logging.Handler = (
        logging.StreamHandler(sys.stderr) if path is None else logging.FileHandler(path)
    )
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(_RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's access log prints raw paths, and paths carry pushkeys: we log requests ourselves.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request it makes at INFO: one line per gateway batch is our metrics' job.
    logging.getLogger("httpx").setLevel(max(root.level, logging.WARNING))
    # Alembic names each of its plugins at INFO when it is first imported, which may be after
    # this (fdpush imports the storage layer when a command needs it): noise, not news.
    logging.getLogger("alembic.runtime.plugins").setLevel(max(root.level, logging.WARNING))
    # aiosqlite's debug lines carry every SQL statement's parameters (user ids, pushkeys).
    logging.getLogger("aiosqlite").setLevel(max(root.level, logging.INFO))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
