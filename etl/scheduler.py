"""`etl worker`: APScheduler 3 wiring only (AsyncIOScheduler, memory job store, coalesce,
max_instances=1). The database, not the scheduler, makes sure work happens once: queue batches are
claimed with SKIP LOCKED, and the singleton jobs (refresh of open orders, lease reclaim) run under
a Postgres advisory lock so N workers never run them twice at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.engine import Engine

from etl import errors, metrics
from etl.db import queue, runs
from etl.pipeline import Syncer
from etl.settings import Settings
from etl.top.client import TopClient

if TYPE_CHECKING:
    from etl.tmc.consumer import TmcConsumer

log = logging.getLogger(__name__)

LOCK_REFRESH = 7301002  # advisory lock keys of the singleton jobs
LOCK_RECLAIM = 7301003
RECLAIM_SECONDS = 60.0
GAUGE_SECONDS = 15.0


def with_advisory_lock(engine: Engine, key: int, fn: Callable[[sa.Connection], int]) -> int | None:
    """Run ``fn`` in a transaction holding advisory lock ``key``; None if another worker has it."""
    with engine.begin() as conn:
        got = conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar()
        if not got:
            return None
        return fn(conn)


class Worker:
    """The long-running job: drain every poll_seconds; refresh, reclaim and gauges periodically."""

    def __init__(self, settings: Settings, engine: Engine, client: TopClient, run_id: int) -> None:
        self.settings = settings
        self.engine = engine
        self.syncer = Syncer(settings, engine, client, run_id)
        self.run_id = run_id
        self.stop = asyncio.Event()
        self._busy = asyncio.Lock()
        self.fatal: str | None = None
        self._drain_pending = False  # --- TMC (issue 11)
        self._background: set[asyncio.Task[None]] = set()
        self.tmc: TmcConsumer | None = None

    async def drain(self) -> None:
        if self.stop.is_set():
            return
        async with self._busy:
            self.syncer.banned_until = None
            try:
                result = await self.syncer.drain(self.stop)
            except Exception:
                log.exception("drain failed; will try again at the next tick")
                return
            if result.fatal:
                self.fatal = result.fatal
                self.stop.set()
            await self._to_thread(self._save_counters)

    def _save_counters(self) -> None:
        with self.engine.begin() as conn:
            runs.update(conn, self.run_id, self.syncer.counters)

    async def refresh(self) -> None:
        s = self.settings

        def job(conn: sa.Connection) -> int:
            return queue.refresh_open(conn, s.refresh_after_seconds, s.final_status_list())

        n = await self._to_thread(with_advisory_lock, self.engine, LOCK_REFRESH, job)
        if n:
            log.info("re-enqueued %d open orders for a refresh", n)

    async def reclaim(self) -> None:
        n = await self._to_thread(
            with_advisory_lock, self.engine, LOCK_RECLAIM, queue.reclaim_expired
        )
        if n:
            log.warning("reclaimed %d ids whose worker's lease expired", n)

    async def gauges(self) -> None:
        def job() -> list[dict[str, Any]]:
            with self.engine.begin() as conn:
                return queue.depth(conn)

        rows = await self._to_thread(job)
        metrics.QUEUE_DEPTH.clear()
        for row in rows:
            metrics.QUEUE_DEPTH.labels(row["api"], row["state"]).set(row["n"])

    async def _to_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            log.error("database unavailable: %s", str(exc).splitlines()[0])
            return None

    def _guard(self, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def guarded() -> None:
            try:
                await job()
            except errors.EtlError as exc:
                log.error("%s failed: %s", job.__name__, exc)
            except Exception:
                log.exception("%s failed", job.__name__)

        guarded.__name__ = job.__name__
        return guarded

    async def run(self) -> None:
        """Run until ``stop`` is set; then let the batches in flight finish."""
        s = self.settings
        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        )
        now = datetime.now(UTC)
        jobs = [
            (self.drain, s.poll_seconds),
            (self.refresh, s.refresh_interval_seconds),
            (self.reclaim, RECLAIM_SECONDS),
            (self.gauges, GAUGE_SECONDS),
        ]
        for fn, seconds in jobs:
            scheduler.add_job(
                self._guard(fn), "interval", seconds=seconds, next_run_time=now, name=fn.__name__
            )
        scheduler.start()
        log.info("worker started", extra={"run_id": self.run_id, "poll_seconds": s.poll_seconds})
        tmc_task = self._start_tmc()  # --- TMC (issue 11)
        try:
            await self.stop.wait()
        finally:
            scheduler.shutdown(wait=False)
            await self._stop_tmc(tmc_task)  # --- TMC (issue 11)
            async with self._busy:  # the drain in flight finishes its batches
                pass
            await self._to_thread(self._save_counters)

    # --- TMC (issue 11): the message service consumer, a task of its own next to the scheduler.
    # Ids it queues trigger a drain at once (not at the next poll tick).

    def _start_tmc(self) -> asyncio.Task[None] | None:
        if not self.settings.tmc_enabled:
            return None
        from etl.tmc.consumer import TmcConsumer

        def queued() -> None:
            if not self.stop.is_set():
                self._drain_soon()

        self.tmc = TmcConsumer(self.settings, self.engine, self.syncer.client, on_queued=queued)
        log.info("pulling TMC group %s", self.settings.tmc_group_name)
        return asyncio.create_task(self._run_tmc(self.tmc), name="tmc")

    async def _run_tmc(self, consumer: TmcConsumer) -> None:
        await consumer.run(self.stop)
        if consumer.fatal:
            self.fatal = consumer.fatal
            self.stop.set()

    def _drain_soon(self) -> None:
        """A drain now; if one is running, one more right after it (the new ids may have
        missed its last claim)."""
        if self._drain_pending:
            return
        self._drain_pending = True

        async def go() -> None:
            try:
                await self._guard(self.drain)()
            finally:
                self._drain_pending = False

        task = asyncio.create_task(go())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _stop_tmc(self, task: asyncio.Task[None] | None) -> None:
        if task is None:
            return
        await task  # returns once stop is set (its pull in flight commits and confirms first)
        await asyncio.gather(*self._background, return_exceptions=True)
        if self.tmc is not None:
            self.syncer.counters.details.update(self.tmc.stats.details())
