"""The live part of ``etl demo``: the simulator publishes order changes for a while; a consumer
pulls them and the syncer fetches what they name, as ``etl worker`` with ``tmc_enabled`` does."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING

import click
import sqlalchemy as sa

from etl import app, reports
from etl.db import runs
from etl.pipeline import Syncer
from etl.settings import Settings
from etl.tmc.consumer import TmcConsumer

if TYPE_CHECKING:
    from etl.simulator.server import Simulator

CHANGES_PER_SECOND = 10.0
SETTLE_SECONDS = 5.0  # after the stream stops, time for the last messages to be pulled


async def run(settings: Settings, engine: sa.Engine, sim: Simulator, seconds: float) -> None:
    """Stream for ``seconds``, pulling and syncing live; print a line a second, then freshness."""
    s = settings.model_copy(update={"tmc_idle_seconds": 0.2})
    sim.config.tmc.rate = CHANGES_PER_SECOND
    click.echo(
        f"\nlive: the simulator now publishes {CHANGES_PER_SECOND:g} order changes/s on the "
        f"message service for {seconds:g}s (new orders arrive, PAID → PACKAGED → SUCCESS, "
        "some refunded); etl pulls, queues and fetches them"
    )
    sim.start_stream(seconds)
    stop = asyncio.Event()
    app.stop_on_signals(stop)
    async with (
        app.run_record(engine, "demo") as run_id,
        app.top_client(s, engine, "demo") as client,
    ):
        syncer = Syncer(s, engine, client, run_id)
        wake = asyncio.Event()
        consumer = TmcConsumer(s, engine, client, on_queued=wake.set)
        pulling = asyncio.create_task(consumer.run(stop))
        started = time.monotonic()
        next_line = started + 1
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if elapsed > seconds + SETTLE_SECONDS or (
                elapsed > seconds and not sim.tmc.streaming() and sim.tmc.unconfirmed() == 0
            ):
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=0.5)
            wake.clear()
            await syncer.drain(stop)
            if time.monotonic() >= next_line:
                next_line += 1
                _line(elapsed, consumer, syncer)
        stop.set()
        await pulling
        syncer.counters.details.update(consumer.stats.details())
        with engine.begin() as conn:
            runs.finish(conn, run_id, syncer.counters, "ok")
            click.echo(f"\n{reports.render(conn, 'tmc-freshness')}")
    click.echo("(etl worker with tmc_enabled does this continuously; README: The message service)")


def _line(elapsed: float, consumer: TmcConsumer, syncer: Syncer) -> None:
    st, c = consumer.stats, syncer.counters
    click.echo(
        f"  +{elapsed:4.1f}s  messages {st.messages:4d} (other topics "
        f"{sum(st.unhandled.values())}, unreadable {st.unreadable})  orders new "
        f"{c.orders_inserted:3d}, updated {c.orders_updated:3d}, unchanged {c.orders_unchanged}"
    )
