"""`etl demo`: the whole product on one machine, with nothing configured.

The embedded Postgres (or ETL_DATABASE_URL), an in-process TOP simulator speaking the real
protocol, migrations, 1,000 wdk ids and 50 omni orders enqueued, a sync with progress, a report.
"""

from __future__ import annotations

import sys
import time
from datetime import timedelta
from typing import Any

import click
import sqlalchemy as sa

from etl import app, reports
from etl.db import queue
from etl.ids import omni_parts
from etl.settings import Settings
from etl.simulator import data
from etl.simulator.server import FAULT_KINDS, Simulator, SimulatorConfig
from etl.simulator.tmc import TmcConfig
from etl.tmc import live

DEMO_GUIDE = "3031798632"
DEMO_REPORT_DAYS = 3
LIVE_NEW_ORDERS = 200  # orders that first appear through the message service


def demo_keys(n_wdk: int, n_omni: int) -> tuple[list[str], list[str]]:
    wdk = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(n_wdk)]
    omni = [f"{DEMO_GUIDE},{data.omni_order_id(i)},OUT{i:05d}" for i in range(n_omni)]
    return wdk, omni


async def run(
    settings: Settings, n_wdk: int, n_omni: int, fault_rate: float, live_seconds: float = 0.0
) -> None:
    transient = [k for k in FAULT_KINDS if k != "slow"]
    sim = Simulator(
        SimulatorConfig(
            app_key=settings.top_app_key,
            app_secret=settings.top_app_secret.get_secret_value(),
            session=settings.top_session.get_secret_value(),
            qps=settings.top_qps * 2,
            latency_ms=30,
            jitter_ms=30,
            faults={k: fault_rate / len(transient) for k in transient},
            # the live part: the demo's orders and LIVE_NEW_ORDERS more change and arrive
            tmc=TmcConfig(orders=n_wdk + LIVE_NEW_ORDERS, redelivery_seconds=5.0),
        )
    )
    url = await sim.start()
    s = settings.model_copy(update={"top_url": url})
    where = s.database_url_redacted() or f"embedded PostgreSQL in {s.data_dir / 'pg'}"
    click.echo(f"database: {where}")
    click.echo(f"TOP simulator: {url} (faults {fault_rate:.0%}, QPS cap {sim.config.qps:g})")
    try:
        with app.database(s, auto_migrate=True) as engine:
            wdk, omni = demo_keys(n_wdk, n_omni)
            with engine.begin() as conn:
                queue.enqueue(conn, "wdk", "biz", wdk, refresh=True)
                queue.enqueue(conn, "omni", "omni", omni, refresh=True)
            click.echo(f"enqueued {len(wdk)} wdk ids and {len(omni)} omni orders; syncing...")
            outcome = await _sync(s, engine, len(wdk) + len(omni))
            _report(engine, outcome, sim)
            if live_seconds > 0:
                await live.run(s, engine, sim, live_seconds)
            _html_report(engine, s)
    finally:
        await sim.stop()


async def _sync(settings: Settings, engine: sa.Engine, total: int) -> app.RunOutcome:

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    stop = app.stop_on_signals(app.Stopping(settings.shutdown_grace_seconds))
    started = time.monotonic()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not sys.stderr.isatty(),
    ) as bar:
        task = bar.add_task("sync", total=total)

        def progress(settled: int, failed: int) -> None:
            bar.advance(task, settled)

        outcome = await app.drain_once(
            settings, engine, "demo", stop=stop, progress=progress, wait_for_retries=30
        )
    click.echo(f"synced in {time.monotonic() - started:.1f}s")
    return outcome


def _html_report(engine: sa.Engine, settings: Settings) -> None:
    """Every report on one self-contained page, written where the demo keeps its data."""
    from etl import report_html

    path = settings.data_dir / "report.html"
    with engine.begin() as conn:
        page = report_html.render(conn, list(reports.REPORTS))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    size = len(page.encode()) // 1024 + 1
    click.echo(f"\nthe full report ({size} KB, opens offline): {path}")


def _rows(engine: sa.Engine, query: str) -> list[Any]:
    with engine.begin() as conn:
        return list(conn.execute(sa.text(query)).all())


def _report(engine: sa.Engine, outcome: app.RunOutcome, sim: Simulator) -> None:
    c = outcome.result.counters
    click.echo(
        f"\nrun {outcome.run_id} {outcome.status}: {c.api_calls} calls ({c.retries} retries; the "
        f"simulator injected {sum(sim.counters.faults.values())} faults; {c.bans} bans), "
        f"{c.orders_inserted} orders new, {c.orders_updated} changed, "
        f"{c.orders_unchanged} unchanged, {c.not_found} not found, {c.failed} failed"
    )
    counts = _rows(
        engine,
        "SELECT 'wdk_orders', count(*) FROM wdk_orders UNION ALL "
        "SELECT 'wdk_pay_channels', count(*) FROM wdk_pay_channels UNION ALL "
        "SELECT 'wdk_sub_orders', count(*) FROM wdk_sub_orders UNION ALL "
        "SELECT 'omni_orders', count(*) FROM omni_orders UNION ALL "
        "SELECT 'omni_subpay_orders', count(*) FROM omni_subpay_orders UNION ALL "
        "SELECT 'omni_pay_serials', count(*) FROM omni_pay_serials UNION ALL "
        "SELECT 'order_archive', count(*) FROM order_archive",
    )
    click.echo("\nrows: " + ", ".join(f"{t} {n}" for t, n in counts))
    states = _rows(
        engine, "SELECT api, state, count(*) FROM sync_queue GROUP BY 1, 2 ORDER BY 1, 2"
    )
    click.echo("queue: " + ", ".join(f"{a}/{s} {n}" for a, s, n in states))
    with engine.begin() as conn:
        last_day = conn.execute(sa.text("SELECT max(day) FROM report_daily_sales")).scalar()
        since = last_day - timedelta(days=DEMO_REPORT_DAYS - 1) if last_day else None
        click.echo(f"\n{reports.render(conn, 'daily-sales', since=since)}")
        click.echo(f"(the last {DEMO_REPORT_DAYS} days with sales; all: etl report daily-sales)")
        click.echo(f"\n{reports.render(conn, 'sync-freshness')}")
    click.echo("\nnext: `etl status`, `etl report --list`, or query the tables (README: The data)")


__all__ = ["demo_keys", "omni_parts", "run"]
