"""`etl worker`: APScheduler 3 as a trigger only (AsyncIOScheduler, memory job store, coalesce,
max_instances=1). The database, not the scheduler, makes sure work happens once: queue batches are
claimed with SKIP LOCKED, and the singleton jobs (refresh of open orders, lease reclaim) run under
a Postgres advisory lock so N workers never run them twice at once.

The drains run in one task of their own that the scheduler only wakes, so a stop never cancels a
batch in flight: on SIGTERM the drain finishes its batches, or after the grace period (or a second
signal) it is cancelled and its ids are released untouched. The periodic jobs running at a stop
are waited for the same way (APScheduler's shutdown alone would cancel them mid-statement).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from sqlalchemy.engine import Engine

from etl import app, errors, logs, metrics
from etl.app import Stopping, release_leases, until_done_or_aborted
from etl.db import holds, queue, retention, runs
from etl.pipeline import Syncer
from etl.settings import Settings
from etl.top import apis
from etl.top.client import TopClient

if TYPE_CHECKING:
    from etl.tmc.consumer import TmcConsumer

log = logging.getLogger(__name__)

LOCK_REFRESH = 7301002  # advisory lock keys of the singleton jobs
LOCK_RECLAIM = 7301003
RECLAIM_SECONDS = 60.0
GAUGE_SECONDS = 15.0
IDLE_LOG_SECONDS = 300.0  # an idle worker says so at most this often


def with_advisory_lock(engine: Engine, key: int, fn: Callable[[sa.Connection], int]) -> int | None:
    """Run ``fn`` in a transaction holding advisory lock ``key``; None if another worker has it."""
    with engine.begin() as conn:
        got = conn.execute(sa.text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": key}).scalar()
        if not got:
            return None
        return fn(conn)


def drain_line(delta: runs.RunCounters, seconds: float) -> str:
    """What one drain did, for a person reading the log (pure)."""
    settled = delta.orders_inserted + delta.orders_updated + delta.orders_unchanged
    return (
        f"drain: {settled + delta.orders_stale} ids done, {delta.not_found} not found, "
        f"{delta.failed} failed; orders {delta.orders_inserted} new, {delta.orders_updated} "
        f"changed, {delta.orders_unchanged} unchanged; {delta.api_calls} calls; {seconds:.1f}s"
    )


class Worker:
    """The long-running job: drain every poll_seconds; refresh, reclaim and gauges periodically."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        client: TopClient,
        run_id: int,
        stopping: Stopping | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.client = client
        self.syncer = Syncer(settings, engine, client, run_id)
        self.run_id = run_id
        self.stopping = stopping or Stopping(settings.shutdown_grace_seconds)
        self.stop = self.stopping.stop
        self.wake = asyncio.Event()  # set by the poll job (or an id source): drain now
        self.fatal: str | None = None
        self._probe_now = True  # at start-up a standing hold is tried at once (config renewed?)
        self._last_work = time.monotonic()
        self._last_idle_log = time.monotonic()
        self.tmc: TmcConsumer | None = None  # --- TMC (issue 11)
        self.archive_mark = 0  # order_archive ids up to this one were looked at by a prune
        self._jobs: set[asyncio.Task[Any]] = set()  # the periodic jobs running now

    # ------------------------------------------------------------------------------ draining

    async def drain(self) -> None:
        if self.stop.is_set() or await self._held():
            return
        self.syncer.banned_until = None
        before = runs.RunCounters()
        before.add(self.syncer.counters)
        started = time.monotonic()
        result = await self.syncer.drain(self.stop)
        if result.fatal:
            self.fatal = result.fatal
            self.stop.set()
        if result.credentials is not None:
            log.error(
                "%s; calls paused, one try again in %.0fs",
                result.credentials.hint(),
                holds.FIRST_RETRY_SECONDS,
            )
        self._report(before, time.monotonic() - started)

    def _report(self, before: runs.RunCounters, seconds: float) -> None:
        now = self.syncer.counters.numbers()
        delta = runs.RunCounters(**{k: v - getattr(before, k) for k, v in now.items()})
        if delta.ids_claimed:
            self._last_work = self._last_idle_log = time.monotonic()
            log.info(drain_line(delta, seconds))
        elif time.monotonic() - self._last_idle_log >= IDLE_LOG_SECONDS:
            self._last_idle_log = time.monotonic()
            log.info("idle: nothing due for %.0fs", time.monotonic() - self._last_work)

    async def _drain_loop(self) -> None:
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=self.settings.poll_seconds)
            self.wake.clear()
            if self.stop.is_set():
                return
            try:
                await self.drain()
            except errors.EtlError as exc:
                log.error("drain failed: %s; will try again at the next tick", exc)
            except Exception:
                log.exception("drain failed; will try again at the next tick")

    # ---------------------------------------------------------------- rejected credentials

    async def _held(self) -> bool:
        """Whether a credentials hold stops this drain; tries one call when its time has come."""
        key = self.settings.top_app_key
        hold = await self._to_thread(self._in_tx, holds.get, key)
        if hold is None:
            self._probe_now = False
            return False
        force, self._probe_now = self._probe_now, False
        if not await self._to_thread(self._in_tx, holds.take_try, key, force):
            return True
        if await self._probe(hold):
            await self._to_thread(self._in_tx, holds.clear, key)
            log.warning("credentials accepted again (rejected since %s)", hold.since.isoformat())
            return False
        rejected = self.client.rejected
        cap = self.settings.credentials_retry_max_seconds
        delay = holds.retry_delay(hold.tries + 1, cap)
        await self._to_thread(
            self._in_tx,
            holds.record,
            key,
            rejected.error_class if rejected else hold.error_class,
            rejected.setting if rejected else hold.setting,
            str(rejected) if rejected else hold.message,
            delay,
        )
        next_try = datetime.now(UTC) + timedelta(seconds=delay)
        log.error(
            "credentials still rejected: check %s; next try at %s",
            rejected.setting if rejected else hold.setting,
            next_try.isoformat(timespec="seconds"),
        )
        return True

    async def _probe(self, hold: holds.Hold) -> bool:
        """One call with the current credentials: anything but a rejection means they work."""
        self.client.clear_rejection()
        try:
            if apis.OMNI_METHOD in (hold.message or ""):
                await apis.omni_order_query(self.client, "1", "1", "1")
            else:
                await apis.wdk_order_get(self.client, ["1"], "biz", batch_size=1)
        except errors.CredentialsRejected:
            return False
        except errors.TopError:
            pass  # the platform answered, or could not be reached: not a rejection
        return True

    # ---------------------------------------------------------------------- periodic jobs

    async def poll(self) -> None:
        self.wake.set()

    async def refresh(self) -> None:
        s = self.settings

        def job(conn: sa.Connection) -> int:
            return queue.refresh_open(conn, s.refresh_after_seconds, s.final_status_list())

        n = await self._to_thread(with_advisory_lock, self.engine, LOCK_REFRESH, job)
        if n:
            log.info("re-enqueued %d open orders for a refresh", n)
            self.wake.set()

    async def reclaim(self) -> None:
        n = await self._to_thread(
            with_advisory_lock, self.engine, LOCK_RECLAIM, queue.reclaim_expired
        )
        if n:
            log.warning("reclaimed %d ids whose worker's lease expired", n)

    async def prune(self) -> None:
        """Retention and order_archive's partitions ahead; one INFO line with the counts. A
        failure is logged by the job guard and tried again at the next interval."""
        keep = app.keep_periods(self.settings)
        report = await asyncio.to_thread(
            functools.partial(
                retention.prune,
                self.engine,
                keep,
                archive_mark=self.archive_mark,
                stop=self.stop.is_set,  # a stop does not wait for the rest of a long prune
            )
        )
        if not report.skipped:
            self.archive_mark = report.archive_mark
        log.info(report.line())

    async def gauges(self) -> None:
        rows = await self._to_thread(self._in_tx, queue.depth)
        if rows is None:  # the database is away: keep the last values
            return
        metrics.QUEUE_DEPTH.clear()
        for row in rows:
            metrics.QUEUE_DEPTH.labels(row["api"], row["state"]).set(row["n"])

    async def heartbeat(self) -> None:
        await self._to_thread(self._in_tx, runs.heartbeat, self.run_id)

    def _in_tx(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.engine.begin() as conn:
            return fn(conn, *args)

    async def _to_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run database work off the loop; None while the database is away (logged once)."""
        try:
            out = await asyncio.to_thread(fn, *args)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            logs.DB_OUTAGE.failed(str(exc.orig) if exc.orig is not None else exc)
            return None
        logs.DB_OUTAGE.ok()
        return out

    def _guard(self, job: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        async def guarded() -> None:
            task = asyncio.current_task()
            assert task is not None  # APScheduler runs a coroutine job as a task of its own
            self._jobs.add(task)
            try:
                await job()
            except errors.EtlError as exc:
                log.error("%s failed: %s", job.__name__, exc)
            except Exception:
                log.exception("%s failed", job.__name__)
            except asyncio.CancelledError:
                if not self.stop.is_set():
                    raise
                # a hard stop (grace period over, or a second signal): one line, no traceback
                log.warning("%s cut short by the stop", job.__name__)
            finally:
                self._jobs.discard(task)

        guarded.__name__ = job.__name__
        return guarded

    # ------------------------------------------------------------------------------- the run

    async def run(self) -> None:
        """Run until ``stop``; then let the batches in flight finish (or release them on abort)."""
        s = self.settings
        scheduler = AsyncIOScheduler(
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": 30}
        )
        now = datetime.now(UTC)
        jobs = [
            (self.poll, s.poll_seconds),
            (self.refresh, s.refresh_interval_seconds),
            (self.reclaim, RECLAIM_SECONDS),
            (self.gauges, GAUGE_SECONDS),
            (self.heartbeat, runs.HEARTBEAT_SECONDS),
        ]
        if s.prune_interval_seconds > 0:
            jobs.append((self.prune, s.prune_interval_seconds))
        for fn, seconds in jobs:
            scheduler.add_job(
                self._guard(fn), "interval", seconds=seconds, next_run_time=now, name=fn.__name__
            )
        drains = asyncio.create_task(self._drain_loop())
        scheduler.start()
        log.info("worker started", extra={"run_id": self.run_id, "poll_seconds": s.poll_seconds})
        tmc_task = self._start_tmc()  # --- TMC (issue 11)
        try:
            await self.stop.wait()
        finally:
            scheduler.pause()  # no new job; the drain task is not the scheduler's
            finished, _ = await until_done_or_aborted(
                asyncio.gather(drains, self._stop_tmc(tmc_task), self._jobs_done()),
                self.stopping.abort,
            )
            scheduler.shutdown(wait=False)  # cancels the jobs still running (a hard stop only)
            if not finished:
                await asyncio.to_thread(release_leases, self.engine, self.syncer.worker)
            await self._to_thread(self._save_counters)

    async def _jobs_done(self) -> None:
        """Wait for the periodic jobs running at the stop: each ends soon once ``stop`` is set (a
        prune between two batches), and its line is logged. APScheduler's own shutdown would
        cancel them mid-statement and log the cancellation as an error with a traceback."""
        while self._jobs:
            await asyncio.wait(set(self._jobs))

    def _save_counters(self) -> None:
        with self.engine.begin() as conn:
            runs.update(conn, self.run_id, self.syncer.counters)

    # --- TMC (issue 11): the message service consumer, a task of its own next to the scheduler.
    # Ids it queues wake the drain loop at once (not at the next poll tick).

    def _start_tmc(self) -> asyncio.Task[None] | None:
        if not self.settings.tmc_enabled:
            return None
        from etl.tmc.consumer import TmcConsumer

        self.tmc = TmcConsumer(
            self.settings, self.engine, self.syncer.client, on_queued=self.wake.set
        )
        log.info("pulling TMC group %s", self.settings.tmc_group_name)
        return asyncio.create_task(self._run_tmc(self.tmc), name="tmc")

    async def _run_tmc(self, consumer: TmcConsumer) -> None:
        await consumer.run(self.stop)
        if consumer.fatal:
            self.fatal = consumer.fatal
            self.stop.set()

    async def _stop_tmc(self, task: asyncio.Task[None] | None) -> None:
        if task is None:
            return
        await task  # returns once stop is set (its pull in flight commits and confirms first)
        if self.tmc is not None:
            self.syncer.counters.details.update(self.tmc.stats.details())
