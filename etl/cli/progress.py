"""Backfill progress where nobody watches a terminal (cron, nohup, a container): a plain log
line at a steady interval, instead of a progress bar that is not drawn and silence until the
summary."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

log = logging.getLogger("etl.backfill")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainProgress:
    """Counts what the drain reports and logs ``backfill progress: done/total ...`` every
    ``interval`` seconds while :meth:`running`, and once more at the end."""

    def __init__(self, total: int, interval: float) -> None:
        self.total = total
        self.interval = interval
        self.done = 0
        self.errors = 0
        self._started = time.monotonic()

    def update(self, done: int, errors: int) -> None:
        self.done, self.errors = done, errors

    def line(self) -> str:
        elapsed = time.monotonic() - self._started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = 100.0 * self.done / self.total if self.total else 100.0
        eta = ""
        if rate > 0 and self.done < self.total:
            eta = f", about {_duration((self.total - self.done) / rate)} left"
        return (
            f"backfill progress: {self.done}/{self.total} ids ({share:.0f}%), {rate:.1f} ids/s, "
            f"errors {self.errors}, elapsed {_duration(elapsed)}{eta}"
        )

    def _log(self) -> None:
        log.info(
            self.line(),
            extra={"done": self.done, "total": self.total, "errors": self.errors},
        )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self._log()

    @contextlib.asynccontextmanager
    async def running(self, active: bool = True) -> AsyncIterator[PlainProgress]:
        """Log at the interval for the duration of the block (nothing when not ``active``)."""
        if not active:
            yield self
            return
        self._started = time.monotonic()
        ticker = asyncio.create_task(self._tick())
        try:
            yield self
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._log()
