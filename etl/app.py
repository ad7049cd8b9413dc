"""The composition root: settings → engine, client, syncer. Entry points only call these."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sqlalchemy.engine import Engine

from etl import errors, logs
from etl.db import engine as db_engine
from etl.db import migrate, queue, retention, runs
from etl.handoff import Hand
from etl.normalize.pool import shared_normalizer
from etl.pipeline import DrainResult, Progress, Syncer
from etl.settings import Settings
from etl.top.client import TopClient
from etl.top.quota import SharedQuota
from etl.top.ratelimit import FlowControl

log = logging.getLogger(__name__)
T = TypeVar("T")


@contextlib.contextmanager
def database(settings: Settings, *, auto_migrate: bool = False) -> Iterator[Engine]:
    """An engine on the configured (or embedded) database, at the newest schema."""
    url = db_engine.database_url(settings)
    if auto_migrate:
        migrate.upgrade(url)
    else:
        current, head = migrate.current_revision(url), migrate.head_revision(url)
        if current != head:
            raise errors.ConfigError(
                f"the database schema is at {current or 'nothing'}, not {head}: run `etl migrate`"
            )
    engine = db_engine.create_engine(settings, url)
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.asynccontextmanager
async def top_client(settings: Settings, engine: Engine, role: str) -> AsyncIterator[TopClient]:
    """A TopClient whose pace is this process's share of the app key's quota, held as a lease in
    the database (``etl.top.quota``) for as long as the block runs."""
    from etl.db.quota import PostgresLeaseStore

    shared_quota = SharedQuota(
        PostgresLeaseStore(engine),
        settings.top_app_key,
        settings.top_qps,
        role=role,
        daily_budget=settings.top_daily_budget,
        headroom=settings.top_quota_headroom,
    )
    await shared_quota.start()
    try:
        flow = FlowControl(settings.top_qps, settings.concurrency, pacing=shared_quota)
        async with TopClient(settings, flow=flow) as client:
            yield client
    finally:
        await shared_quota.close()


@dataclass
class RunOutcome:
    run_id: int
    result: DrainResult
    status: str


@dataclass
class Stopping:
    """A graceful stop (``stop``: take no new batch, let the ones in flight finish) that turns
    hard (``abort``: release the leases at once) after ``grace`` seconds or a second signal."""

    grace: float
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    abort: asyncio.Event = field(default_factory=asyncio.Event)

    def request(self, why: str) -> None:
        if self.stop.is_set():
            if not self.abort.is_set():
                log.warning("%s again: releasing the ids in flight and stopping now", why)
            self.abort.set()
            return
        log.warning("%s: stopping; the work in flight may finish (at most %.0fs)", why, self.grace)
        self.stop.set()
        asyncio.get_running_loop().call_later(self.grace, self._grace_over)

    def _grace_over(self) -> None:
        if not self.abort.is_set():
            log.warning("grace period of %.0fs over: releasing the ids in flight", self.grace)
        self.abort.set()


def stop_on_signals(stopping: Stopping | asyncio.Event, grace: float = 30.0) -> Stopping:
    """SIGINT / SIGTERM: the first stops gracefully, the second (or the grace period) aborts."""
    if isinstance(stopping, asyncio.Event):
        stopping = Stopping(grace, stop=stopping)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stopping.request, sig.name + " received")
    return stopping


async def until_done_or_aborted(work: Awaitable[T], abort: asyncio.Event) -> tuple[bool, T | None]:
    """Await ``work`` unless ``abort`` is set first (then cancel it): (finished, result)."""
    task = asyncio.ensure_future(work)
    aborted = asyncio.ensure_future(abort.wait())
    try:
        await asyncio.wait({task, aborted}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        aborted.cancel()
    if task.done():
        return True, task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False, None


def release_leases(engine: Engine, worker: str) -> int:
    """A hard stop: every id this process still holds goes back (no attempt charged)."""
    try:
        with engine.begin() as conn:
            n = queue.release_worker(conn, worker)
    except Exception as exc:  # the database may be the reason we are stuck
        log.error("cannot release the leases (they expire by themselves): %s", exc)
        return 0
    if n:
        log.warning("released %d ids still in flight (no attempt charged)", n)
    return n


async def heartbeat(engine: Engine, run_id: int, every: float = runs.HEARTBEAT_SECONDS) -> None:
    """Touch the run's row while it lives (a killed run goes silent and shows as such)."""

    def beat() -> None:
        with engine.begin() as conn:
            runs.heartbeat(conn, run_id)

    while True:
        await asyncio.sleep(every)
        try:
            await asyncio.to_thread(beat)
        except Exception as exc:
            logs.DB_OUTAGE.failed(exc)


