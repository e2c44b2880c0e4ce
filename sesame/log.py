"""Structured logging: ``ts level logger event key=value ...`` with bound ids."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "sesame_log_context", default=None
)


def _quote(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n\r\t'):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        text = text.replace("\n", "\\n").replace("\r", "\\r")
    return text


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = dict(_context.get() or {})
        fields.update(getattr(record, "fields", {}))
        parts = [f"{ts}.{int(record.msecs):03d}Z", record.levelname, record.name]
        parts.append(record.getMessage())
        parts.extend(f"{k}={_quote(v)}" for k, v in fields.items() if v is not None)
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiosmtpd", "mail.log", "rq.worker", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def event(
    logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any
) -> None:
    """Log one event with key=value fields (never pass secrets or bodies)."""
    if logger.isEnabledFor(level):
        logger.log(level, name, extra={"fields": fields})


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """Add fields to every log line written inside the block."""
    token = _context.set({**(_context.get() or {}), **fields})
    try:
        yield
    finally:
        _context.reset(token)
