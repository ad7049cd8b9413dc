"""The composition root: settings → engine, client, syncer. Entry points only call these."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from etl import errors
from etl.db import engine as db_engine
from etl.db import migrate, runs
from etl.pipeline import DrainResult, Progress, Syncer
from etl.settings import Settings
from etl.top.client import TopClient
from etl.top.quota import SharedQuota
from etl.top.ratelimit import FlowControl

log = logging.getLogger(__name__)


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


def stop_on_signals(stop: asyncio.Event) -> None:
    """SIGINT / SIGTERM set ``stop``: batches in flight finish, nothing new is claimed."""
    loop = asyncio.get_running_loop()

    def handler(signame: str) -> None:
        if not stop.is_set():
            log.warning("%s received: finishing the batches in flight, then stopping", signame)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler, sig.name)


@contextlib.asynccontextmanager
async def run_record(engine: Engine, kind: str) -> AsyncIterator[int]:
    """A sync_runs row for the duration of the block (its status is set by ``finish_run``)."""
    with engine.begin() as conn:
        run_id = runs.start(conn, kind)
    yield run_id


def finish_run(engine: Engine, run_id: int, result: DrainResult, interrupted: bool) -> str:
    if result.fatal:
        status = "failed"
    elif interrupted:
        status = "interrupted"
    elif result.counters.failed:
        status = "failed"
    else:
        status = "ok"
    with engine.begin() as conn:
        runs.finish(conn, run_id, result.counters, status, result.fatal)
    return status


async def drain_once(
    settings: Settings,
    engine: Engine,
    kind: str,
    *,
    stop: asyncio.Event | None = None,
    progress: Progress | None = None,
    wait_for_retries: float = 0.0,
    client: TopClient | None = None,
) -> RunOutcome:
    """One run of ``kind`` that drains the queue and records itself in sync_runs."""
    stop = stop or asyncio.Event()
    async with run_record(engine, kind) as run_id:
        try:
            async with contextlib.AsyncExitStack() as stack:
                top = client
                if top is None:
                    top = await stack.enter_async_context(top_client(settings, engine, kind))
                syncer = Syncer(settings, engine, top, run_id, progress=progress)
                result = await syncer.drain(stop, wait_for_retries=wait_for_retries)
        except BaseException:
            with engine.begin() as conn:
                runs.finish(conn, run_id, runs.RunCounters(), "failed", "crashed")
            raise
        syncer.quality.report()
        status = finish_run(engine, run_id, result, stop.is_set())
    return RunOutcome(run_id, result, status)