async def wait_for_database(
    settings: Settings, stop: asyncio.Event, *, cap: float = 30.0
) -> Engine | None:
    """``database(settings)`` once the server answers: retried with a backoff capped at ``cap``
    seconds (logged once per outage); None if ``stop`` is set first. Schema and configuration
    errors are raised at once."""
    delay = 1.0
    while not stop.is_set():
        try:
            engine = await asyncio.to_thread(_open, settings)
        except errors.DatabaseError as exc:
            logs.DB_OUTAGE.failed(exc)
        else:
            logs.DB_OUTAGE.ok()
            return engine
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)
        delay = min(cap, delay * 2)
    return None


def _open(settings: Settings) -> Engine:
    try:
        with database(settings):
            pass
    except errors.ConfigError:
        raise
    except Exception as exc:
        translated = db_engine.translate(exc)
        if translated is None:
            raise
        raise translated from exc
    return db_engine.create_engine(settings, db_engine.database_url(settings))


@contextlib.asynccontextmanager
async def run_record(engine: Engine, kind: str) -> AsyncIterator[int]:
    """A sync_runs row for the duration of the block (its status is set by ``finish_run``)."""
    with engine.begin() as conn:
        run_id = runs.start(conn, kind)
    yield run_id


def finish_run(engine: Engine, run_id: int, result: DrainResult, interrupted: bool) -> str:
    if result.fatal or result.credentials:
        status = "failed"
    elif interrupted:
        status = "interrupted"
    elif result.counters.failed:
        status = "failed"
    else:
        status = "ok"
    error = result.fatal or (result.credentials.hint() if result.credentials else None)
    with engine.begin() as conn:
        runs.finish(conn, run_id, result.counters, status, error)
    return status


async def drain_once(
    settings: Settings,
    engine: Engine,
    kind: str,
    *,
    stop: asyncio.Event | Stopping | None = None,
    progress: Progress | None = None,
    wait_for_retries: float = 0.0,
    client: TopClient | None = None,
    backfill: int | None = None,
    feeding: asyncio.Future[Any] | None = None,
    hand: Hand | None = None,
) -> RunOutcome:
    """One run of ``kind`` that drains the queue and records itself in sync_runs (while
    ``feeding`` is not done, more ids are still being queued: see :meth:`Syncer.drain`; ``hand``:
    the new ids a lone backfill hands to this drain without queueing them, see
    :mod:`etl.handoff`).

    A graceful stop lets the batches in flight finish; an abort (second signal, grace period
    over) cancels them and releases their ids untouched.
    """
    if not isinstance(stop, Stopping):
        stop = Stopping(settings.shutdown_grace_seconds, stop=stop or asyncio.Event())
    shared_normalizer(settings.normalize_processes).warm()  # ready by the first answers
    async with run_record(engine, kind) as run_id:
        beat = asyncio.create_task(heartbeat(engine, run_id))
        try:
            async with contextlib.AsyncExitStack() as stack:
                top = client
                if top is None:
                    top = await stack.enter_async_context(top_client(settings, engine, kind))
                syncer = Syncer(
                    settings, engine, top, run_id, progress=progress, backfill=backfill, hand=hand
                )
                finished, result = await until_done_or_aborted(
                    syncer.drain(stop.stop, wait_for_retries=wait_for_retries, feeding=feeding),
                    stop.abort,
                )
                if not finished or result is None:
                    await asyncio.to_thread(release_leases, engine, syncer.worker)
                    result = DrainResult(syncer.counters, syncer.banned_until, syncer.fatal)
        except BaseException as exc:
            with engine.begin() as conn:  # the counters committed with each batch stay as they are
                runs.set_status(conn, run_id, "failed", f"crashed: {exc!r}"[:500])
            raise
        finally:
            beat.cancel()
        syncer.quality.report()
        status = finish_run(engine, run_id, result, stop.stop.is_set())
    return RunOutcome(run_id, result, status)


def keep_periods(settings: Settings) -> retention.Keep:
    """The retention settings as the pruner takes them."""
    return retention.Keep(
        queue_days=settings.keep_queue_days,
        archive_days=settings.keep_archive_days,
        runs_days=settings.keep_runs_days,
    )
