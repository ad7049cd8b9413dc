"""The TMC consumer: consume → sort out → queue (one transaction) → confirm, in a loop.

Messages are confirmed only after the transaction that queued what they name has committed, so a
process killed anywhere loses nothing: unconfirmed messages are delivered again and queueing is
idempotent. Every call goes through the shared :class:`TopClient` (signing, quota, ban gate).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl import errors, metrics
from etl.db import bans
from etl.db import tmc as tmc_db
from etl.settings import Settings
from etl.tmc import messages
from etl.top import apis
from etl.top.client import TopClient

log = logging.getLogger(__name__)

ERROR_PAUSE_MAX = 60.0  # longest wait after failing calls, seconds
PRUNE_EVERY = 3600.0  # seconds between prunes of old latency rows
RECORD_ATTEMPTS = 5  # tries of a batch's queueing transaction that met a deadlock


@dataclass
class TmcStats:
    """What the consumer did (kept in the run's ``details`` as ``tmc_*``)."""

    consume_calls: int = 0
    messages: int = 0
    queued: int = 0  # queue rows added or re-armed
    skipped_stale: int = 0  # orders the stored payload already answered: no fetch
    unreadable: int = 0
    confirmed: int = 0
    unhandled: Counter[str] = field(default_factory=Counter)

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "tmc_consume_calls": self.consume_calls,
            "tmc_messages": self.messages,
            "tmc_queued": self.queued,
            "tmc_skipped_stale": self.skipped_stale,
            "tmc_unreadable": self.unreadable,
            "tmc_confirmed": self.confirmed,
        }
        if self.unhandled:
            out["tmc_unhandled"] = dict(self.unhandled)
        return out


class TmcConsumer:
    """Pulls the configured group. ``await drain(stop)`` until it is empty (``etl tmc pull``);
    ``await run(stop)`` forever, pausing ``tmc_idle_seconds`` after an empty pull (the worker).

    ``on_queued`` is called after each commit that queued ids (the worker drains at once).
    """

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        client: TopClient,
        *,
        on_queued: Callable[[], None] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.client = client
        self.on_queued = on_queued
        self.stats = TmcStats()
        self.fatal: str | None = None
        self._last_prune = 0.0

    # ------------------------------------------------------------------------------- loops

    async def drain(self, stop: asyncio.Event) -> TmcStats:
        """Pull until a consume call returns nothing or ``stop``. Raises RateLimited (long ban),
        CredentialsRejected and the errors retrying did not cure."""
        while not stop.is_set():
            try:
                if await self.pull_once() == 0:
                    break
            except errors.RateLimited as exc:
                await self._record_ban(exc)
                raise
        return self.stats

    async def run(self, stop: asyncio.Event) -> None:
        """Pull until ``stop``; errors are logged and waited out, except credentials (fatal)."""
        failures = 0
        while not stop.is_set():
            pause = self.settings.tmc_idle_seconds
            try:
                if await self.pull_once() > 0:
                    failures = 0
                    continue
                failures = 0
                await self._prune()
            except errors.RateLimited as exc:
                await self._record_ban(exc)
                pause = exc.retry_after
                log.warning("TMC: app key banned; pulling again in %.0fs", pause)
            except (errors.CredentialsRejected, errors.ClockSkew) as exc:
                self.fatal = f"{exc.__class__.__name__}: {exc}"
                log.error("TMC: stopping: %s", exc)
                return
            except (errors.EtlError, sa.exc.SQLAlchemyError, psycopg.Error) as exc:
                failures += 1
                pause = min(ERROR_PAUSE_MAX, self.settings.tmc_idle_seconds * 2**failures)
                log.error("TMC pull failed (messages stay unconfirmed): %s", exc)
            except Exception:
                failures += 1
                pause = min(ERROR_PAUSE_MAX, self.settings.tmc_idle_seconds * 2**failures)
                log.exception("TMC pull failed (messages stay unconfirmed)")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=pause)

    # ----------------------------------------------------------------------------- one pull

    async def pull_once(self) -> int:
        """One consume call, its ids queued and committed, then its messages confirmed.
        Returns how many messages the call returned."""
        s = self.settings
        raws = await apis.tmc_consume(self.client, s.tmc_group_name, s.tmc_quantity)
        self.stats.consume_calls += 1
        if not raws:
            return 0
        batch = messages.sort_out(raws)
        recorded = await asyncio.to_thread(self._record, batch)
        self._count(batch, recorded)
        if recorded.queued and self.on_queued is not None:
            self.on_queued()
        if batch.confirm:
            await apis.tmc_confirm(self.client, s.tmc_group_name, batch.confirm)
            self.stats.confirmed += len(batch.confirm)
        return len(raws)

    def _record(self, batch: messages.Batch) -> tmc_db.Recorded:
        for attempt in range(1, RECORD_ATTEMPTS + 1):
            try:
                with self.engine.begin() as conn:
                    return tmc_db.record(conn, batch, self.settings.tmc_fetch_slack_seconds)
            except sa.exc.OperationalError as exc:
                transient = isinstance(
                    exc.orig, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure
                )
                if not transient or attempt == RECORD_ATTEMPTS:
                    raise
                log.info(
                    "TMC: queueing met a concurrent load (%s); again", exc.orig.__class__.__name__
                )
        raise AssertionError("unreachable")

    def _count(self, batch: messages.Batch, recorded: tmc_db.Recorded) -> None:
        st = self.stats
        st.messages += batch.messages
        st.queued += recorded.queued
        st.skipped_stale += recorded.skipped_stale
        st.unreadable += len(batch.unreadable)
        st.unhandled.update(batch.unhandled)
        for topic, n in batch.handled.items():
            metrics.TMC_MESSAGES.labels(topic, "queued").inc(n)
        for topic, n in batch.unhandled.items():
            metrics.TMC_MESSAGES.labels(topic, "unhandled").inc(n)
        for u in batch.unreadable:
            metrics.TMC_MESSAGES.labels(u.topic or "", "unreadable").inc()
        if batch.unreadable:
            # the first one is worth a warning; after that, `etl status` counts them
            first = st.unreadable == len(batch.unreadable)
            (log.warning if first else log.info)(
                "TMC: %d unreadable message(s) kept in tmc_unreadable and confirmed: %s",
                len(batch.unreadable),
                batch.unreadable[0].reason,
            )

    async def _record_ban(self, exc: errors.RateLimited) -> None:
        until = datetime.now(UTC) + timedelta(seconds=exc.retry_after)

        def work() -> None:
            with self.engine.begin() as conn:
                bans.record(conn, self.settings.top_app_key, until, exc.sub_code, str(exc))

        try:
            await asyncio.to_thread(work)
        except (sa.exc.SQLAlchemyError, psycopg.Error) as db_exc:
            log.error("cannot record the ban: %s", db_exc)

    async def _prune(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._last_prune < PRUNE_EVERY:
            return
        self._last_prune = loop.time()

        def work() -> None:
            with self.engine.begin() as conn:
                tmc_db.prune_latency(conn)
                tmc_db.forget_final(conn)

        await asyncio.to_thread(work)
